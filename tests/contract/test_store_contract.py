"""The Store contract: every backend passes exactly these tests (see conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
from collections.abc import AsyncIterator

import pytest

from fleet.kernel.errors import (
    AdminNotFound,
    CertificateNotFound,
    DeviceNotFound,
    NotFound,
    StoreConflict,
    StoreUnavailable,
    TokenInvalid,
)
from fleet.records import (
    AdminCredential,
    AdminRole,
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceFilter,
    DeviceState,
    EnrollmentToken,
    ManifestEntry,
    ManufacturerCA,
    RevocationKind,
    RevocationReason,
)
from fleet.store.audit_chain import chain_next, verify_chain
from fleet.store.protocol import Store
from tests.contract.conftest import Backend

DAY = dt.timedelta(days=1)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(device_id: str, *, model: str = "m1", batch: str = "b1") -> ManifestEntry:
    return ManifestEntry(device_id, sha(f"bootstrap:{device_id}"), model=model, batch=batch)


def certificate(
    serial: int, device_id: str, issued: dt.datetime, *, days: int = 30
) -> CertificateRecord:
    return CertificateRecord(
        serial=serial,
        device_id=device_id,
        not_before=issued - dt.timedelta(minutes=5),
        not_after=issued + days * DAY,
        issued_at=issued,
        pem=f"-----BEGIN CERTIFICATE-----\n{serial:x}\n-----END CERTIFICATE-----\n",
    )


async def enrolled(store: Store, device_id: str, serial: int, now: dt.datetime) -> Device:
    await store.import_manifest([entry(device_id)], now)
    return await store.record_certificate(
        certificate(serial, device_id, now),
        expected={DeviceState.REGISTERED},
        now=now,
        bootstrap_sha256=sha(f"bootstrap:{device_id}"),
    )


async def aclose(iterator: AsyncIterator[object]) -> None:
    """Close a follow_feed iterator (the protocol types it as a plain AsyncIterator)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def audit_event(now: dt.datetime, n: int, device_id: str | None = None) -> AuditEvent:
    return AuditEvent(
        at=now + n * dt.timedelta(seconds=1),
        actor="system",
        action="enroll",
        outcome="allowed",
        reason=f"reason-{n}",
        device_id=device_id,
        detail={"n": str(n), "a": "x"},
    )


async def chain_of(store: Store) -> list[tuple[str, str | None]]:
    """(reason, device_id) of every audit record, after checking the chain is intact."""
    records = await store.audit_records()
    assert verify_chain(records) == []
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    return [(r.event.reason, r.event.device_id) for r in records]


def ids(devices: list[Device]) -> list[str]:
    return [d.device_id for d in devices]


# -- manufacturer trust --------------------------------------------------------
async def test_manufacturer_cas_add_list_remove(store: Store, now: dt.datetime) -> None:
    newer = ManufacturerCA(sha("ca-b"), "Acme B", "PEM-B", now)
    older = ManufacturerCA(sha("ca-a"), "Acme A", "PEM-A", now - DAY)
    assert await store.add_manufacturer_ca(newer) is True
    assert await store.add_manufacturer_ca(older) is True
    assert await store.add_manufacturer_ca(dataclasses.replace(older, name="again")) is False
    assert await store.list_manufacturer_cas() == [older, newer]

    await store.remove_manufacturer_ca(older.sha256)
    assert await store.list_manufacturer_cas() == [newer]
    with pytest.raises(NotFound):
        await store.remove_manufacturer_ca(older.sha256)


# -- devices ---------------------------------------------------------------------
async def test_import_manifest_creates_then_updates_keeping_state(
    store: Store, now: dt.datetime
) -> None:
    assert await store.import_manifest([entry("d1"), entry("d2")], now) == 2
    created = await store.get_device("d1")
    assert created == Device(
        device_id="d1",
        state=DeviceState.REGISTERED,
        created_at=now,
        updated_at=now,
        bootstrap_sha256=sha("bootstrap:d1"),
        model="m1",
        batch="b1",
    )
    await store.record_certificate(
        certificate(1, "d1", now), expected={DeviceState.REGISTERED}, now=now
    )

    later = now + DAY
    repin = ManifestEntry("d1", sha("new pin"), model="m2", batch="b2")
    assert await store.import_manifest([repin, entry("d3")], later) == 1
    updated = await store.get_device("d1")
    assert updated.state is DeviceState.ACTIVE
    assert (updated.bootstrap_sha256, updated.model, updated.batch) == (sha("new pin"), "m2", "b2")
    assert (updated.created_at, updated.updated_at) == (now, later)
    assert (await store.get_device("d3")).state is DeviceState.REGISTERED


async def test_import_manifest_with_duplicate_entry_imports_nothing(
    store: Store, now: dt.datetime
) -> None:
    with pytest.raises(ValueError, match="more than once"):
        await store.import_manifest([entry("d1"), entry("d2"), entry("d1")], now)
    assert await store.list_devices(DeviceFilter()) == []


async def test_import_manifest_failing_mid_write_imports_nothing(
    store: Store, backend: Backend, now: dt.datetime
) -> None:
    await store.import_manifest([entry("d0", model="old")], now)
    await backend.sabotage_device_write("d-last")
    entries = [entry("d0", model="new"), entry("d1"), entry("d2"), entry("d-last")]
    with pytest.raises(StoreUnavailable) as caught:
        await store.import_manifest(entries, now + DAY)
    assert caught.value.__cause__ is not None
    assert (await store.get_device("d0")).model == "old"
    for device_id in ("d1", "d2"):
        with pytest.raises(DeviceNotFound):
            await store.get_device(device_id)


async def test_get_missing_device(store: Store) -> None:
    with pytest.raises(DeviceNotFound):
        await store.get_device("nope")


async def test_add_pending_device_once(store: Store, now: dt.datetime) -> None:
    device = Device("p1", DeviceState.PENDING, now, now, model="x", state_reason="not in manifest")
    assert await store.add_pending_device(device) == device
    assert await store.get_device("p1") == device
    with pytest.raises(StoreConflict):
        await store.add_pending_device(dataclasses.replace(device, model="other"))
    assert await store.get_device("p1") == device


async def test_set_device_state_compare_and_set(store: Store, now: dt.datetime) -> None:
    await store.add_pending_device(Device("p1", DeviceState.PENDING, now, now))
    later = now + DAY
    approved = await store.set_device_state(
        "p1", DeviceState.REGISTERED, expected={DeviceState.PENDING}, now=later, reason="ok by bob"
    )
    assert (approved.state, approved.updated_at, approved.state_reason) == (
        DeviceState.REGISTERED,
        later,
        "ok by bob",
    )
    assert await store.get_device("p1") == approved

    with pytest.raises(StoreConflict):
        await store.set_device_state(
            "p1", DeviceState.SUSPENDED, expected={DeviceState.ACTIVE}, now=later + DAY
        )
    assert await store.get_device("p1") == approved
    with pytest.raises(DeviceNotFound):
        await store.set_device_state(
            "nope", DeviceState.SUSPENDED, expected={DeviceState.ACTIVE}, now=later
        )
    with pytest.raises(ValueError, match="revoke_device"):
        await store.set_device_state(
            "p1", DeviceState.REVOKED, expected={DeviceState.REGISTERED}, now=later
        )


async def test_list_devices_filters_and_pages(store: Store, now: dt.datetime) -> None:
    await store.import_manifest(
        [
            entry("a", model="m1", batch="b1"),
            entry("b", model="m2", batch="b1"),
            entry("c", model="m1", batch="b2"),
            entry("d", model="m1", batch="b1"),
            entry("e", model="m2", batch="b2"),
        ],
        now,
    )
    await store.add_pending_device(Device("f", DeviceState.PENDING, now, now))

    assert ids(await store.list_devices(DeviceFilter())) == ["a", "b", "c", "d", "e", "f"]
    assert ids(await store.list_devices(DeviceFilter(batch="b1"))) == ["a", "b", "d"]
    assert ids(await store.list_devices(DeviceFilter(model="m1", batch="b1"))) == ["a", "d"]
    assert ids(await store.list_devices(DeviceFilter(state=DeviceState.PENDING))) == ["f"]
    assert ids(await store.list_devices(DeviceFilter(state=DeviceState.ACTIVE))) == []

    pages: list[list[str]] = []
    after: str | None = None
    while page := ids(await store.list_devices(DeviceFilter(model="m1"), after=after, limit=2)):
        pages.append(page)
        after = page[-1]
    assert pages == [["a", "c"], ["d"]]
    assert ids(await store.list_devices(DeviceFilter(), after="b", limit=3)) == ["c", "d", "e"]


async def certified_fleet(store: Store, now: dt.datetime) -> None:
    """Devices whose certificates the certificate filters tell apart (see the test)."""
    await store.import_manifest([entry(d) for d in "abcdefg"], now)

    async def issue(device_id: str, serial: int, issued: dt.datetime, days: int) -> None:
        await store.record_certificate(
            certificate(serial, device_id, issued, days=days),
            expected={DeviceState.REGISTERED, DeviceState.ACTIVE},
            now=issued,
        )

    await issue("a", 0xA1, now - 10 * DAY, 30)  # good, expires now + 20
    await issue("a", 0xA2, now, 30)  # good, newest, expires now + 30
    await issue("b", 0xB1, now - 10 * DAY, 30)
    await store.revoke_certificate(0xB1, RevocationReason.SUPERSEDED, now)
    await issue("b", 0xB2, now, 5)  # the only good one: newest, expires now + 5
    # c: registered, no certificate
    await issue("d", 0xD1, now - 10 * DAY, 12)
    await store.revoke_device("d", RevocationReason.UNSPECIFIED, now)  # nothing good left
    await issue("e", 0xE1, now - 20 * DAY, 30)  # expires now + 10, but renewed:
    await issue("e", 0xE2, now - 5 * DAY, 40)  # newest, expires now + 35
    # f: two issued at the same instant; the higher serial (0x10, not "9") is the newest.
    await issue("f", 0x9, now, 50)
    await issue("f", 0x10, now, 5)
    await issue("g", 0x61, now - 2 * DAY, 30)  # issued 2 days ago, expires now + 28
    await store.set_device_state("g", DeviceState.SUSPENDED, expected={DeviceState.ACTIVE}, now=now)


async def good_certificates(store: Store, devices: list[Device]) -> int:
    good = 0
    for device in devices:
        certs = await store.list_certificates(device.device_id)
        good += sum(c.status is CertificateStatus.GOOD for c in certs)
    return good


async def test_certificate_filters_page_and_agree_with_blast_radius(
    store: Store, now: dt.datetime
) -> None:
    await certified_fleet(store, now)

    def days(n: int) -> dt.datetime:
        return now + n * DAY

    cases = [
        (DeviceFilter(), "abcdefg"),
        (DeviceFilter(issued_before=days(-1)), "aeg"),
        (DeviceFilter(issued_before=days(-15)), "e"),
        (DeviceFilter(issued_before=now), "aeg"),  # strictly before
        (DeviceFilter(expiring_before=days(15)), "bf"),
        (DeviceFilter(expiring_before=days(36)), "abefg"),
        (DeviceFilter(expiring_before=days(35)), "abfg"),  # strictly before
        (DeviceFilter(issued_before=days(-1), expiring_before=days(36)), "aeg"),
        (DeviceFilter(state=DeviceState.ACTIVE, issued_before=days(-1)), "ae"),
        (DeviceFilter(state=DeviceState.REVOKED), "d"),
        (DeviceFilter(state=DeviceState.REVOKED, issued_before=days(1)), ""),
        (DeviceFilter(batch="b1", expiring_before=days(15)), "bf"),
        (DeviceFilter(batch="nope", expiring_before=days(100)), ""),
    ]
    for device_filter, expected in cases:
        listed = await store.list_devices(device_filter, limit=1000)
        assert "".join(ids(listed)) == expected, device_filter

        paged: list[str] = []
        after: str | None = None
        while page := ids(await store.list_devices(device_filter, after=after, limit=2)):
            paged += page
            after = page[-1]
        assert "".join(paged) == expected, device_filter

        assert await store.count_blast_radius(device_filter) == (
            len(listed),
            await good_certificates(store, listed),
        ), device_filter


async def test_blast_radius_counts(store: Store, now: dt.datetime) -> None:
    assert await store.count_blast_radius(DeviceFilter()) == (0, 0)
    await certified_fleet(store, now)
    # a: 2, b: 1, e: 2, f: 2, g: 1 good certificates; c none; d revoked.
    assert await store.count_blast_radius(DeviceFilter()) == (7, 8)
    assert await store.count_blast_radius(DeviceFilter(issued_before=now - DAY)) == (3, 5)
    assert await store.count_blast_radius(DeviceFilter(expiring_before=now + 15 * DAY)) == (2, 3)
    await store.revoke_device("f", RevocationReason.UNSPECIFIED, now)
    assert await store.count_blast_radius(DeviceFilter(expiring_before=now + 15 * DAY)) == (1, 1)


# -- certificates ------------------------------------------------------------------
async def test_record_certificate_first_enrollment(store: Store, now: dt.datetime) -> None:
    await store.import_manifest([entry("d1")], now)
    cert = certificate(0xABC, "d1", now)
    device = await store.record_certificate(
        cert, expected={DeviceState.REGISTERED}, now=now, bootstrap_sha256=sha("bootstrap:d1")
    )
    assert device.state is DeviceState.ACTIVE
    assert device.enrolled_bootstrap_sha256 == sha("bootstrap:d1")
    assert device.enrolled_at == now
    assert await store.get_device("d1") == device
    assert await store.get_certificate(0xABC) == cert

    # Renewal: no bootstrap, the first enrollment stays remembered.
    later = now + 20 * DAY
    renewed = await store.record_certificate(
        certificate(0xABD, "d1", later), expected={DeviceState.ACTIVE}, now=later
    )
    assert (renewed.enrolled_bootstrap_sha256, renewed.enrolled_at) == (sha("bootstrap:d1"), now)
    assert renewed.updated_at == later


async def test_record_certificate_in_wrong_state_records_nothing(
    store: Store, now: dt.datetime
) -> None:
    pending = await store.add_pending_device(Device("p1", DeviceState.PENDING, now, now))
    with pytest.raises(StoreConflict):
        await store.record_certificate(
            certificate(7, "p1", now), expected={DeviceState.REGISTERED}, now=now
        )
    with pytest.raises(CertificateNotFound):
        await store.get_certificate(7)
    assert await store.list_certificates("p1") == []
    assert await store.list_expiring(now + 365 * DAY) == []
    assert await store.get_device("p1") == pending
    with pytest.raises(DeviceNotFound):
        await store.record_certificate(
            certificate(8, "ghost", now), expected={DeviceState.REGISTERED}, now=now
        )


async def test_record_certificate_serial_reuse(store: Store, now: dt.datetime) -> None:
    cert = certificate(0x42, "d1", now)
    await store.import_manifest([entry("d1")], now)
    first = await store.record_certificate(cert, expected={DeviceState.REGISTERED}, now=now)
    # The same record again (a replayed call) is not a second enrollment.
    again = await store.record_certificate(cert, expected={DeviceState.REGISTERED}, now=now)
    assert again == first
    with pytest.raises(StoreConflict):
        await store.record_certificate(
            dataclasses.replace(cert, pem="another"), expected={DeviceState.ACTIVE}, now=now
        )
    assert await store.list_certificates("d1") == [cert]


async def test_record_certificate_with_audit_is_one_change(store: Store, now: dt.datetime) -> None:
    await store.append_audit(audit_event(now, 1))
    await store.import_manifest([entry("d1")], now)
    cert = certificate(0x42, "d1", now)
    event = audit_event(now, 2, device_id="d1")
    device = await store.record_certificate(
        cert, expected={DeviceState.REGISTERED}, now=now, audit=event
    )
    assert device.state is DeviceState.ACTIVE
    (record,) = await store.audit_records(device_id="d1")
    assert (record.seq, record.event) == (2, event)
    assert await chain_of(store) == [("reason-1", None), ("reason-2", "d1")]

    # A replayed call returns the device and chains nothing a second time.
    again = await store.record_certificate(
        cert, expected={DeviceState.REGISTERED}, now=now, audit=event
    )
    assert again == device
    # Refused: neither the certificate nor its audit event is written.
    with pytest.raises(StoreConflict):
        await store.record_certificate(
            certificate(0x43, "d1", now),
            expected={DeviceState.REGISTERED},
            now=now,
            audit=audit_event(now, 3, device_id="d1"),
        )
    with pytest.raises(StoreConflict):
        await store.record_certificate(
            dataclasses.replace(cert, pem="another"),
            expected={DeviceState.ACTIVE},
            now=now,
            audit=audit_event(now, 4, device_id="d1"),
        )
    with pytest.raises(DeviceNotFound):
        await store.record_certificate(
            certificate(0x44, "ghost", now),
            expected={DeviceState.REGISTERED},
            now=now,
            audit=audit_event(now, 5, device_id="ghost"),
        )
    assert await store.list_certificates("d1") == [cert]
    assert await chain_of(store) == [("reason-1", None), ("reason-2", "d1")]

    # Renewal, audited, after a record appended on its own.
    await store.append_audit(audit_event(now, 6))
    await store.record_certificate(
        certificate(0x45, "d1", now + DAY),
        expected={DeviceState.ACTIVE},
        now=now + DAY,
        audit=audit_event(now, 7, device_id="d1"),
    )
    assert await chain_of(store) == [
        ("reason-1", None),
        ("reason-2", "d1"),
        ("reason-6", None),
        ("reason-7", "d1"),
    ]
    assert [r.seq for r in await store.audit_records(device_id="d1")] == [2, 4]


async def test_device_changes_with_audit(store: Store, now: dt.datetime) -> None:
    pending = Device("p1", DeviceState.PENDING, now, now, state_reason="not in manifest")
    assert await store.add_pending_device(pending, audit=audit_event(now, 1, "p1")) == pending
    with pytest.raises(StoreConflict):
        await store.add_pending_device(pending, audit=audit_event(now, 2, "p1"))

    approved = await store.set_device_state(
        "p1",
        DeviceState.REGISTERED,
        expected={DeviceState.PENDING},
        now=now,
        audit=audit_event(now, 3, "p1"),
    )
    assert approved.state is DeviceState.REGISTERED
    with pytest.raises(StoreConflict):
        await store.set_device_state(
            "p1",
            DeviceState.SUSPENDED,
            expected={DeviceState.ACTIVE},
            now=now,
            audit=audit_event(now, 4, "p1"),
        )
    with pytest.raises(DeviceNotFound):
        await store.set_device_state(
            "ghost",
            DeviceState.SUSPENDED,
            expected={DeviceState.ACTIVE},
            now=now,
            audit=audit_event(now, 5, "ghost"),
        )
    assert await store.get_device("p1") == approved
    assert await chain_of(store) == [("reason-1", "p1"), ("reason-3", "p1")]


async def test_revocations_with_audit(store: Store, now: dt.datetime) -> None:
    await enrolled(store, "d1", 0x1, now)
    await store.record_certificate(
        certificate(0x2, "d1", now), expected={DeviceState.ACTIVE}, now=now
    )
    one = await store.revoke_certificate(
        0x1, RevocationReason.SUPERSEDED, now, audit=audit_event(now, 1, "d1")
    )
    assert one is not None
    # Already revoked or unknown: nothing changes, nothing is chained.
    assert (
        await store.revoke_certificate(
            0x1, RevocationReason.SUPERSEDED, now, audit=audit_event(now, 2, "d1")
        )
        is None
    )
    with pytest.raises(CertificateNotFound):
        await store.revoke_certificate(
            0x9, RevocationReason.SUPERSEDED, now, audit=audit_event(now, 3)
        )
    whole = await store.revoke_device(
        "d1", RevocationReason.KEY_COMPROMISE, now, audit=audit_event(now, 4, "d1")
    )
    assert whole is not None
    assert whole.serials == (0x2,)
    assert (
        await store.revoke_device(
            "d1", RevocationReason.KEY_COMPROMISE, now, audit=audit_event(now, 5, "d1")
        )
        is None
    )
    with pytest.raises(DeviceNotFound):
        await store.revoke_device(
            "ghost", RevocationReason.KEY_COMPROMISE, now, audit=audit_event(now, 6)
        )
    assert await store.feed_since(0) == [one, whole]
    assert await chain_of(store) == [("reason-1", "d1"), ("reason-4", "d1")]


async def test_audited_changes_racing_appends_form_one_chain(
    store: Store, backend: Backend, now: dt.datetime
) -> None:
    """Audited changes and plain appends from two instances: every change lands
    exactly once with its own record, and the chain stays whole."""
    count = 12
    await store.import_manifest([entry(f"d{n}") for n in range(count)], now)
    other = await backend.open()

    async def change(n: int) -> object:
        target = store if n % 2 else other
        device_id = f"d{n}"
        match n % 4:
            case 0:
                return await target.record_certificate(
                    certificate(100 + n, device_id, now),
                    expected={DeviceState.REGISTERED},
                    now=now,
                    audit=audit_event(now, n, device_id),
                )
            case 1:
                return await target.set_device_state(
                    device_id,
                    DeviceState.SUSPENDED,
                    expected={DeviceState.REGISTERED},
                    now=now,
                    audit=audit_event(now, n, device_id),
                )
            case 2:
                return await target.revoke_device(
                    device_id,
                    RevocationReason.UNSPECIFIED,
                    now,
                    audit=audit_event(now, n, device_id),
                )
            case _:
                return await target.append_audit(audit_event(now, n))

    try:
        await asyncio.gather(*(change(n) for n in range(count)))
    finally:
        await other.close()
    chain = await chain_of(store)
    assert sorted(reason for reason, _ in chain) == sorted(f"reason-{n}" for n in range(count))
    for n in range(0, count, 4):
        assert len(await store.list_certificates(f"d{n}")) == 1


async def test_list_certificates_newest_first(store: Store, now: dt.datetime) -> None:
    await enrolled(store, "d1", 0x10, now)
    for n, serial in enumerate([0x11, 0xFFFF, 0x2], start=1):
        await store.record_certificate(
            certificate(serial, "d1", now + n * DAY), expected={DeviceState.ACTIVE}, now=now
        )
    await enrolled(store, "d2", 0x99, now)
    assert [c.serial for c in await store.list_certificates("d1")] == [0x2, 0xFFFF, 0x11, 0x10]
    assert await store.list_certificates("nobody") == []


async def test_list_expiring_good_soonest_first(store: Store, now: dt.datetime) -> None:
    await enrolled(store, "d1", 1, now)  # expires now + 30 days
    for serial, days in [(2, 10), (3, 20), (4, 5), (0x1000, 10)]:
        await store.record_certificate(
            certificate(serial, "d1", now, days=days), expected={DeviceState.ACTIVE}, now=now
        )
    await store.revoke_certificate(4, RevocationReason.SUPERSEDED, now)

    expiring = await store.list_expiring(now + 20 * DAY)
    assert [c.serial for c in expiring] == [2, 0x1000]  # strictly before; revoked left out
    assert [c.serial for c in await store.list_expiring(now + 31 * DAY)] == [2, 0x1000, 3, 1]
    assert len(await store.list_expiring(now + 31 * DAY, limit=3)) == 3
    assert all(c.status is CertificateStatus.GOOD for c in expiring)


async def test_revoke_certificate_once_with_feed_event(store: Store, now: dt.datetime) -> None:
    await enrolled(store, "d1", 0x5, now)
    later = now + DAY
    event = await store.revoke_certificate(0x5, RevocationReason.KEY_COMPROMISE, later)
    assert event is not None
    assert (event.seq, event.kind, event.device_id, event.serials, event.reason, event.at) == (
        1,
        RevocationKind.CERTIFICATE,
        "d1",
        (0x5,),
        RevocationReason.KEY_COMPROMISE,
        later,
    )
    revoked = await store.get_certificate(0x5)
    assert (revoked.status, revoked.revoked_at, revoked.revocation_reason) == (
        CertificateStatus.REVOKED,
        later,
        RevocationReason.KEY_COMPROMISE,
    )
    assert await store.revoke_certificate(0x5, RevocationReason.UNSPECIFIED, later + DAY) is None
    assert (await store.get_certificate(0x5)).revocation_reason is RevocationReason.KEY_COMPROMISE
    assert await store.feed_since(0) == [event]
    with pytest.raises(CertificateNotFound):
        await store.revoke_certificate(0x6, RevocationReason.UNSPECIFIED, later)
    # Revoking a certificate leaves the device alone.
    assert (await store.get_device("d1")).state is DeviceState.ACTIVE


async def test_revoke_device_revokes_every_good_certificate(store: Store, now: dt.datetime) -> None:
    await enrolled(store, "d1", 0x1, now)
    for serial in (0x2, 0x3):
        await store.record_certificate(
            certificate(serial, "d1", now), expected={DeviceState.ACTIVE}, now=now
        )
    await enrolled(store, "d2", 0x4, now)
    first = await store.revoke_certificate(0x2, RevocationReason.SUPERSEDED, now)
    assert first is not None

    later = now + DAY
    event = await store.revoke_device("d1", RevocationReason.PRIVILEGE_WITHDRAWN, later)
    assert event is not None
    assert (event.seq, event.kind, event.device_id, event.serials) == (
        2,
        RevocationKind.DEVICE,
        "d1",
        (0x1, 0x3),
    )
    device = await store.get_device("d1")
    assert (device.state, device.updated_at) == (DeviceState.REVOKED, later)
    certs = {c.serial: c for c in await store.list_certificates("d1")}
    assert all(c.status is CertificateStatus.REVOKED for c in certs.values())
    assert certs[0x2].revocation_reason is RevocationReason.SUPERSEDED  # not rewritten
    assert certs[0x3].revocation_reason is RevocationReason.PRIVILEGE_WITHDRAWN
    assert (await store.get_certificate(0x4)).status is CertificateStatus.GOOD

    assert await store.revoke_device("d1", RevocationReason.UNSPECIFIED, later) is None
    assert await store.feed_since(0) == [first, event]
    with pytest.raises(StoreConflict):
        await store.record_certificate(
            certificate(0x9, "d1", later),
            expected={DeviceState.ACTIVE, DeviceState.REGISTERED},
            now=later,
        )
    with pytest.raises(DeviceNotFound):
        await store.revoke_device("ghost", RevocationReason.UNSPECIFIED, later)

    # A device with no certificate is revoked with an empty event.
    await store.import_manifest([entry("d3")], now)
    empty = await store.revoke_device("d3", RevocationReason.UNSPECIFIED, later)
    assert empty is not None
    assert (empty.seq, empty.serials) == (3, ())


async def test_list_revoked_by_serial(store: Store, now: dt.datetime) -> None:
    await enrolled(store, "d1", 0xFF, now)
    for serial in (0x1000, 0x2, 0x30):
        await store.record_certificate(
            certificate(serial, "d1", now), expected={DeviceState.ACTIVE}, now=now
        )
    for serial in (0x1000, 0xFF, 0x2):
        await store.revoke_certificate(serial, RevocationReason.UNSPECIFIED, now)
    assert [c.serial for c in await store.list_revoked()] == [0x2, 0xFF, 0x1000]


async def test_large_serial_round_trips(store: Store, now: dt.datetime) -> None:
    serial = (1 << 158) | 0x1234  # 159 bits: beyond JSON numbers and Lua doubles
    await enrolled(store, "d1", serial, now)
    assert (await store.get_certificate(serial)).serial == serial
    event = await store.revoke_device("d1", RevocationReason.UNSPECIFIED, now)
    assert event is not None
    assert event.serials == (serial,)
    assert (await store.revocation_snapshot()).serials == {serial}


# -- tokens ------------------------------------------------------------------------
async def test_enrollment_token_used_once(store: Store, now: dt.datetime) -> None:
    token = EnrollmentToken("d1", sha("t1"), now, now + DAY)
    await store.put_enrollment_token(token)
    await store.put_enrollment_token(dataclasses.replace(token, token_sha256=sha("t2")))
    with pytest.raises(TokenInvalid):
        await store.consume_enrollment_token("d1", sha("t1"), now)  # replaced
    with pytest.raises(TokenInvalid):
        await store.consume_enrollment_token("d1", sha("wrong"), now)
    await store.consume_enrollment_token("d1", sha("t2"), now)  # a wrong guess did not burn it
    with pytest.raises(TokenInvalid):
        await store.consume_enrollment_token("d1", sha("t2"), now)
    with pytest.raises(TokenInvalid):
        await store.consume_enrollment_token("nobody", sha("t2"), now)


async def test_expired_enrollment_token_is_refused(store: Store, now: dt.datetime) -> None:
    await store.put_enrollment_token(EnrollmentToken("d1", sha("t"), now - DAY, now))
    with pytest.raises(TokenInvalid):
        await store.consume_enrollment_token("d1", sha("t"), now)  # expires_at is exclusive
    await store.put_enrollment_token(EnrollmentToken("d2", sha("t"), now - DAY, now + DAY))
    await store.consume_enrollment_token("d2", sha("t"), now + DAY - dt.timedelta(microseconds=1))


# -- admin credentials ---------------------------------------------------------------
def test_admin_roles_are_ordered() -> None:
    assert AdminRole.ADMIN.allows(AdminRole.OPERATOR)
    assert AdminRole.ADMIN.allows(AdminRole.VIEWER)
    assert AdminRole.OPERATOR.allows(AdminRole.OPERATOR)
    assert AdminRole.OPERATOR.allows(AdminRole.VIEWER)
    assert not AdminRole.OPERATOR.allows(AdminRole.ADMIN)
    assert not AdminRole.VIEWER.allows(AdminRole.OPERATOR)
    assert all(role.allows(role) for role in AdminRole)


async def test_admin_credentials_put_find_list_disable(store: Store, now: dt.datetime) -> None:
    bob_token = AdminCredential("bob", AdminRole.VIEWER, "token", sha("bob-t"), now)
    bob_cert = AdminCredential("bob", AdminRole.ADMIN, "certificate", sha("bob-c"), now - DAY)
    alice = AdminCredential("alice", AdminRole.OPERATOR, "certificate", sha("alice"), now)
    for cred in (bob_token, alice, bob_cert):
        await store.put_admin_credential(cred)
    assert await store.find_admin_credential(sha("bob-c")) == bob_cert
    assert await store.list_admin_credentials() == [alice, bob_cert, bob_token]

    with pytest.raises(StoreConflict):
        await store.put_admin_credential(dataclasses.replace(alice, role=AdminRole.ADMIN))
    assert await store.find_admin_credential(sha("alice")) == alice

    await store.disable_admin_credential(sha("alice"))
    await store.disable_admin_credential(sha("alice"))  # idempotent
    disabled = dataclasses.replace(alice, disabled=True)
    assert await store.find_admin_credential(sha("alice")) == disabled
    assert await store.list_admin_credentials() == [disabled, bob_cert, bob_token]

    with pytest.raises(AdminNotFound):
        await store.find_admin_credential(sha("nobody"))
    with pytest.raises(AdminNotFound):
        await store.disable_admin_credential(sha("nobody"))
    assert isinstance(AdminNotFound("x"), NotFound)
    with pytest.raises(ValueError, match="kind"):
        await store.put_admin_credential(dataclasses.replace(alice, sha256=sha("x"), kind="pw"))
    with pytest.raises(ValueError, match="sha256"):
        await store.put_admin_credential(dataclasses.replace(alice, sha256="ABC"))


# -- cursors -----------------------------------------------------------------------
async def test_cursors(store: Store) -> None:
    assert await store.get_cursor("webhook") == 0
    await store.set_cursor("webhook", 42)
    await store.set_cursor("other", -7)
    assert (await store.get_cursor("webhook"), await store.get_cursor("other")) == (42, -7)
    await store.set_cursor("webhook", 2**63 - 1)
    assert await store.get_cursor("webhook") == 2**63 - 1
    with pytest.raises(ValueError, match="64-bit"):
        await store.set_cursor("webhook", 2**63)
    assert await store.get_cursor("webhook") == 2**63 - 1


# -- audit -------------------------------------------------------------------------
async def test_audit_chain_appends_and_verifies(store: Store, now: dt.datetime) -> None:
    appended = [
        await store.append_audit(audit_event(now, n, device_id="d1" if n % 2 else None))
        for n in range(1, 6)
    ]
    assert [r.seq for r in appended] == [1, 2, 3, 4, 5]
    records = await store.audit_records()
    assert records == appended
    assert verify_chain(records) == []
    assert [r.seq for r in await store.audit_records(device_id="d1")] == [1, 3, 5]
    assert [r.seq for r in await store.audit_records(device_id="d1", after_seq=1, limit=1)] == [3]
    assert [r.seq for r in await store.audit_records(after_seq=2, limit=2)] == [3, 4]
    assert await store.audit_records(device_id="nobody") == []


async def test_concurrent_audit_appends_form_one_chain(
    backend: Backend, store: Store, now: dt.datetime
) -> None:
    other = await backend.open()
    try:
        await asyncio.gather(
            *((store if n % 2 else other).append_audit(audit_event(now, n)) for n in range(20))
        )
    finally:
        await other.close()
    records = await store.audit_records()
    assert [r.seq for r in records] == list(range(1, 21))
    assert verify_chain(records) == []


@pytest.mark.parametrize(
    ("tamper", "first_bad_seq", "problem"),
    [("edit", 3, "edited"), ("delete", 4, "inserted_or_deleted"), ("insert", 4, "edited")],
)
async def test_audit_tampering_is_detected(
    store: Store, backend: Backend, now: dt.datetime, tamper: str, first_bad_seq: int, problem: str
) -> None:
    for n in range(1, 6):
        await store.append_audit(audit_event(now, n))
    records = await store.audit_records()
    if tamper == "edit":
        await backend.edit_audit(3, "nothing to see")
    elif tamper == "delete":
        await backend.delete_audit(3)
    else:
        # A forger who knows the algorithm chains a record correctly after seq 2;
        # the record it displaced can no longer match.
        forged = chain_next(records[1], audit_event(now, 99))
        await backend.insert_audit(forged)

    problems = verify_chain(await store.audit_records())
    assert problems, "tampering went unnoticed"
    assert problems[0].seq == first_bad_seq
    assert problem in {p.problem for p in problems if p.seq == first_bad_seq}


# -- revocation feed ---------------------------------------------------------------
async def test_feed_and_snapshot_agree(store: Store, now: dt.datetime) -> None:
    assert await store.feed_head() == 0
    assert await store.feed_since(0) == []
    empty = await store.revocation_snapshot()
    assert (empty.seq, empty.serials, empty.device_ids) == (0, frozenset(), frozenset())

    await enrolled(store, "d1", 0x1, now)
    await enrolled(store, "d2", 0x2, now)
    await store.record_certificate(
        certificate(0x3, "d2", now), expected={DeviceState.ACTIVE}, now=now
    )
    e1 = await store.revoke_certificate(0x3, RevocationReason.KEY_COMPROMISE, now)
    e2 = await store.revoke_device("d1", RevocationReason.CESSATION_OF_OPERATION, now)
    assert await store.feed_head() == 2
    assert await store.feed_since(0) == [e1, e2]
    assert await store.feed_since(1) == [e2]
    assert await store.feed_since(0, limit=1) == [e1]
    assert await store.feed_since(2) == []

    snapshot = await store.revocation_snapshot()
    assert (snapshot.seq, snapshot.serials, snapshot.device_ids) == (
        2,
        frozenset({0x1, 0x3}),
        frozenset({"d1"}),
    )
    assert snapshot.serials == {c.serial for c in await store.list_revoked()}


async def test_follow_feed_backlog_then_live_from_another_instance(
    store: Store, backend: Backend, now: dt.datetime
) -> None:
    for n in range(1, 5):
        await enrolled(store, f"d{n}", n, now)
    backlog = [await store.revoke_certificate(n, RevocationReason.UNSPECIFIED, now) for n in (1, 2)]

    writer = await backend.open()
    received: list[int] = []
    try:
        async with asyncio.timeout(10):
            follower = store.follow_feed(0)
            assert [await anext(follower), await anext(follower)] == backlog
            # Live events written through another connection.
            await writer.revoke_certificate(3, RevocationReason.UNSPECIFIED, now)
            await writer.revoke_device("d4", RevocationReason.UNSPECIFIED, now)
            received = [(await anext(follower)).seq, (await anext(follower)).seq]
            # From the middle of the feed: only what follows.
            late = store.follow_feed(3)
            assert (await anext(late)).seq == 4
            await aclose(late)
            await aclose(follower)
    finally:
        await writer.close()
    assert received == [3, 4]


async def test_follow_feed_delivers_each_event_once_under_load(
    store: Store, backend: Backend, now: dt.datetime
) -> None:
    count = 30
    await store.import_manifest([entry(f"d{n}") for n in range(count)], now)
    writer = await backend.open()
    seen: list[int] = []

    async def follow() -> None:
        async for event in store.follow_feed(0):
            seen.append(event.seq)
            if event.seq == count:
                return

    try:
        async with asyncio.timeout(15):
            task = asyncio.create_task(follow())
            await asyncio.gather(
                *(
                    (writer if n % 2 else store).revoke_device(
                        f"d{n}", RevocationReason.UNSPECIFIED, now
                    )
                    for n in range(count)
                )
            )
            await task
    finally:
        await writer.close()
    assert seen == list(range(1, count + 1))


# -- races -------------------------------------------------------------------------
@pytest.mark.parametrize("audited", [False, True])
@pytest.mark.parametrize("instances", [1, 2])
async def test_racing_first_enrollments_one_wins(
    store: Store, backend: Backend, now: dt.datetime, instances: int, audited: bool
) -> None:
    await store.import_manifest([entry("d1")], now)
    stores = [store] + [await backend.open() for _ in range(instances - 1)]
    try:
        results = await asyncio.gather(
            *(
                stores[n % instances].record_certificate(
                    certificate(1000 + n, "d1", now),
                    expected={DeviceState.REGISTERED},
                    now=now,
                    bootstrap_sha256=sha("bootstrap:d1"),
                    audit=audit_event(now, n, "d1") if audited else None,
                )
                for n in range(20)
            ),
            return_exceptions=True,
        )
    finally:
        for extra in stores[1:]:
            await extra.close()
    winners = [r for r in results if isinstance(r, Device)]
    conflicts = [r for r in results if isinstance(r, StoreConflict)]
    assert (len(winners), len(conflicts)) == (1, 19), results
    (cert,) = await store.list_certificates("d1")
    assert (await store.get_device("d1")).state is DeviceState.ACTIVE
    # The winner's audit record, and no other.
    assert await chain_of(store) == ([(f"reason-{cert.serial - 1000}", "d1")] if audited else [])


async def test_racing_token_consumers_one_wins(
    store: Store, backend: Backend, now: dt.datetime
) -> None:
    await store.put_enrollment_token(EnrollmentToken("d1", sha("t"), now, now + DAY))
    other = await backend.open()
    try:
        results = await asyncio.gather(
            *(
                (store if n % 2 else other).consume_enrollment_token("d1", sha("t"), now)
                for n in range(50)
            ),
            return_exceptions=True,
        )
    finally:
        await other.close()
    assert results.count(None) == 1
    assert sum(isinstance(r, TokenInvalid) for r in results) == 49
