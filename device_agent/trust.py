"""Trust anchors on the device: the pinned fleet root and the CAs below it.

The agent trusts exactly one root, the one whose SHA-256 it was given at
enrollment (RFC 7030 §4.1.1 bootstrap distribution of CA certificates). It
checks what the server hands it against that root, with a clock-skew allowance
because device clocks are often wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from device_agent.wire import sha256_fingerprint


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


@dataclasses.dataclass(frozen=True)
class CaCerts:
    """The issuing chain from /cacerts; ``root`` is the certificate the pin matched."""

    root: x509.Certificate
    issuers: tuple[x509.Certificate, ...]  # CAs directly below the root

    @property
    def all(self) -> tuple[x509.Certificate, ...]:
        return (*self.issuers, self.root)

    def issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The CA of this chain that signed ``cert``, or None."""
        for ca in self.issuers:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca
        return None

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.all)


def chain_from(certs: list[x509.Certificate], pinned_sha256: str) -> CaCerts:
    """The pinned root among ``certs`` and the CAs it signed directly; ValueError if absent."""
    roots = [c for c in certs if sha256_fingerprint(c) == pinned_sha256]
    if not roots:
        raise ValueError(
            "no certificate has the pinned SHA-256 fingerprint "
            f"{pinned_sha256[:16]}… (got "
            f"{', '.join(sha256_fingerprint(c)[:16] + '…' for c in certs)})"
        )
    root = roots[0]
    issuers = []
    for cert in certs:
        if cert is root or cert == root:
            continue
        try:
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            cert.verify_directly_issued_by(root)
        except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
            continue
        if basic.ca:
            issuers.append(cert)
    if not issuers:
        raise ValueError("the chain has no CA certificate issued by the pinned root")
    return CaCerts(root, tuple(issuers))


class CertificateUnusable(ValueError):
    """An issued certificate the agent must not install."""


def check_issued(
    cert: x509.Certificate,
    cacerts: CaCerts,
    *,
    expected_device_id: str | None,
    now: dt.datetime,
    skew: dt.timedelta,
) -> None:
    """Raise CertificateUnusable unless ``cert`` is a fleet certificate we can use now.

    The validity check allows ``skew`` both ways: a device clock a few minutes
    behind must not throw away a certificate the server has just issued.
    """
    if cacerts.issuer_of(cert) is None:
        raise CertificateUnusable("the certificate was not issued by a CA of the pinned fleet root")
    if expected_device_id is not None and common_name(cert) != expected_device_id:
        raise CertificateUnusable(
            f"the certificate is for {common_name(cert)!r}, not for {expected_device_id!r}"
        )
    if now + skew < cert.not_valid_before_utc:
        raise CertificateUnusable(
            f"the certificate is valid only from {cert.not_valid_before_utc.isoformat()} "
            f"(device clock says {now.isoformat()}: is the clock far behind?)"
        )
    if now - skew > cert.not_valid_after_utc:
        raise CertificateUnusable(
            f"the certificate expired at {cert.not_valid_after_utc.isoformat()}"
        )
