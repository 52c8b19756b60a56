"""Which fleet CAs a broker adopts from an EST /cacerts answer (pure).

A broker that follows ``/cacerts`` keeps a bundle of issuing CAs and the roots
above them. The server publishes the next issuing CA before it signs anything
(``fleet ca rotate-issuing``), drops a retired one (``fleet ca retire``) and,
in a root rollover (``fleet ca rotate-root``), publishes a new root with its
link certificates. The broker follows all three without a restart, but never
on the server's word alone:

* **roots**: those the bundle already holds, plus a new root only when a link
  certificate from one of them certifies it (:func:`fleet.kernel.rollover.follow_rollover`,
  the rule the device agent follows; a self-signed root alone is dropped);
* **issuing CAs**: a CA certificate with pathlen 0, signed directly by one of
  those roots and valid now (with the skew allowance). Only the ones offered
  now are kept: a CA that left ``/cacerts`` leaves the bundle;
* an answer with no acceptable issuing CA changes nothing (the caller keeps
  its bundle): an empty or hostile answer must not empty a broker's trust.

Link certificates are evidence, not trust: they never enter the bundle
(:meth:`fleet.kernel.admission.TrustPolicy.from_bundle` would take a
self-issued certificate for an anchor).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from fleet.kernel.certs import (
    DEFAULT_SKEW,
    Problem,
    describe,
    is_ca,
    issued_by,
    path_length,
    validity_problem,
)
from fleet.kernel.errors import ConfigError
from fleet.kernel.reasons import Reason
from fleet.kernel.rollover import follow_rollover, is_self_signed


@dataclasses.dataclass(frozen=True, slots=True)
class CaBundleUpdate:
    """What a broker makes of one /cacerts answer."""

    issuing: tuple[x509.Certificate, ...]  # adopted issuing CAs, in the order offered
    roots: tuple[x509.Certificate, ...]  # the roots it trusted, then the newly certified ones
    adopted_roots: tuple[x509.Certificate, ...]  # roots a link certified in this answer
    dropped: tuple[Problem, ...]  # offered certificates not adopted, and why

    def bundle(self) -> list[x509.Certificate]:
        """The new bundle (issuing CAs, then roots); raises when it would trust no issuer."""
        if not self.issuing:
            reasons = "; ".join(p.detail for p in self.dropped) or "none offered"
            raise ConfigError(
                f"/cacerts offered no issuing CA under a trusted root; bundle kept ({reasons})"
            )
        return [*self.issuing, *self.roots]


def bundle_roots(bundle: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The trust anchors of a broker's bundle: its self-signed CA certificates."""
    return [cert for cert in bundle if is_ca(cert) and is_self_signed(cert)]


def issuing_ca_problem(
    cert: x509.Certificate,
    roots: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
    skew: dt.timedelta = DEFAULT_SKEW,
) -> Problem | None:
    """Why ``cert`` is not an issuing CA directly under one of ``roots`` now, or None."""
    # Roots may share a name (a rollover keeps the subject): issued_by checks the signature.
    if issued_by(cert, roots) is None:
        return Problem(Reason.UNKNOWN_ISSUER, f"{describe(cert)} is not signed by a trusted root")
    if not is_ca(cert):
        return Problem(Reason.NOT_A_CA, f"{describe(cert)} is not a CA certificate")
    if path_length(cert) != 0:
        # pathlen 0: an issuing CA signs devices only, never another CA.
        return Problem(Reason.NOT_A_CA, f"{describe(cert)} is not a pathlen-0 issuing CA")
    return validity_problem(cert, now, skew, expired=Reason.CA_EXPIRED)


def follow_cacerts(
    current: Sequence[x509.Certificate],
    offered: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
    skew: dt.timedelta = DEFAULT_SKEW,
) -> CaBundleUpdate:
    """The bundle a broker holding ``current`` adopts from ``offered`` (a /cacerts answer)."""
    trusted = bundle_roots(current)
    if not trusted:
        raise ConfigError("the fleet CA bundle holds no root to check /cacerts against")
    rollover = follow_rollover(trusted, offered, now=now, skew=skew)
    dropped = list(rollover.refused)
    roots = list(rollover.trusted)
    issuing: list[x509.Certificate] = []
    for cert in offered:
        if cert.subject == cert.issuer or cert in issuing:
            continue  # a root (judged above) or a link certificate (evidence for one)
        problem = issuing_ca_problem(cert, roots, now=now, skew=skew)
        if problem is None:
            issuing.append(cert)
        else:
            dropped.append(problem)
    return CaBundleUpdate(
        issuing=tuple(issuing),
        roots=tuple(roots),
        adopted_roots=rollover.accepted,
        dropped=tuple(dropped),
    )
