"""A revoked certificate whose stored PEM does not parse (a record damaged or edited
by hand) stays on the CRL, on a real SQLite store. It was dropped as "not ours":
revoked, yet admitted wherever the CRL is what is enforced (Mosquitto's
crl_backstop, openssl, any relying party)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from fleet.authority.crl import CrlPublisher
from fleet.authority.ocsp import OcspResponder
from fleet.kernel.clock import ManualClock
from fleet.pki.ca import create_issuing_ca, create_root_ca
from fleet.pki.ocsp import Unknown
from fleet.records import CertificateRecord, DeviceState, ManifestEntry, RevocationReason
from fleet.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


async def test_a_revoked_serial_whose_certificate_does_not_parse_stays_listed(
    tmp_path: Path,
) -> None:
    issuing = create_issuing_ca(create_root_ca("Damaged Root", now=NOW), "Devices", now=NOW)
    store = await SqliteStore.open(tmp_path / "fleet.db")
    try:
        await store.import_manifest([ManifestEntry("d1", "ab" * 32)], NOW)
        await store.record_certificate(
            CertificateRecord(
                serial=0x31,
                device_id="d1",
                not_before=NOW,
                not_after=NOW + dt.timedelta(days=30),
                issued_at=NOW,
                pem="-----BEGIN CERTIFICATE-----\nZGFtYWdlZA==\n-----END CERTIFICATE-----\n",
            ),
            expected={DeviceState.REGISTERED},
            now=NOW,
        )
        await store.revoke_device("d1", RevocationReason.KEY_COMPROMISE, NOW)
        publisher = CrlPublisher(
            store, issuing, ManualClock(NOW), dt.timedelta(hours=48), dt.timedelta(hours=1)
        )
        signed = await publisher.current()
        assert [e.serial_number for e in x509.load_der_x509_crl(signed.der)] == [0x31]
        # OCSP cannot say whose it is either, so it never answers good.
        responder = OcspResponder(store, issuing, ManualClock(NOW), dt.timedelta(hours=1))
        assert isinstance(await responder.status(0x31), Unknown)
    finally:
        await store.close()
