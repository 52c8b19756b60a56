"""Root rollover (RFC 7030 section 4.1.3, RFC 4210 section 4.4): when to trust a new root.

A device pins one fleet root. When the fleet rolls its root over, the server
publishes the new root together with two *link certificates*:

* **OldWithNew**: the new root's subject and public key, signed by the old
  root's key. It is what lets a device that trusts the old root learn the
  new one.
* **NewWithOld**: the old root's subject and public key, signed by the new
  root's key, so that relying parties that already moved to the new root can
  still verify what the old root signed during the overlap.

The rule (:func:`follow_rollover`): a self-signed root offered by the server is
trusted only when a link certificate, itself valid now, a CA with keyCertSign
and directly signed by a root that is already trusted (and valid now), carries
exactly that root's subject and public key. The server's word alone (a new
self-signed certificate in /cacerts) is never enough. Applied repeatedly, so
that a device that slept through two rollovers follows old -> middle -> new as
long as every link on the way is still valid.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.kernel.certs import Problem, describe, is_ca, issued_by, validity_problem
from fleet.kernel.reasons import Reason


@dataclasses.dataclass(frozen=True, slots=True)
class RootRollover:
    """What the device makes of the roots a server offered."""

    trusted: tuple[x509.Certificate, ...]  # the roots it trusted before, then the new ones
    accepted: tuple[x509.Certificate, ...]  # newly certified roots, in the order they were
    refused: tuple[Problem, ...]  # self-signed roots offered but not certified, and why

    @property
    def pin(self) -> x509.Certificate:
        """The root to pin from now on: the newest trusted root that is valid (latest start)."""
        return max(self.trusted, key=lambda cert: cert.not_valid_before_utc)


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and issued_by(cert, [cert]) is not None


def is_link_for(link: x509.Certificate, root: x509.Certificate) -> bool:
    """Does ``link`` carry exactly ``root``'s subject and public key (and is it not ``root``)?"""
    return link != root and link.subject == root.subject and _spki(link) == _spki(root)


def link_problem(
    link: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
    skew: dt.timedelta,
) -> Problem | None:
    """Why ``link`` cannot certify a root for a party trusting ``trusted``, or None."""
    signer = issued_by(link, trusted)
    if signer is None:
        return Problem(
            Reason.ROOT_NOT_CERTIFIED, f"{describe(link)} is not signed by a trusted root"
        )
    if not is_ca(link) or not _may_sign_certificates(link):
        return Problem(
            Reason.ROOT_NOT_CERTIFIED, f"{describe(link)} is not a CA certificate (keyCertSign)"
        )
    for cert, what in ((link, "the link"), (signer, "the root that signed it")):
        problem = validity_problem(cert, now, skew, expired=Reason.CA_EXPIRED)
        if problem is not None:
            return Problem(Reason.ROOT_NOT_CERTIFIED, f"{what}: {problem.detail}")
    return None


def follow_rollover(
    trusted: Sequence[x509.Certificate],
    offered: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
    skew: dt.timedelta,
) -> RootRollover:
    """The roots trustworthy after looking at ``offered`` (a /cacerts answer) from ``trusted``."""
    if not trusted:
        raise ValueError("follow_rollover needs at least one trusted root")
    known = list(trusted)
    accepted: list[x509.Certificate] = []
    candidates = [c for c in offered if is_self_signed(c) and not _among(c, known)]
    progress = True
    while progress:  # each pass may certify roots that certify the next ones
        progress = False
        for root in list(candidates):
            if _certification_problem(root, offered, known, now=now, skew=skew) is None:
                known.append(root)
                accepted.append(root)
                candidates.remove(root)
                progress = True
    refused = tuple(
        problem
        for root in candidates
        if (problem := _certification_problem(root, offered, known, now=now, skew=skew))
    )
    return RootRollover(trusted=tuple(known), accepted=tuple(accepted), refused=refused)


def _certification_problem(
    root: x509.Certificate,
    offered: Sequence[x509.Certificate],
    known: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
    skew: dt.timedelta,
) -> Problem | None:
    """Why no link among ``offered`` certifies ``root`` for a party trusting ``known``;
    None when one does (the one rule: follow_rollover accepts and explains by it)."""
    problem = _root_problem(root, now=now, skew=skew)
    if problem is not None:
        return problem
    links = [link for link in offered if is_link_for(link, root)]
    if not links:
        return Problem(
            Reason.ROOT_NOT_CERTIFIED,
            f"new root {describe(root)} comes without a link certificate from a trusted root",
        )
    problems = [link_problem(link, known, now=now, skew=skew) for link in links]
    if any(p is None for p in problems):
        return None
    details = "; ".join(p.detail for p in problems if p is not None)
    return Problem(
        Reason.ROOT_NOT_CERTIFIED, f"new root {describe(root)} is not certified: {details}"
    )


def _root_problem(
    root: x509.Certificate, *, now: dt.datetime, skew: dt.timedelta
) -> Problem | None:
    if not is_ca(root) or not _may_sign_certificates(root):
        return Problem(Reason.NOT_A_CA, f"offered root {describe(root)} is not a CA")
    expired = validity_problem(root, now, skew, expired=Reason.CA_EXPIRED)
    if expired is not None:
        return Problem(Reason.ROOT_NOT_CERTIFIED, f"offered root: {expired.detail}")
    return None


def _may_sign_certificates(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True  # RFC 5280: no keyUsage extension means no restriction


def _among(cert: x509.Certificate, roots: Sequence[x509.Certificate]) -> bool:
    return any(cert == root for root in roots)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
