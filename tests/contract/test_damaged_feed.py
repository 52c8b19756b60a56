"""A revocation feed event the store cannot read (a row written by hand or by an
older version), on every backend: the store refuses it by name, and a broker's
revocation cache reads past it from a snapshot instead of stopping there while
it reports itself current (found from outside: one such row and every later
revocation was never enforced, with staleness ~0 s)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import pytest

from broker_plugins.revocation_cache import CacheSettings, RevocationCache
from fleet.kernel.errors import StoreRecordInvalid
from fleet.records import AdminCredential, AdminRole, ManifestEntry, RevocationReason
from fleet.store.protocol import Store
from tests.contract.conftest import Backend

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DEVICES = ("d1", "d2", "d3")


def _event(**changes: object) -> str:
    event: dict[str, object] = {
        "seq": 2,
        "kind": "device",
        "device_id": "d2",
        "serials": [],
        "reason": "unspecified",
        "at": "2026-06-01T00:00:00.000000Z",
    }
    event.update(changes)
    return json.dumps(event)


UNREADABLE = {
    "not_json": "garbage",
    "unknown_reason": _event(reason="bogus"),
    "missing_field": _event(kind=None),
    "serial_not_hex": _event(serials=["0xff"]),
    "other_sequence": _event(seq=7),
}


async def _fleet(store: Store) -> None:
    await store.import_manifest(
        [ManifestEntry(device_id=d, bootstrap_sha256=f"{i:064x}") for i, d in enumerate(DEVICES)],
        NOW,
    )
    await store.revoke_device("d1", RevocationReason.UNSPECIFIED, NOW)


async def _until(condition: object, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("text", UNREADABLE.values(), ids=UNREADABLE.keys())
async def test_the_store_refuses_an_unreadable_event_by_its_sequence(
    backend: Backend, store: Store, text: str
) -> None:
    await _fleet(store)
    await backend.revoke_unreadably("d2", text)
    await store.revoke_device("d3", RevocationReason.KEY_COMPROMISE, NOW)
    with pytest.raises(StoreRecordInvalid, match="sequence 2"):
        await store.feed_since(0)
    (after,) = await store.feed_since(2)  # what follows it still reads
    assert (after.seq, after.device_id) == (3, "d3")
    assert await store.feed_head() == 3


async def test_a_broker_reads_past_an_unreadable_event(backend: Backend, store: Store) -> None:
    await _fleet(store)
    broker_side = await backend.open()
    cache = RevocationCache(broker_side, CacheSettings(max_staleness=5, probe_interval=0.05))
    await cache.start()
    try:
        assert cache.seq == 1
        await backend.revoke_unreadably("d2", "garbage")
        await store.revoke_device("d3", RevocationReason.KEY_COMPROMISE, NOW)
        assert await _until(lambda: cache.is_device_revoked("d3"), 5), (
            "a revocation after an unreadable feed event never reached the broker"
        )
        assert cache.is_device_revoked("d2")  # from the snapshot: the device is revoked
        assert cache.seq == 3
        assert cache.usable()
    finally:
        await cache.close()
        await broker_side.close()


async def test_a_broker_that_cannot_rebuild_its_state_grows_stale(
    backend: Backend, store: Store
) -> None:
    await _fleet(store)
    broker_side = await backend.open()
    cache = RevocationCache(broker_side, CacheSettings(max_staleness=0.5, probe_interval=0.05))
    await cache.start()
    try:
        assert cache.usable()
        # Neither the feed nor the snapshot can be read: the broker must not count
        # the store's answering feed_head as being current.
        await backend.add_unreadable_revoked_serial("d2")  # read by snapshots only
        await backend.revoke_unreadably("d2", "garbage")
        assert await _until(lambda: not cache.usable(), 5), (
            "a broker that cannot apply the feed kept deciding on old data as current"
        )
    finally:
        await cache.close()
        await broker_side.close()


@pytest.mark.parametrize(
    ("field", "value"), [("state", "bogus"), ("created_at", "yesterday")], ids=["state", "time"]
)
async def test_a_device_edited_by_hand_is_refused_by_name(
    backend: Backend, store: Store, field: str, value: str
) -> None:
    await _fleet(store)
    await backend.edit_device("d2", field, value)
    with pytest.raises(StoreRecordInvalid, match="device 'd2'"):
        await store.get_device("d2")
    assert (await store.get_device("d3")).device_id == "d3"  # the others still read


async def test_an_admin_credential_edited_by_hand_is_refused_by_name(
    backend: Backend, store: Store
) -> None:
    for name, sha in (("ops", "e" * 64), ("bot", "f" * 64)):
        await store.put_admin_credential(AdminCredential(name, AdminRole.ADMIN, "token", sha, NOW))
    await backend.edit_admin_role("e" * 64, "root")
    with pytest.raises(StoreRecordInvalid, match="admin credential"):
        await store.find_admin_credential("e" * 64)
    assert (await store.find_admin_credential("f" * 64)).name == "bot"
