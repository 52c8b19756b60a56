"""Key types the fleet accepts (pure): one closed list for issuance, CSR checks and admission.

A closed list keeps device certificates verifiable by every broker and TLS
stack we support; anything else is refused by name rather than signed or
admitted. Generation and signing live in ``fleet.pki.keys``.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fleet.kernel.errors import ConfigError, KeyNotAllowed


class KeyType(enum.StrEnum):
    """A key algorithm and size the fleet will certify."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    ED25519 = "ed25519"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"

    @property
    def is_rsa(self) -> bool:
        return self in (KeyType.RSA_2048, KeyType.RSA_3072)

    @classmethod
    def parse(cls, text: str) -> KeyType:
        """The key type named ``text`` (case-insensitive); ConfigError listing valid names."""
        return parse_key_type(text)


def parse_key_type(text: str) -> KeyType:
    """The key type named ``text`` (e.g. from fleet.toml), case and surrounding space ignored."""
    try:
        return KeyType(text.strip().lower())
    except ValueError:
        valid = ", ".join(k.value for k in KeyType)
        raise ConfigError(f"unknown key type {text!r}; valid key types are: {valid}") from None


def describe_key(public_key: object) -> str:
    """A short human name for any key object, for error messages."""
    if isinstance(public_key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {public_key.key_size}"
    name = type(public_key).__name__.removeprefix("_")
    for suffix in ("PublicKey", "PrivateKey"):
        name = name.removesuffix(suffix)
    return name or "unknown key"


def key_type_of(public_key: object) -> KeyType:
    """The fleet key type of ``public_key`` (public or private); KeyNotAllowed otherwise."""
    if isinstance(public_key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(public_key.curve, ec.SECP256R1):
            return KeyType.EC_P256
        if isinstance(public_key.curve, ec.SECP384R1):
            return KeyType.EC_P384
    elif isinstance(public_key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return KeyType.ED25519
    elif isinstance(public_key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        # Exact sizes only: 4096 is not weak, but it is slow on small devices and
        # brokers, and a closed list is what the profile and /csrattrs advertise.
        if public_key.key_size == 2048:
            return KeyType.RSA_2048
        if public_key.key_size == 3072:
            return KeyType.RSA_3072
    valid = ", ".join(k.value for k in KeyType)
    raise KeyNotAllowed(
        f"key type {describe_key(public_key)} is not supported; use one of: {valid}"
    )
