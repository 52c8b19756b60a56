"""The EST wire codec (pure), for the server and the device agent alike.

RFC 7030 bodies as deployed clients and servers actually send them.

RFC 8951 §3.1: bodies are base64 and Content-Transfer-Encoding is ignored.
Measured clients disagree about line wrapping (libest breaks on very long
lines, strongSwan < 5.9.11 on any line break), so the output line length is a
setting. On input we accept any whitespace and trailing stray bytes (libest
sends a CRLF after the body).
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from fleet.kernel.decoding import decode_certificate_fields, decoding
from fleet.kernel.errors import EncodingInvalid

CT_PKCS10 = "application/pkcs10"
CT_CACERTS = "application/pkcs7-mime"
CT_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
CT_CSRATTRS = "application/csrattrs"
CT_PKCS8 = "application/pkcs8"

_WHITESPACE = re.compile(rb"[\s]+")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def decode_base64_body(body: bytes) -> bytes:
    """The DER inside an EST body (a request on the server, a response on the agent).

    Whitespace of any kind anywhere is dropped; bytes after the base64 run
    (stray CRLF, NULs some clients append) are ignored only when what precedes
    them decodes. Anything else is refused with a reason.
    """
    compact = _WHITESPACE.sub(b"", body)
    match = _BASE64_RUN.match(compact)
    run = match.group(0) if match else b""
    if not run:
        raise EncodingInvalid("request body is not base64 (RFC 8951 §3.1)")
    # Tolerate a missing final padding, which some clients omit.
    unpadded = run.rstrip(b"=")
    if len(unpadded) % 4 == 1:
        raise EncodingInvalid("request body is truncated base64")
    padded = unpadded + b"=" * (-len(unpadded) % 4)
    try:
        der = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise EncodingInvalid(f"request body is not valid base64: {exc}") from exc
    if not der:
        raise EncodingInvalid("request body is empty")
    return der


def encode_base64_body(der: bytes, line_length: int) -> bytes:
    """base64 wrapped at ``line_length`` characters with CRLF; 0 = one line."""
    text = base64.b64encode(der)
    if line_length <= 0:
        return text + b"\r\n"
    lines = [text[i : i + line_length] for i in range(0, len(text), line_length)]
    return b"\r\n".join(lines) + b"\r\n"


def decode_certs_only(body: bytes) -> list[x509.Certificate]:
    """The certificates in a base64 certs-only PKCS#7 body (/cacerts, enroll answers)."""
    der = decode_base64_body(body)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # BER SET OF from some servers
            certs = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as exc:
        raise EncodingInvalid(f"body is not a certs-only PKCS#7: {exc}") from exc
    if not certs:
        raise EncodingInvalid("the PKCS#7 contains no certificate")
    # cryptography decodes subjects and extensions when first read: read them all
    # here, so that a damaged certificate is this refusal and not an exception of
    # any type deep in the caller (the agent's checks, after it has been trusted).
    for cert in certs:
        with decoding("a certificate in the PKCS#7", EncodingInvalid):
            decode_certificate_fields(cert)
    return certs


def csr_body(csr: x509.CertificateSigningRequest, line_length: int = 64) -> bytes:
    """A CSR as an EST request body (64-character lines: what every measured server accepts)."""
    return encode_base64_body(csr.public_bytes(Encoding.DER), line_length)
