"""The Store contract for a device's manufacturer (the trust anchor of its bootstrap
chain): recorded when learned, kept, filtered on, counted in a blast radius."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from fleet.authority.admin import import_manifest
from fleet.kernel.errors import DeviceNotFound, ManifestInvalid
from fleet.manifest import HEADER_WITH_MANUFACTURER, parse_manifest
from fleet.records import (
    Device,
    DeviceFilter,
    DeviceState,
    Manufacturer,
    ManufacturerCA,
)
from fleet.store import _sqlite_schema as sqlite_schema
from fleet.store.crl_numbers import StoredCrl
from fleet.store.protocol import Store
from fleet.store.sqlite import SqliteStore
from tests.contract.test_store_contract import certificate, entry, ids, sha

ACME = Manufacturer(sha("acme-root"), "Acme Devices")
OTHER = Manufacturer(sha("other-root"), "Other Corp")


async def test_first_enrollment_records_the_manufacturer(store: Store, now: dt.datetime) -> None:
    await store.import_manifest([entry("a"), entry("b"), entry("c")], now)
    assert (await store.get_device("a")).manufacturer is None
    for serial, (device_id, maker) in enumerate([("a", ACME), ("b", OTHER), ("c", ACME)], 1):
        device = await store.record_certificate(
            certificate(serial, device_id, now), expected={DeviceState.REGISTERED}, now=now,
            bootstrap_sha256=sha(f"bootstrap:{device_id}"), manufacturer=maker,
        )  # fmt: skip
        assert device.manufacturer == maker  # what the call returns ...
        assert (await store.get_device(device_id)).manufacturer == maker  # ... is what is kept

    # A renewal (no manufacturer given) keeps it.
    await store.record_certificate(
        certificate(10, "a", now), expected={DeviceState.ACTIVE}, now=now
    )
    assert (await store.get_device("a")).manufacturer == ACME

    acme = DeviceFilter(manufacturer_sha256=ACME.sha256)
    assert ids(await store.list_devices(acme)) == ["a", "c"]
    assert ids(await store.list_devices(acme, after="a", limit=1)) == ["c"]
    assert await store.count_blast_radius(acme) == (2, 3)  # a holds two good certificates
    both = DeviceFilter(manufacturer_sha256=OTHER.sha256, state=DeviceState.ACTIVE)
    assert ids(await store.list_devices(both)) == ["b"]
    assert await store.count_blast_radius(DeviceFilter(manufacturer_sha256=sha("x"))) == (0, 0)


async def test_a_held_device_keeps_the_manufacturer_it_asked_with(
    store: Store, now: dt.datetime
) -> None:
    await store.add_pending_device(
        Device("p", DeviceState.PENDING, now, now, bootstrap_sha256=sha("p"), manufacturer=OTHER)
    )
    assert (await store.get_device("p")).manufacturer == OTHER
    pending = DeviceFilter(manufacturer_sha256=OTHER.sha256, state=DeviceState.PENDING)
    assert ids(await store.list_devices(pending)) == ["p"]


# Files of every release before 6: schema 3, the two different "4"s of two
# branches (crl_numbers; the manufacturer columns), and 5 (no signed_crls), each
# upgraded in place.
OLD_FILES = {
    "3": ("no-columns", "no-crl-numbers", "no-signed-crls"),
    "4-crl-numbers": ("no-columns", "no-signed-crls"),
    "4-manufacturer": ("no-crl-numbers", "no-signed-crls"),
    "5": ("no-signed-crls",),
}


@pytest.mark.parametrize("old", sorted(OLD_FILES))
async def test_sqlite_files_before_6_upgrade_in_place(
    tmp_path: Path, now: dt.datetime, old: str
) -> None:
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    await store.import_manifest([entry("d1")], now)
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:  # back to that release's schema
        if "no-columns" in OLD_FILES[old]:
            conn.execute("DROP INDEX devices_manufacturer")
            conn.execute("ALTER TABLE devices DROP COLUMN manufacturer_sha256")
            conn.execute("ALTER TABLE devices DROP COLUMN manufacturer_name")
        if "no-crl-numbers" in OLD_FILES[old]:
            conn.execute("DROP TABLE crl_numbers")
        if "no-signed-crls" in OLD_FILES[old]:
            conn.execute("DROP TABLE signed_crls")
        if old != "5":
            for field in ("actor", "action", "outcome", "reason"):
                conn.execute(f"DROP INDEX audit_{field}")
        conn.execute("UPDATE schema_version SET version = ?", (int(old[0]),))
    finally:
        conn.close()

    store = await SqliteStore.open(path)
    try:
        assert (await store.get_device("d1")).manufacturer is None
        await store.record_certificate(
            certificate(1, "d1", now), expected={DeviceState.REGISTERED}, now=now,
            bootstrap_sha256=sha("bootstrap:d1"), manufacturer=ACME,
        )  # fmt: skip
        acme = DeviceFilter(manufacturer_sha256=ACME.sha256)
        assert ids(await store.list_devices(acme)) == ["d1"]
        assert await store.allocate_crl_number("ski:00", 1, 5) == 5
        assert await store.latest_crl_number("ski:00") == 5
        assert await store.keep_signed_crl("ski:00", StoredCrl(5, 1, b"\x30\x00"))
        assert await store.newest_signed_crl("ski:00") == StoredCrl(5, 1, b"\x30\x00")
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (sqlite_schema.SCHEMA_VERSION,)
        ]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"audit_actor", "audit_reason", "devices_manufacturer"} <= indexes
    finally:
        conn.close()


async def test_a_manifest_naming_a_trusted_manufacturer_records_it(
    store: Store, now: dt.datetime
) -> None:
    await store.add_manufacturer_ca(ManufacturerCA(ACME.sha256, "Acme Devices", "pem", now))
    text = (
        f"{','.join(HEADER_WITH_MANUFACTURER)}\n"
        f"m1,{sha('boot:m1')},,,{ACME.sha256.upper()}\n"
        f"m2,{sha('boot:m2')},,,\n"
    )
    await import_manifest(store, parse_manifest(text), actor="admin:test", now=now)
    assert (await store.get_device("m1")).manufacturer == ACME  # the trusted name
    assert (await store.get_device("m2")).manufacturer is None
    acme = DeviceFilter(manufacturer_sha256=ACME.sha256)
    assert ids(await store.list_devices(acme)) == ["m1"]

    # A re-import without the column keeps it; one naming an untrusted CA imports nothing.
    await store.import_manifest([entry("m1")], now)
    assert (await store.get_device("m1")).manufacturer == ACME
    untrusted = f"{','.join(HEADER_WITH_MANUFACTURER)}\nm3,{sha('boot:m3')},,,{OTHER.sha256}\n"
    with pytest.raises(ManifestInvalid, match="not trusted"):
        await import_manifest(store, parse_manifest(untrusted), actor="admin:test", now=now)
    with pytest.raises(DeviceNotFound):
        await store.get_device("m3")
