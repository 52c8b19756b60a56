"""Generating, signing with and (de)serialising keys of the kinds ``fleet.kernel.keys`` allows.

A closed list of key types keeps device certificates verifiable by every broker
and TLS stack we support; anything else is refused by name rather than signed.
"""

from __future__ import annotations

from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from fleet.kernel.errors import ConfigError, KeyNotAllowed
from fleet.kernel.keys import KeyType, describe_key, key_type_of

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

# RFC 8017 / SP 800-56B: 65537 is the only public exponent anyone should use.
_RSA_PUBLIC_EXPONENT = 65537


def generate_private_key(key_type: KeyType = KeyType.EC_P256) -> PrivateKey:
    """A fresh private key of ``key_type``."""
    match key_type:
        case KeyType.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyType.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())
        case KeyType.ED25519:
            return ed25519.Ed25519PrivateKey.generate()
        case KeyType.RSA_2048:
            return rsa.generate_private_key(_RSA_PUBLIC_EXPONENT, 2048)
        case KeyType.RSA_3072:
            return rsa.generate_private_key(_RSA_PUBLIC_EXPONENT, 3072)
    raise ConfigError(f"unknown key type {key_type!r}")  # pragma: no cover - enum is closed


def signing_hash(private_key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash to sign with ``private_key``: None for Ed25519 (it hashes internally).

    P-384 pairs with SHA-384 so the signature is not weaker than the key
    (CNSA / RFC 5480 section 4); everything else uses SHA-256.
    """
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
        private_key.curve, ec.SECP384R1
    ):
        return hashes.SHA384()
    return hashes.SHA256()


def sign_data(private_key: PrivateKey, data: bytes) -> bytes:
    """A raw signature over ``data`` matching what X.509 builders produce with this key.

    For structures cryptography cannot build exactly as needed and that are
    re-signed after editing (see ocsp.py): ECDSA and RSA PKCS#1 v1.5 with
    :func:`signing_hash`, plain Ed25519.
    """
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    algorithm = signing_hash(private_key)
    assert algorithm is not None  # only Ed25519 signs without a separate hash
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(algorithm))
    return private_key.sign(data, padding.PKCS1v15(), algorithm)


def private_key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme when ``passphrase`` is given."""
    if passphrase is not None and not passphrase:
        # An empty secret file must not silently produce an unencrypted CA key.
        raise ConfigError("the private key passphrase is empty; give a non-empty one or none")
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key_pem(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """A private key from PEM; ConfigError on bad data, wrong passphrase or unsupported type."""
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        # cryptography raises TypeError for "password given but key not encrypted"
        # and the reverse; both are configuration mistakes.
        raise ConfigError(f"private key passphrase mismatch: {exc}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            "cannot load the private key: not a PEM private key, or wrong passphrase"
        ) from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise ConfigError(f"private key type {describe_key(key)} is not supported")
    try:
        key_type_of(key)
    except KeyNotAllowed as exc:
        raise ConfigError(exc.message) from exc
    return key
