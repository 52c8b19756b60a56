"""Trust anchors on the device: the pinned fleet root and the CAs below it.

The agent pins one root, the one whose SHA-256 it was given at enrollment
(RFC 7030 §4.1.1 bootstrap distribution of CA certificates). It checks what
the server hands it against its roots, with a clock-skew allowance because
device clocks are often wrong. On a root rollover it moves its pin only to a
root that a link certificate from a root it already trusts certifies (the
kernel's rule, ``fleet.kernel.rollover``), and keeps the old root while valid.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes as PublicKey
from cryptography.x509.oid import NameOID

from fleet.kernel.certs import client_cert_problem, is_ca, issued_by, validity_problem
from fleet.kernel.device_id import device_id_from_certificate, subject_attributes
from fleet.kernel.errors import DeviceIdInvalid
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.rollover import follow_rollover, is_self_signed

# How early or late a device's clock may be when it judges a certificate's
# validity: the server's, the broker's, CAs', its own new ones (default policy).
CLOCK_SKEW = dt.timedelta(minutes=15)
# Renewal is due this many clock-skew allowances before the end at the latest
# (renewal.renewal_time); check_issued refuses an issued certificate with less
# left: it would be due at once.
LATEST_RENEWAL_SKEWS = 2


def certificate_for(certs: Sequence[x509.Certificate], key: PublicKey) -> x509.Certificate:
    """The certificate for ``key`` in an EST answer; the first one if none is (which
    check_issued then refuses). A certs-only PKCS#7 is a SET: a server that adds
    its CA certificates to the answer gives no order to rely on."""
    return next((c for c in certs if _public_key(c) == key), certs[0])


def _public_key(cert: x509.Certificate) -> PublicKey | None:
    """The certificate's key; None for one cryptography cannot load (a key type it does
    not know, a damaged encoding): such a certificate is for no key of ours."""
    try:
        return cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def common_name(cert: x509.Certificate) -> str:
    names = subject_attributes(cert, NameOID.COMMON_NAME)
    return names[0] if names else ""


@dataclasses.dataclass(frozen=True)
class CaCerts:
    """The fleet CAs the agent trusts: its roots and the issuing CAs directly below them.

    ``roots[0]`` is the pinned root. During a root rollover (RFC 7030 section
    4.1.3) the older roots follow it for as long as they are valid, so that
    what they signed (the server's TLS certificate, issuing CAs not yet
    rotated) still verifies. ``refused`` says why roots the server offered
    were not trusted (never part of the comparison: it is a report).
    """

    roots: tuple[x509.Certificate, ...]
    issuers: tuple[x509.Certificate, ...]  # CAs directly below one of the roots
    refused: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    @property
    def root(self) -> x509.Certificate:
        return self.roots[0]

    @property
    def pinned_sha256(self) -> str:
        return sha256_fingerprint(self.root)

    @property
    def all(self) -> tuple[x509.Certificate, ...]:
        return (*self.issuers, *self.roots)

    def issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The CA of this chain that signed ``cert``, or None."""
        return issued_by(cert, self.issuers)

    def root_pem(self) -> bytes:
        """The trust anchors for TLS (server, broker): every root the agent trusts."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.roots)

    def pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.all)


def chain_from(
    certs: list[x509.Certificate],
    pinned_sha256: str,
    *,
    kept: Sequence[x509.Certificate] = (),
    now: dt.datetime | None = None,
    skew: dt.timedelta = CLOCK_SKEW,
) -> CaCerts:
    """The roots the agent trusts and the CAs they signed directly; ValueError without the pin.

    ``kept`` are roots the agent trusted before (its stored bundle). With
    ``now`` (a fresh /cacerts answer) the kernel's rollover rule decides whether
    a new root among ``certs`` is certified by a link from a trusted one; the
    pin moves to the newest trusted root, and older roots stay while valid.
    Without ``now`` (the agent's own stored bundle) nothing new is learnt.
    """
    pinned = [c for c in (*certs, *kept) if sha256_fingerprint(c) == pinned_sha256]
    if not pinned:
        raise ValueError(
            "no certificate has the pinned SHA-256 fingerprint "
            f"{pinned_sha256[:16]}… (got "
            f"{', '.join(sha256_fingerprint(c)[:16] + '…' for c in certs)})"
        )
    trusted = [pinned[0], *(r for r in kept if r != pinned[0] and is_self_signed(r))]
    pin, refused = pinned[0], tuple[str, ...]()
    if now is not None:
        rollover = follow_rollover(trusted, certs, now=now, skew=skew)
        pin = rollover.pin
        refused = tuple(p.detail for p in rollover.refused)
        trusted = [
            r for r in rollover.trusted
            if r == pin or validity_problem(r, now, skew) is None
        ]  # fmt: skip
    roots = (pin, *(r for r in trusted if r != pin))
    # Link certificates are self-issued (a root's name): never an issuing CA.
    issuers = [
        c for c in certs
        if c not in roots and is_ca(c) and c.subject != c.issuer
        and issued_by(c, roots) is not None
    ]  # fmt: skip
    if not issuers:
        raise ValueError("the chain has no CA certificate issued by the pinned root")
    return CaCerts(roots, tuple(issuers), refused)


class CertificateUnusable(ValueError):
    """An issued certificate the agent must not install."""


def check_issued(
    cert: x509.Certificate,
    cacerts: CaCerts,
    *,
    expected_device_id: str | None,
    key: PublicKey,
    now: dt.datetime,
    skew: dt.timedelta,
) -> None:
    """Raise CertificateUnusable unless ``cert`` is a fleet certificate for ``key`` (the
    key that asked for it) that a broker will admit now.

    The checks are the trust kernel's, as the brokers make them: issued by a
    CA of the pinned root, a client certificate with an allowed key, the
    device id rule, and validity with ``skew`` both ways (a device clock a few
    minutes behind must not throw away a certificate the server just issued).
    A certificate for another key is the server's mistake, not the device's:
    unusable (retry later), like one for another device.
    """
    if _public_key(cert) != key:
        raise CertificateUnusable("the certificate is for another key than the one that asked")
    if issued_by(cert, cacerts.issuers) is None:
        raise CertificateUnusable("the certificate was not issued by a CA of a trusted fleet root")
    try:
        device_id = device_id_from_certificate(cert)
    except DeviceIdInvalid as exc:
        raise CertificateUnusable(f"the certificate names no usable device: {exc.message}") from exc
    if expected_device_id is not None and device_id != expected_device_id:
        raise CertificateUnusable(
            f"the certificate is for {device_id!r}, not for {expected_device_id!r}"
        )
    problem = client_cert_problem(cert) or validity_problem(cert, now, skew)
    if problem is not None:
        hint = (
            " (is the device clock far behind?)" if problem.reason.endswith("not_yet_valid") else ""
        )
        raise CertificateUnusable(f"{problem.detail}{hint}")
    if cert.not_valid_after_utc - now < LATEST_RENEWAL_SKEWS * skew:
        # Renewal is due LATEST_RENEWAL_SKEWS skews before the end at the latest
        # (renewal_time): such a certificate would be due the moment it is installed,
        # and a server issuing them would have the agent renew (and reconnect to the
        # broker) in a loop.
        raise CertificateUnusable(
            f"the certificate is valid only until {cert.not_valid_after_utc.isoformat()}: "
            f"less than {LATEST_RENEWAL_SKEWS * skew} left, it would be due for renewal at once"
        )
