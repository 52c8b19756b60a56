"""State directory: keys 0600, atomic writes, renewal steps, recovery from damage."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_agent.keystore import FileKeyStore, KeyStoreError
from device_agent.state import AgentConfig, StateDir
from device_agent.trust import (
    CaCerts,
    CertificateUnusable,
    certificate_for,
    chain_from,
    check_issued,
)
from fleet.kernel.errors import ConfigError
from fleet.kernel.fingerprint import normalize_fingerprint, sha256_fingerprint
from fleet.pki.ca import CertifiedKey
from tests.support.hostile import unknown_key_algorithm

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _ca(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None):  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return cert, key


def _leaf(ca, public_key, cn: str = "dev-1", days: int = 30, eku: bool = True) -> x509.Certificate:  # type: ignore[no-untyped-def]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if eku else [ExtendedKeyUsageOID.SERVER_AUTH]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca[0].subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca[1], hashes.SHA256())
    )


@pytest.fixture
def pki() -> tuple[CaCerts, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    root = _ca("root")
    issuing = _ca("issuing", root)
    other = _ca("other root")
    return chain_from([issuing[0], other[0], root[0]], sha256_fingerprint(root[0])), issuing


def test_file_keystore_writes_0600_and_detects_damage(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path)
    key = store.generate("k")
    assert store.path("k").stat().st_mode & 0o777 == 0o600
    assert store.load("k").public_key() == key.public_key()
    store.path("k").write_bytes(store.path("k").read_bytes()[:50])
    with pytest.raises(KeyStoreError, match="corrupted or truncated"):
        store.load("k")
    with pytest.raises(KeyStoreError):
        store.load("missing")


def test_renewal_steps_and_recovery(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    cacerts, issuing = pki
    state = StateDir(tmp_path / "s")
    state.create()
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    assert state.load(cacerts) is None
    first = state.begin_renewal(None)
    first = state.store_certificate(first, _leaf(issuing, first.key.public_key()))
    # Complete but never committed (crash before the proof): still found.
    recovered = state.load(cacerts)
    assert recovered is not None
    assert recovered.generation == 1
    current = state.commit_renewal(first)
    assert state.pending(current) is None

    second = state.begin_renewal(current)
    assert state.begin_renewal(current).generation == second.generation  # resumed, key reused
    with pytest.raises(Exception, match="not for the key"):
        state.store_certificate(second, _leaf(issuing, first.key.public_key()))
    second = state.store_certificate(second, _leaf(issuing, second.key.public_key()))
    loaded = state.load(cacerts)
    assert loaded is not None
    assert loaded.generation == 1  # not proven yet: the old pair
    new = state.commit_renewal(second)
    assert new.generation == 2
    assert not (tmp_path / "s/op1.key").exists()

    # A corrupted pointer: the newest complete pair is found again.
    (tmp_path / "s/current").write_bytes(b"\x00\x01")
    again = state.load(cacerts)
    assert again is not None
    assert again.generation == 2
    assert any("corrupted" in w for w in state.warnings)
    # A certificate from another CA is not accepted as an identity.
    (tmp_path / "s/op2.pem").write_bytes(b"junk")
    assert state.load(cacerts) is None


def test_config_survives_a_corrupted_copy(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    config = AgentConfig("https://est:8443", "ab" * 32, "dev-1", "/b.pem", "/b.key")
    state.save_config(config)
    (tmp_path / "agent.json").write_text("{")
    assert state.load_config() == config
    assert (tmp_path / "agent.json").read_text().startswith("{\n")  # repaired


def test_status_round_trip_and_damage(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    status = state.record_error("boom", now=NOW, next_attempt=NOW + dt.timedelta(seconds=30))
    assert state.load_status() == status
    assert state.record_error("again", now=NOW, next_attempt=None).failures == 2
    assert state.record_success(next_renewal=NOW).failures == 0
    (tmp_path / "status.json").write_bytes(b"\xff")
    assert state.load_status().failures == 0


def test_chain_and_issued_certificate_checks(pki) -> None:  # type: ignore[no-untyped-def]
    cacerts, issuing = pki
    with pytest.raises(ValueError, match="pinned"):
        chain_from(list(cacerts.all), "00" * 32)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(issuing, key.public_key())
    skew = dt.timedelta(minutes=15)
    check_issued(
        cert, cacerts, expected_device_id="dev-1", key=key.public_key(), now=NOW, skew=skew
    )
    # A device clock 10 minutes behind still accepts a freshly issued certificate.
    check_issued(
        cert,
        cacerts,
        expected_device_id=None,
        key=key.public_key(),
        now=NOW - dt.timedelta(minutes=10),
        skew=skew,
    )
    with pytest.raises(CertificateUnusable, match="not for"):
        check_issued(
            cert, cacerts, expected_device_id="dev-2", key=key.public_key(), now=NOW, skew=skew
        )
    stranger = _leaf(_ca("x"), key.public_key())
    with pytest.raises(CertificateUnusable, match="not issued"):
        check_issued(
            stranger, cacerts, expected_device_id=None, key=key.public_key(), now=NOW, skew=skew
        )
    with pytest.raises(CertificateUnusable, match="expired"):
        check_issued(
            cert,
            cacerts,
            expected_device_id=None,
            key=key.public_key(),
            now=NOW + dt.timedelta(days=31),
            skew=skew,
        )
    # The kernel's admission rules: a certificate no broker would admit is not installed.
    server_only = _leaf(issuing, key.public_key(), eku=False)
    with pytest.raises(CertificateUnusable, match="clientAuth"):
        check_issued(
            server_only, cacerts, expected_device_id=None, key=key.public_key(), now=NOW, skew=skew
        )
    reserved = _leaf(issuing, key.public_key(), cn="admin")
    with pytest.raises(CertificateUnusable, match="reserved"):
        check_issued(
            reserved, cacerts, expected_device_id=None, key=key.public_key(), now=NOW, skew=skew
        )
    # A certificate for another key than the one that asked (the server's mistake).
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(CertificateUnusable, match="another key"):
        check_issued(cert, cacerts, expected_device_id="dev-1", key=other, now=NOW, skew=skew)


def test_fingerprint_formats() -> None:
    hexfp = "ab" * 32
    assert normalize_fingerprint(":".join(["AB"] * 32)) == hexfp
    assert normalize_fingerprint("sha256 Fingerprint=" + ":".join(["AB"] * 32)) == hexfp
    with pytest.raises(ConfigError, match="64 hex"):
        normalize_fingerprint("abc")


def test_a_certificate_whose_key_cannot_be_loaded_is_for_no_key(pki) -> None:  # type: ignore[no-untyped-def]
    """Found from outside: an EST answer holding a certificate with a key type cryptography
    does not know raised UnsupportedAlgorithm out of the agent's checks (a traceback)."""
    cacerts, issuing = pki
    key = ec.generate_private_key(ec.SECP256R1())
    good = _leaf(issuing, key.public_key())
    der = unknown_key_algorithm(
        _leaf(issuing, key.public_key()).public_bytes(serialization.Encoding.DER),
        CertifiedKey(issuing[0], issuing[1]),
    )
    bad = x509.load_der_x509_certificate(der)
    assert certificate_for([bad, good], key.public_key()) == good
    assert certificate_for([bad], key.public_key()) == bad
    with pytest.raises(CertificateUnusable, match="another key"):
        check_issued(
            bad, cacerts, expected_device_id="dev-1", key=key.public_key(), now=NOW,
            skew=dt.timedelta(minutes=15),
        )  # fmt: skip
