"""A trusted manufacturer CA whose stored PEM no longer decodes (a row edited by hand
or damaged) costs only that manufacturer's devices, on a real SQLite store: they are
refused as from an untrusted issuer, every other manufacturer's devices still enroll,
and the log names the record. It was a ConfigError on every bootstrap enrollment: one
bad row made every device of every manufacturer a 500."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.authority.credentials import Credentials
from fleet.authority.enrollment import Authority
from fleet.kernel.clock import ManualClock
from fleet.kernel.errors import StoreRecordInvalid, UnknownIssuer
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import create_issuing_ca, create_root_ca
from fleet.pki.profile import DeviceProfile
from fleet.policy.enrollment import EnrollmentPolicy
from fleet.records import CertificateRecord, DeviceState, ManifestEntry, ManufacturerCA
from fleet.store.sqlite import SqliteStore
from tests.support.factory import make_bootstrap, make_manufacturer

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


async def test_a_damaged_manufacturer_ca_row_refuses_only_its_devices(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good, damaged = make_manufacturer("Good", NOW), make_manufacturer("Damaged", NOW)
    issuing = create_issuing_ca(create_root_ca("Fleet Root", now=NOW), "Devices", now=NOW)
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    try:
        for maker in (good, damaged):
            pem = maker.certificate.public_bytes(serialization.Encoding.PEM).decode()
            fingerprint = sha256_fingerprint(maker.certificate)
            await store.add_manufacturer_ca(ManufacturerCA(fingerprint, "x", pem, NOW))
        with sqlite3.connect(path) as db:  # edited by hand, behind fleet's back
            db.execute(
                "UPDATE manufacturer_cas SET pem = ? WHERE sha256 = ?",
                (
                    "-----BEGIN CERTIFICATE-----\nZGFtYWdlZA==\n-----END CERTIFICATE-----\n",
                    sha256_fingerprint(damaged.certificate),
                ),
            )
        credentials = Credentials(
            store=store, fleet_issuing_ca=issuing.certificate, clock=ManualClock(NOW)
        )
        with caplog.at_level(logging.ERROR, logger="fleet.authority.credentials"):
            ok = await credentials.bootstrap(make_bootstrap(good, "g-1", now=NOW).certificate)
            assert ok.device_id == "g-1"
            with pytest.raises(UnknownIssuer):
                await credentials.bootstrap(make_bootstrap(damaged, "d-1", now=NOW).certificate)
        assert sha256_fingerprint(damaged.certificate) in caplog.text
    finally:
        await store.close()


async def test_a_damaged_stored_certificate_is_a_clear_store_refusal(tmp_path: Path) -> None:
    """The bootstrap certificate asks again while the device's latest stored certificate
    no longer decodes: StoreRecordInvalid naming it (a 503 with a reason), not a
    ValueError (a 500), and nothing is issued."""
    maker = make_manufacturer("Acme", NOW)
    issuing = create_issuing_ca(create_root_ca("Fleet Root", now=NOW), "Devices", now=NOW)
    bootstrap = make_bootstrap(maker, "d1", now=NOW)
    store = await SqliteStore.open(tmp_path / "fleet.db")
    try:
        pem = maker.certificate.public_bytes(serialization.Encoding.PEM).decode()
        await store.add_manufacturer_ca(
            ManufacturerCA(sha256_fingerprint(maker.certificate), "Acme", pem, NOW)
        )
        pin = sha256_fingerprint(bootstrap.certificate)
        await store.import_manifest([ManifestEntry("d1", pin)], NOW)
        await store.record_certificate(
            CertificateRecord(
                serial=0x31, device_id="d1", not_before=NOW,
                not_after=NOW + dt.timedelta(days=30), issued_at=NOW,
                pem="-----BEGIN CERTIFICATE-----\nZGFtYWdlZA==\n-----END CERTIFICATE-----\n",
            ),
            expected={DeviceState.REGISTERED}, now=NOW, bootstrap_sha256=pin,
        )  # fmt: skip
        clock = ManualClock(NOW + dt.timedelta(minutes=1))
        credentials = Credentials(store=store, fleet_issuing_ca=issuing.certificate, clock=clock)
        credential = await credentials.bootstrap(bootstrap.certificate)
        authority = Authority(
            store=store, issuer=issuing, policy=EnrollmentPolicy(), clock=clock, retry_after=60
        )
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        with pytest.raises(StoreRecordInvalid, match="31"):
            await authority.enroll(credential, csr.sign(key, hashes.SHA256()), DeviceProfile())
        assert [c.serial for c in await store.list_certificates("d1")] == [0x31]
    finally:
        await store.close()
