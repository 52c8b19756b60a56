from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa

from fleet.kernel.errors import ConfigError, KeyNotAllowed
from fleet.kernel.keys import KeyType, key_type_of, parse_key_type
from fleet.pki.keys import PrivateKey, load_private_key_pem, private_key_to_pem, signing_hash
from tests.support.openssl import openssl
from tests.unit.pki.helpers import PKI_NOW


def test_fixture_time_matches_suite_now(now: dt.datetime) -> None:
    assert now == PKI_NOW


@pytest.mark.parametrize("key_type", list(KeyType))
def test_generated_keys_classify_as_their_type(
    key_type: KeyType, key_of: Callable[[KeyType], PrivateKey]
) -> None:
    key = key_of(key_type)
    assert key_type_of(key.public_key()) is key_type
    assert key_type_of(key) is key_type


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "RSA 1024"),  # noqa: S505 - must refuse
        (lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        (lambda: ed448.Ed448PrivateKey.generate(), "Ed448"),
        (lambda: dsa.generate_private_key(1024), "DSA"),  # noqa: S505 - must refuse
    ],
)
def test_other_keys_are_refused_by_name(make: Callable[[], object], named: str) -> None:
    key = make()
    public = key.public_key()  # type: ignore[attr-defined]
    with pytest.raises(KeyNotAllowed, match=named) as info:
        key_type_of(public)
    assert "ec-p256" in info.value.message


def test_rsa_4096_is_refused() -> None:
    # 4096 takes a moment to generate, but it is the size people most often try.
    key = rsa.generate_private_key(65537, 4096)
    with pytest.raises(KeyNotAllowed, match="RSA 4096"):
        key_type_of(key.public_key())


def test_signing_hash_matches_the_key(key_of: Callable[[KeyType], PrivateKey]) -> None:
    assert signing_hash(key_of(KeyType.ED25519)) is None
    assert isinstance(signing_hash(key_of(KeyType.EC_P384)), hashes.SHA384)
    for key_type in (KeyType.EC_P256, KeyType.RSA_2048, KeyType.RSA_3072):
        assert isinstance(signing_hash(key_of(key_type)), hashes.SHA256)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_pem_round_trip_and_openssl_reads_it(
    key_type: KeyType, key_of: Callable[[KeyType], PrivateKey], tmp_path: Path
) -> None:
    key = key_of(key_type)
    plain = private_key_to_pem(key)
    assert plain.startswith(b"-----BEGIN PRIVATE KEY-----")
    encrypted = private_key_to_pem(key, b"correct horse")
    assert encrypted.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

    for pem, passphrase in ((plain, None), (encrypted, b"correct horse")):
        loaded = load_private_key_pem(pem, passphrase)
        assert key_type_of(loaded) is key_type
        assert loaded.public_key() == key.public_key()

    (tmp_path / "key.pem").write_bytes(encrypted)
    openssl("pkey", "-in", tmp_path / "key.pem", "-passin", "pass:correct horse", "-noout")
    wrong = openssl(
        "pkey", "-in", tmp_path / "key.pem", "-passin", "pass:wrong", "-noout", check=False
    )
    assert wrong.returncode != 0


def test_load_refuses_wrong_passphrase_and_garbage(
    key_of: Callable[[KeyType], PrivateKey],
) -> None:
    key = key_of(KeyType.EC_P256)
    encrypted = private_key_to_pem(key, b"secret")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_private_key_pem(encrypted, b"not it")
    with pytest.raises(ConfigError, match="passphrase"):
        load_private_key_pem(encrypted, None)
    with pytest.raises(ConfigError, match="passphrase"):
        load_private_key_pem(private_key_to_pem(key), b"unexpected")
    with pytest.raises(ConfigError):
        load_private_key_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError):
        load_private_key_pem(b"")
    with pytest.raises(ConfigError, match="empty"):
        private_key_to_pem(key, b"")


def test_load_refuses_unsupported_key_types() -> None:
    for key in (ed448.Ed448PrivateKey.generate(), ec.generate_private_key(ec.SECP521R1())):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(ConfigError, match="not supported"):
            load_private_key_pem(pem)


def test_parse_key_type() -> None:
    assert parse_key_type("ec-p384") is KeyType.EC_P384
    assert parse_key_type(" RSA-2048 ") is KeyType.RSA_2048
    assert KeyType.parse("ed25519") is KeyType.ED25519
    with pytest.raises(ConfigError, match="ec-p256, ec-p384, ed25519, rsa-2048, rsa-3072"):
        parse_key_type("rsa-4096")
