"""Certs-only PKCS#7 (a degenerate SignedData), the EST wire format for certificates.

RFC 7030 sections 4.1.3 and 4.2.3 return certificates this way; it carries no
signature, so decoding proves nothing about who sent the certificates.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from fleet.kernel.errors import PolicyError


def encode_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """DER certs-only SignedData holding ``certs``.

    The order is not preserved: ``certificates`` is a DER SET OF, whose
    elements are sorted by encoding. Receivers must build chains by name/key.
    """
    if not certs:
        raise PolicyError("a certs-only PKCS#7 needs at least one certificate")
    return pkcs7.serialize_certificates(list(certs), Encoding.DER)


def decode_certs_only(der: bytes) -> list[x509.Certificate]:
    """The certificates in a DER certs-only PKCS#7; PolicyError (``pkcs7_invalid``) otherwise."""
    try:
        with warnings.catch_warnings():
            # Many clients (openssl among them) write the SET OF unsorted, i.e.
            # BER; cryptography parses it and warns. That input is legitimate.
            warnings.simplefilter("ignore", UserWarning)
            certs = pkcs7.load_der_pkcs7_certificates(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PolicyError(
            "cannot decode the certs-only PKCS#7: expected DER SignedData with certificates",
            reason="pkcs7_invalid",
        ) from exc
    if not certs:
        raise PolicyError("the PKCS#7 contains no certificate", reason="pkcs7_invalid")
    return certs
