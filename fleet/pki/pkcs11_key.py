"""CA private keys that live in a PKCS#11 token and sign there (python-pkcs11).

A token key is a subclass of cryptography's ``ec.EllipticCurvePrivateKey`` /
``rsa.RSAPrivateKey`` whose ``sign()`` sends the digest to the token (C_Sign
with CKM_ECDSA or CKM_RSA_PKCS), so certificates, CRLs and OCSP responses are
built and signed by cryptography's builders unchanged; the key's bytes never
leave the token (CKA_SENSITIVE, not CKA_EXTRACTABLE). Sessions, locking and
fork handling are ``fleet.pki.pkcs11_session``'s.
"""

from __future__ import annotations

import secrets
from typing import Any, Generic, NoReturn, Self, TypeAlias, TypeVar

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    NoDigestInfo,
    Prehashed,
    encode_dss_signature,
)
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from fleet.kernel.errors import ConfigError, ServerUnavailable
from fleet.kernel.keys import KeyType
from fleet.kernel.reasons import Reason
from fleet.pki.pkcs11_session import TokenSession, refused
from fleet.pki.pkcs11_uri import Pkcs11Uri

_Data: TypeAlias = bytes | bytearray | memoryview
_Public = TypeVar("_Public", ec.EllipticCurvePublicKey, rsa.RSAPublicKey)
_CURVES: dict[KeyType, tuple[str, ec.EllipticCurve]] = {
    KeyType.EC_P256: ("1.2.840.10045.3.1.7", ec.SECP256R1()),
    KeyType.EC_P384: ("1.3.132.0.34", ec.SECP384R1()),
}
_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072}
# DER DigestInfo prefixes (RFC 8017 section 9.2, note 1): CKM_RSA_PKCS signs
# DigestInfo, not the bare digest.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


class _KeyRef:
    """One private key object in a token, found again by label/id after a re-login."""

    def __init__(self, session: TokenSession, uri: Pkcs11Uri) -> None:
        self.session = session
        self.uri = uri
        self._handle: Any = None
        self._generation = -1

    def find(self, session: Any) -> Any:
        if self._handle is None or self._generation != self.session.generation:
            self._handle = _one_object(session, ObjectClass.PRIVATE_KEY, self.uri)
            self._generation = self.session.generation
        return self._handle

    def sign(self, data: bytes, mechanism: Mechanism) -> bytes:
        try:
            signature: bytes = self.session.run(
                "sign", lambda s: self.find(s).sign(data, mechanism=mechanism)
            )
        except ConfigError as exc:
            # The key was there at startup (it was loaded): while serving, a token
            # that lost it is the server being unavailable (503), not a request's fault.
            raise ServerUnavailable(exc.message, reason=exc.reason, hint=exc.hint) from None
        return signature


def _template(uri: Pkcs11Uri) -> dict[Attribute, Any]:
    template: dict[Attribute, Any] = {}
    if uri.object is not None:
        template[Attribute.LABEL] = uri.object
    if uri.id is not None:
        template[Attribute.ID] = uri.id
    return template


def _one_object(session: Any, object_class: ObjectClass, uri: Pkcs11Uri) -> Any:
    found = list(session.get_objects({Attribute.CLASS: object_class, **_template(uri)}))
    kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
    if not found:
        raise ConfigError(
            f"the PKCS#11 token has no {kind} key {uri}",
            reason=Reason.CA_KEY_MISSING,
            hint="List the token's objects (pkcs11-tool --list-objects, or softhsm2-util) and "
            "fix the URI in fleet.toml, or run `fleet init --pkcs11-uri` to create the keys.",
        )
    if len(found) > 1:
        raise ConfigError(
            f"{len(found)} {kind} keys in the PKCS#11 token match {uri}",
            reason=Reason.CA_KEY_AMBIGUOUS,
            hint="Name the key by both object= and id= so that exactly one matches.",
        )
    return found[0]


def _digest(data: _Data, algorithm: hashes.HashAlgorithm | Prehashed) -> tuple[str, bytes]:
    if isinstance(algorithm, Prehashed):
        return algorithm._algorithm.name, bytes(data)
    hasher = hashes.Hash(algorithm)
    hasher.update(bytes(data))
    return algorithm.name, hasher.finalize()


def _not_exportable() -> NoReturn:
    raise ConfigError(
        "a CA key in a PKCS#11 token cannot be exported or used outside the token",
        reason=Reason.PKCS11_FAILED,
        hint="Only signing goes through the token; back keys up with the HSM's own tools.",
    )


class _TokenKey(Generic[_Public]):
    """What an EC and an RSA token key share: the token object it signs with, its
    public key (read from the token), and refusing to leave the token.

    Listed before cryptography's key class in the bases, so these definitions are
    the ones its abstract methods resolve to.
    """

    def __init__(self, ref: _KeyRef, public: _Public) -> None:
        self._ref = ref
        self._public: _Public = public

    @property
    def uri(self) -> Pkcs11Uri:
        return self._ref.uri

    def public_key(self) -> _Public:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _not_exportable()

    # A copy would be a second handle on the same token object: the key itself.
    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


class TokenEcPrivateKey(_TokenKey[ec.EllipticCurvePublicKey], ec.EllipticCurvePrivateKey):
    """An EC private key in a token: ECDSA signatures only, computed by the token."""

    def sign(self, data: _Data, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            _not_exportable()
        _, digest = _digest(data, signature_algorithm.algorithm)
        raw = self._ref.sign(digest, Mechanism.ECDSA)
        size = (self.curve.key_size + 7) // 8
        if len(raw) != 2 * size:
            raise refused("sign", ValueError("signature of unexpected length"))
        return encode_dss_signature(
            int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
        )

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _not_exportable()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _not_exportable()


class TokenRsaPrivateKey(_TokenKey[rsa.RSAPublicKey], rsa.RSAPrivateKey):
    """An RSA private key in a token: PKCS#1 v1.5 signatures only, computed by the token."""

    def sign(
        self,
        data: _Data,
        padding: padding.AsymmetricPadding,
        algorithm: hashes.HashAlgorithm | Prehashed | NoDigestInfo,
    ) -> bytes:
        if isinstance(algorithm, NoDigestInfo):
            _not_exportable()
        name, digest = _digest(data, algorithm)
        if padding.name != "EMSA-PKCS1-v1_5" or name not in _DIGEST_INFO:
            _not_exportable()
        return self._ref.sign(_DIGEST_INFO[name] + digest, Mechanism.RSA_PKCS)

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        _not_exportable()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _not_exportable()


TokenPrivateKey: TypeAlias = TokenEcPrivateKey | TokenRsaPrivateKey


def _public_key(public: Any) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if public.key_type == pkcs11.KeyType.EC:
        key = serialization.load_der_public_key(encode_ec_public_key(public))
    else:
        numbers = public.get_attributes([Attribute.MODULUS, Attribute.PUBLIC_EXPONENT])
        key = rsa.RSAPublicNumbers(
            int.from_bytes(numbers[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(numbers[Attribute.MODULUS], "big"),
        ).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ConfigError("the token key is neither EC nor RSA", reason=Reason.PKCS11_FAILED)
    return key


def load_token_key(session: TokenSession, uri: Pkcs11Uri) -> TokenPrivateKey:
    """The private key ``uri`` names, with its public key read from the token.

    ConfigError ``ca_key_missing`` when the token has no such private key or no
    public key object beside it (found by the private key's CKA_ID).
    """

    def read(s: Any) -> tuple[Pkcs11Uri, Any]:
        private = _one_object(s, ObjectClass.PRIVATE_KEY, uri)
        attributes = private.get_attributes([Attribute.LABEL, Attribute.ID])
        exact = uri.with_key(attributes[Attribute.LABEL], attributes[Attribute.ID])
        return exact, _public_key(_one_object(s, ObjectClass.PUBLIC_KEY, exact))

    exact, public = session.run("read the key", read)
    ref = _KeyRef(session, exact)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return TokenEcPrivateKey(ref, public)
    return TokenRsaPrivateKey(ref, public)


def generate_token_key(session: TokenSession, label: str, key_type: KeyType) -> TokenPrivateKey:
    """A new key pair in the token: sensitive, never extractable, signing only.

    A random CKA_ID keeps it distinct from any older key with the same label;
    the returned key's ``uri`` names it by both.
    """
    key_id = secrets.token_bytes(8)
    public: dict[Attribute, Any] = {
        Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id,
        Attribute.VERIFY: True, Attribute.ENCRYPT: False, Attribute.WRAP: False,
    }  # fmt: skip
    private: dict[Attribute, Any] = {
        Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.LABEL: label,
        Attribute.ID: key_id, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True, Attribute.DECRYPT: False, Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }  # fmt: skip
    if key_type in _CURVES:
        public[Attribute.EC_PARAMS] = encode_named_curve_parameters(_CURVES[key_type][0])
        kind, length = pkcs11.KeyType.EC, None
    elif key_type in _RSA_BITS:
        public[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
        kind, length = pkcs11.KeyType.RSA, _RSA_BITS[key_type]
    else:
        raise ConfigError(f"CA keys in a token are EC or RSA, not {key_type.value}")

    def generate(s: Any) -> None:
        s.generate_keypair(
            kind, length, store=True, public_template=public, private_template=private
        )

    session.run("generate a key", generate)
    return load_token_key(session, session.token.with_key(label, key_id))
