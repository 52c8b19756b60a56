"""Reading PKCS#10 certificate signing requests defensively.

A CSR arrives from an untrusted device, so every failure inside cryptography
(parse errors, a version other than 0, unsupported keys or signature
algorithms found lazily on access) becomes CsrInvalid, never an unexpected
exception in a request handler. What cryptography decodes lazily is read at
load time (:func:`fleet.kernel.decoding.decoding` knows its exception types).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from fleet.kernel.decoding import decoding
from fleet.kernel.errors import CsrInvalid

# Hard cap before parsing: real device CSRs are well under 4 KiB.
MAX_CSR_BYTES = 64 * 1024

_PEM_PREFIX = b"-----BEGIN"


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A CSR from DER, or PEM when ``data`` starts with ``-----BEGIN``; CsrInvalid otherwise."""
    if not data:
        raise CsrInvalid("the certificate signing request is empty")
    if len(data) > MAX_CSR_BYTES:
        raise CsrInvalid(
            f"the certificate signing request is {len(data)} bytes; the limit is {MAX_CSR_BYTES}"
        )
    is_pem = data.lstrip().startswith(_PEM_PREFIX)
    kind = "PEM" if is_pem else "DER"
    with decoding(f"the certificate signing request as {kind} PKCS#10", CsrInvalid):
        csr = x509.load_pem_x509_csr(data) if is_pem else x509.load_der_x509_csr(data)
        # Decoded lazily by cryptography: read now, so later checks cannot fail on them.
        csr.subject.rfc4514_string()
        csr.signature_algorithm_oid  # noqa: B018
        for extension in csr.extensions:
            extension.value  # noqa: B018
    return csr


def verify_csr_signature(csr: x509.CertificateSigningRequest) -> None:
    """Check the CSR is signed by the key it carries (proof of possession); CsrInvalid if not."""
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature) as exc:
        raise CsrInvalid(
            "cannot verify the certificate signing request's signature: "
            "unsupported key or signature algorithm"
        ) from exc
    if not valid:
        raise CsrInvalid(
            "the certificate signing request's signature does not verify with its public key"
        )


def csr_public_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    """The CSR's public key object; CsrInvalid when cryptography cannot represent it."""
    try:
        return csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CsrInvalid(
            "the certificate signing request carries an unsupported public key"
        ) from exc
