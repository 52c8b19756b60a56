"""Helpers for PKI tests: CSRs, files for openssl, and openssl verification."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from fleet.pki.ca import certificate_to_pem
from fleet.pki.keys import PrivateKey, signing_hash
from tests.support.openssl import openssl

# The same instant as the suite's `now` fixture; session fixtures cannot use
# function-scoped ones, and test_fixture_time_matches_suite_now checks they agree.
PKI_NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


def make_csr(
    key: PrivateKey,
    *,
    common_name: str | None = None,
    extra: Sequence[x509.NameAttribute[str]] = (),
    san: Sequence[x509.GeneralName] | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.CertificateSigningRequest:
    attributes = list(extra)
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, signing_hash(key))


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(Encoding.DER)


def write_pem(directory: Path, name: str, *certs: x509.Certificate) -> Path:
    path = directory / name
    path.write_bytes(b"".join(certificate_to_pem(c) for c in certs))
    return path


def attime(now: dt.datetime) -> str:
    """openssl's -attime argument: verification happens at our test instant, not today."""
    return str(int(now.timestamp()))


def openssl_verify(
    directory: Path,
    *,
    roots: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate] = (),
    leaf: x509.Certificate,
    now: dt.datetime,
    extra: Sequence[str] = (),
    check: bool = True,
) -> str:
    """Run `openssl verify` on ``leaf``; return its combined output."""
    args: list[str | Path] = [
        "verify",
        "-attime",
        attime(now),
        "-CAfile",
        write_pem(directory, "roots.pem", *roots),
    ]
    if untrusted:
        args += ["-untrusted", write_pem(directory, "untrusted.pem", *untrusted)]
    args += [*extra, write_pem(directory, "leaf.pem", leaf)]
    proc = openssl(*args, check=check)
    return (proc.stdout + proc.stderr).decode(errors="replace")


def openssl_text(directory: Path, cert: x509.Certificate) -> str:
    path = write_pem(directory, "text.pem", cert)
    return openssl("x509", "-in", path, "-noout", "-text").stdout.decode()
