from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from fleet.kernel.errors import ConfigError
from fleet.kernel.keys import KeyType
from fleet.pki.ca import CertifiedKey
from fleet.pki.crl import RevokedEntry, build_crl, crl_to_der, crl_to_pem
from fleet.pki.issuance import issue_device_certificate
from fleet.pki.keys import PrivateKey
from fleet.pki.profile import DeviceProfile
from tests.support.openssl import openssl
from tests.unit.pki.helpers import attime, make_csr, write_pem

KeyOf = Callable[[KeyType], PrivateKey]


def _device(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime, device_id: str
) -> x509.Certificate:
    return issue_device_certificate(
        make_csr(key_of(KeyType.EC_P256)),
        device_id=device_id,
        issuer=issuing,
        profile=DeviceProfile(crl_url="http://pki.fleet.test/devices.crl"),
        now=now,
    )


def test_crl_content_as_openssl_reads_it(
    issuing: CertifiedKey, now: dt.datetime, tmp_path: Path
) -> None:
    revoked = [
        RevokedEntry(0x1234ABCD, now - dt.timedelta(hours=2), x509.ReasonFlags.key_compromise),
        RevokedEntry(0x55, now - dt.timedelta(hours=1), x509.ReasonFlags.unspecified),
        RevokedEntry(0x66, now - dt.timedelta(hours=1)),
        RevokedEntry(0x77, now, x509.ReasonFlags.cessation_of_operation),
    ]
    crl = build_crl(issuing, revoked, now=now, next_update_in=dt.timedelta(hours=6), crl_number=42)
    assert crl.is_signature_valid(issuing.certificate.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc == now + dt.timedelta(hours=6)
    assert crl.last_update_utc == now
    assert x509.load_der_x509_crl(crl_to_der(crl)) == crl

    path = tmp_path / "crl.pem"
    path.write_bytes(crl_to_pem(crl))
    text = openssl("crl", "-in", path, "-noout", "-text").stdout.decode()
    assert "Serial Number: 1234ABCD" in text
    assert "Serial Number: 55" in text
    assert "Key Compromise" in text
    assert "Cessation Of Operation" in text
    # RFC 5280 5.3.1: "unspecified" is expressed by leaving the reason out.
    assert "Unspecified" not in text
    assert text.count("CRL Reason Code") == 2
    assert "X509v3 CRL Number: \n                42" in text
    assert "Next Update:" in text
    assert "Authority Key Identifier" in text
    issuer_path = write_pem(tmp_path, "issuing.pem", issuing.certificate)
    verify = openssl("crl", "-in", path, "-noout", "-CAfile", issuer_path)
    assert b"verify OK" in verify.stdout + verify.stderr


def test_openssl_crl_check_refuses_revoked_and_accepts_good(
    root: CertifiedKey, issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    bad = _device(issuing, key_of, now, "bad-device")
    good = _device(issuing, key_of, now, "good-device")
    crl = build_crl(
        issuing,
        [RevokedEntry(bad.serial_number, now, x509.ReasonFlags.superseded)],
        now=now,
        next_update_in=dt.timedelta(days=1),
        crl_number=1,
    )
    # -crl_check checks the leaf only, so no CRL for the root is needed.
    (tmp_path / "crl.pem").write_bytes(crl_to_pem(crl))
    chain = write_pem(tmp_path, "chain.pem", root.certificate, issuing.certificate)

    def verify(cert: x509.Certificate) -> str:
        leaf = write_pem(tmp_path, "leaf.pem", cert)
        proc = openssl(
            "verify", "-attime", attime(now), "-crl_check", "-CRLfile", tmp_path / "crl.pem",
            "-CAfile", chain, leaf, check=False,
        )  # fmt: skip
        return (proc.stdout + proc.stderr).decode()

    assert "certificate revoked" in verify(bad)
    assert ": OK" in verify(good)


def test_duplicate_serials_are_listed_once(issuing: CertifiedKey, now: dt.datetime) -> None:
    entries = [RevokedEntry(9, now), RevokedEntry(9, now, x509.ReasonFlags.key_compromise)]
    crl = build_crl(issuing, entries, now=now, next_update_in=dt.timedelta(hours=1), crl_number=3)
    assert len(crl) == 1


def test_bad_crl_parameters_are_refused(issuing: CertifiedKey, now: dt.datetime) -> None:
    with pytest.raises(ConfigError, match="positive"):
        build_crl(issuing, [], now=now, next_update_in=dt.timedelta(0), crl_number=1)
    with pytest.raises(ConfigError, match="CRL number"):
        build_crl(issuing, [], now=now, next_update_in=dt.timedelta(hours=1), crl_number=-1)
    with pytest.raises(ConfigError, match="delta CRLs"):
        build_crl(
            issuing,
            [RevokedEntry(1, now, x509.ReasonFlags.remove_from_crl)],
            now=now,
            next_update_in=dt.timedelta(hours=1),
            crl_number=1,
        )
