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
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleet.kernel.certs import client_cert_problem, is_ca, issued_by, validity_problem
from fleet.kernel.device_id import device_id_from_certificate, subject_attributes
from fleet.kernel.errors import DeviceIdInvalid
from fleet.kernel.fingerprint import sha256_fingerprint


def common_name(cert: x509.Certificate) -> str:
    names = subject_attributes(cert, NameOID.COMMON_NAME)
    return names[0] if names else ""


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
        return issued_by(cert, self.issuers)

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
    issuers = [c for c in certs if c != root and is_ca(c) and issued_by(c, [root]) is not None]
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
    """Raise CertificateUnusable unless ``cert`` is a fleet certificate a broker will admit now.

    The checks are the trust kernel's, as the brokers make them: issued by a
    CA of the pinned root, a client certificate with an allowed key, the
    device id rule, and validity with ``skew`` both ways (a device clock a few
    minutes behind must not throw away a certificate the server just issued).
    """
    if issued_by(cert, cacerts.issuers) is None:
        raise CertificateUnusable("the certificate was not issued by a CA of the pinned fleet root")
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
