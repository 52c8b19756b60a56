"""The issuing-CA signing ceremony (pure): a CSR out of the online side, a CA back in.

With the root offline (``fleet init --offline-root DIR``), a new issuing CA is
made in three steps: the online side makes the key and a CSR
(``fleet ca rotate-issuing --csr-out``), the offline machine checks the CSR and
signs it under the root (``fleet ca sign-issuing``), and the online side
installs the result (``fleet ca install-issuing``) after checking it matches the
key it made. Both checks live here so neither side can skip them.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from fleet.kernel.errors import PolicyError
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.reasons import Reason
from fleet.pki.ca import CertifiedKey, sign_issuing_ca
from fleet.pki.csr import verify_csr_signature
from fleet.pki.keys import PrivateKey, signing_hash

# Issuing CAs live five years (README "CA lifetime"): long enough that a
# rotation is a planned yearly-scale event, short enough that a key in service
# is retired well within the algorithm's comfort zone.
ISSUING_VALIDITY = dt.timedelta(days=5 * 365)
_MIN_RSA_BITS = 2048
_CURVES = (ec.SECP256R1, ec.SECP384R1)


class IssuingCsrInvalid(PolicyError):
    reason = Reason.ISSUING_CSR_INVALID
    hint = "Make a new request on the online server: fleet ca rotate-issuing --csr-out FILE."


def create_issuing_csr(key: PrivateKey, common_name: str) -> x509.CertificateSigningRequest:
    """The request the online side hands to the ceremony; the root decides the rest."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return builder.sign(key, signing_hash(key))


def sign_issuing_csr(
    root: CertifiedKey,
    csr: x509.CertificateSigningRequest,
    *,
    now: dt.datetime,
    validity: dt.timedelta = ISSUING_VALIDITY,
) -> x509.Certificate:
    """Check ``csr`` and certify its key as a pathlen-0 issuing CA under ``root``.

    Only the subject and the key are taken from the request: the extensions
    are the issuing-CA profile's, whatever the CSR asks for.
    """
    try:
        verify_csr_signature(csr)
    except PolicyError as exc:
        raise IssuingCsrInvalid(f"the issuing-CA request is not signed by its key: {exc}") from exc
    public_key = csr.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _MIN_RSA_BITS:
            raise IssuingCsrInvalid(f"an RSA issuing key needs {_MIN_RSA_BITS} bits or more")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _CURVES):
            raise IssuingCsrInvalid(f"curve {public_key.curve.name} is not allowed for a CA")
    else:
        # cryptography's chain verifier (brokers, server) refuses Ed25519-signed chains.
        raise IssuingCsrInvalid(f"key type {type(public_key).__name__} cannot be a fleet CA")
    if not csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise IssuingCsrInvalid("the issuing-CA request has no common name")
    if _spki(public_key) == _spki(root.certificate.public_key()):
        raise IssuingCsrInvalid("the request carries the root's own key")
    if csr.subject == root.certificate.subject:
        raise IssuingCsrInvalid("the request names the root itself as subject")
    return sign_issuing_ca(
        root, subject=csr.subject, public_key=public_key, now=now, validity=validity
    )


def check_issuing_certificate(
    cert: x509.Certificate,
    *,
    key: PrivateKey,
    roots: tuple[x509.Certificate, ...],
    now: dt.datetime,
) -> x509.Certificate:
    """The ceremony's result, checked before the online side installs it; returns the root."""
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise IssuingCsrInvalid(
            "the certificate is not for the key this server made (another request's answer?)",
            hint="Install the certificate signed for the latest fleet ca rotate-issuing --csr-out.",
        )
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca or constraints.path_length != 0:
        raise IssuingCsrInvalid("the certificate is not a pathlen-0 CA")
    for root in roots:
        if cert.issuer != root.subject:
            continue
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise IssuingCsrInvalid(
                f"the certificate names root {sha256_fingerprint(root)[:16]} as issuer "
                f"but its signature does not verify: {exc}"
            ) from exc
        if cert.not_valid_after_utc > root.not_valid_after_utc:
            raise IssuingCsrInvalid("the certificate outlives its root")
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise IssuingCsrInvalid("the certificate is not valid now")
        return root
    raise IssuingCsrInvalid("the certificate is not signed by a trusted fleet root")


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
