"""The core of an RFC 6960 OCSP responder: parse a request, answer it, sign the answer.

The issuing CA signs its own responses (RFC 6960 section 4.2.2.2, "the CA who
issued the certificate"), so relying parties need no delegated responder cert.
Responses are built from the request's hashes, which lets us answer "unknown"
for serials we never issued without needing a certificate for them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TypeAlias

from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from fleet.kernel.decoding import decoding
from fleet.kernel.errors import ConfigError, PolicyError
from fleet.pki._time import require_utc
from fleet.pki.ca import CertifiedKey
from fleet.pki.crl import meaningful_reason
from fleet.pki.keys import PrivateKey, sign_data, signing_hash

# Requests are tiny; refuse large bodies before parsing them.
MAX_OCSP_REQUEST_BYTES = 16 * 1024
_SERIAL_LIMIT = 2 ** (8 * 20 - 1)  # 20 octets, and positive: the top bit is the sign
# RFC 8954 section 2.1: a nonce is 1 to 32 octets; longer ones are an attack vector.
_NONCE_MAX = 32


@dataclass(frozen=True)
class Good:
    """The certificate is not revoked."""


@dataclass(frozen=True)
class Revoked:
    """The certificate was revoked at ``revoked_at`` for ``reason``."""

    revoked_at: dt.datetime
    reason: x509.ReasonFlags | None = None


@dataclass(frozen=True)
class Unknown:
    """The responder knows nothing about this serial (never issued by this CA)."""


CertStatus: TypeAlias = Good | Revoked | Unknown


def _invalid(message: str) -> PolicyError:
    return PolicyError(message, reason="ocsp_request_invalid")


def parse_ocsp_request(der: bytes) -> ocsp.OCSPRequest:
    """A DER OCSP request; PolicyError (reason ``ocsp_request_invalid``) on anything else."""
    if not der:
        raise _invalid("the OCSP request is empty")
    if len(der) > MAX_OCSP_REQUEST_BYTES:
        raise _invalid(
            f"the OCSP request is {len(der)} bytes; the limit is {MAX_OCSP_REQUEST_BYTES}"
        )
    what = (
        "the OCSP request: expected one DER OCSPRequest for one certificate with SHA-1/SHA-2 hashes"
    )
    with decoding(what, _invalid):
        request = ocsp.load_der_ocsp_request(der)
        # Touch the lazily decoded fields now, so later code cannot fail on them.
        request.hash_algorithm  # noqa: B018
        request.issuer_name_hash  # noqa: B018
        request.issuer_key_hash  # noqa: B018
        serial = request.serial_number
        nonce = _nonce(request)
    if not 0 < serial < _SERIAL_LIMIT:
        # RFC 5280 section 4.1.2.2: a positive integer of at most 20 octets. Nothing
        # this CA issued has another serial, and the store's codec refuses one.
        raise _invalid("the OCSP request's serial number is not a positive 20-octet integer")
    if nonce is not None and not 1 <= len(nonce) <= _NONCE_MAX:
        raise _invalid(f"the OCSP nonce is {len(nonce)} octets; RFC 8954 allows 1 to {_NONCE_MAX}")
    return request


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents, which the OCSP key hash covers."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits: bytes = asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents
    return bits[1:]  # drop the "unused bits" octet that prefixes BIT STRING contents


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def request_matches_issuer(request: ocsp.OCSPRequest, issuer_cert: x509.Certificate) -> bool:
    """Whether ``request`` asks about a certificate issued by ``issuer_cert`` (RFC 6960 4.1.1)."""
    algorithm = request.hash_algorithm
    name_hash = _digest(algorithm, issuer_cert.subject.public_bytes())
    key_hash = _digest(algorithm, _public_key_bits(issuer_cert))
    return request.issuer_name_hash == name_hash and request.issuer_key_hash == key_hash


def build_ocsp_response(
    request: ocsp.OCSPRequest,
    *,
    status: CertStatus,
    issuer: CertifiedKey,
    now: dt.datetime,
    next_update_in: dt.timedelta,
    include_signer: bool = False,
) -> bytes:
    """The DER OCSP response, signed by ``issuer``, giving ``status`` for the requested serial.

    ``include_signer`` puts the issuer's certificate in the response: OpenSSL
    (nginx's stapling) looks for the signer among the response's certificates
    and the server's chain, not among its trusted ones.

    Refuses (PolicyError ``ocsp_unknown_issuer``) a request about another CA's
    certificate: a signed "good" for it would vouch for something we never saw.
    Callers answer those with :func:`unauthorized_response`.
    """
    require_utc(now)
    if next_update_in <= dt.timedelta(0):
        raise ConfigError(f"OCSP next update interval must be positive, got {next_update_in}")
    if not request_matches_issuer(request, issuer.certificate):
        raise PolicyError(
            "the OCSP request is about a certificate from another issuer",
            reason="ocsp_unknown_issuer",
        )
    revocation_time: dt.datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None
    match status:
        case Good():
            cert_status = ocsp.OCSPCertStatus.GOOD
        case Revoked(revoked_at=revoked_at, reason=reason):
            cert_status = ocsp.OCSPCertStatus.REVOKED
            revocation_time = revoked_at
            revocation_reason = meaningful_reason(reason)
        case Unknown():
            cert_status = ocsp.OCSPCertStatus.UNKNOWN
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number,
            algorithm=request.hash_algorithm,
            cert_status=cert_status,
            this_update=now,
            next_update=now + next_update_in,
            revocation_time=revocation_time,
            revocation_reason=revocation_reason,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.certificate)
    )
    if include_signer:
        builder = builder.certificates([issuer.certificate])
    nonce = _nonce(request)
    if nonce is not None:
        # Echoing the nonce is what lets the client detect a replayed answer.
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    response = builder.sign(issuer.private_key, signing_hash(issuer.private_key))
    return _with_produced_at(
        response.public_bytes(serialization.Encoding.DER), now, issuer.private_key
    )


def _with_produced_at(der: bytes, produced_at: dt.datetime, key: PrivateKey) -> bytes:
    """``der`` with producedAt set to ``produced_at`` and the signature redone.

    cryptography stamps producedAt from the wall clock and offers no setter;
    the PKI core takes time only from its callers (tests, the simulator moving
    time, replayable audits), so the field is rewritten and the response
    re-signed with the same key and algorithm.
    """
    response = asn1_ocsp.OCSPResponse.load(der)
    basic = response["response_bytes"]["response"].parsed
    tbs = basic["tbs_response_data"]
    # Whole seconds: DER GeneralizedTime in PKIX profiles carries no fractions.
    tbs["produced_at"] = produced_at.replace(microsecond=0)
    basic["signature"] = sign_data(key, tbs.dump(force=True))
    response["response_bytes"] = asn1_ocsp.ResponseBytes(
        {"response_type": "basic_ocsp_response", "response": basic}
    )
    rewritten: bytes = response.dump(force=True)
    return rewritten


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def unauthorized_response() -> bytes:
    """The unsigned "unauthorized" answer, for requests about certificates we did not issue."""
    return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)


def malformed_response() -> bytes:
    """The unsigned "malformedRequest" answer, for requests that do not parse."""
    return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
