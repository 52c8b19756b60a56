"""The little EST wire format the agent needs (RFC 7030, RFC 8951 §3.1).

Re-implemented here on purpose: the agent ships on devices and never imports
the server package.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

CT_PKCS10 = "application/pkcs10"
_WHITESPACE = re.compile(rb"\s+")
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


class WireError(ValueError):
    """A body the agent cannot decode."""


def encode_base64(der: bytes) -> bytes:
    """base64 in 64-character lines (what every measured server accepts)."""
    text = base64.b64encode(der)
    return b"\r\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + b"\r\n"


def decode_base64(body: bytes) -> bytes:
    compact = _WHITESPACE.sub(b"", body)
    try:
        der = base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except binascii.Error as exc:
        raise WireError(f"response body is not base64: {exc}") from exc
    if not der:
        raise WireError("response body is empty")
    return der


def decode_certs_only(body: bytes) -> list[x509.Certificate]:
    """The certificates in a base64 certs-only PKCS#7 body."""
    der = decode_base64(body)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # BER SET OF from some servers
            certs = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as exc:
        raise WireError(f"response is not a certs-only PKCS#7: {exc}") from exc
    if not certs:
        raise WireError("the PKCS#7 contains no certificate")
    return certs


def csr_body(csr: x509.CertificateSigningRequest) -> bytes:
    return encode_base64(csr.public_bytes(Encoding.DER))


def sha256_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def normalize_fingerprint(text: str) -> str:
    """Lowercase hex; accepts ``AB:CD:..`` as openssl prints it, or plain hex."""
    cleaned = re.sub(r"[:\s]", "", text).lower()
    cleaned = cleaned.rsplit("=", 1)[-1]  # "sha256 Fingerprint=AB:CD:..." from openssl
    if not _HEX64.fullmatch(cleaned):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return cleaned
