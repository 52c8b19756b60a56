"""The Store contract for what the console's Pending page and Overview read: devices by
state and replacement requests by status, kept true through every change (the Redis
backend keeps index sets for them, built once for a namespace that predates them)."""

from __future__ import annotations

import datetime as dt

from fleet.records import (
    Device,
    DeviceFilter,
    DeviceState,
    ReplacementStatus,
    RevocationReason,
)
from fleet.store.protocol import Store
from tests.contract.conftest import Backend
from tests.contract.test_store_contract import certificate, entry, ids, sha


async def expiring_agree(store: Store, now: dt.datetime) -> None:
    """The expiring count (an index in Redis) is what the listing says, at every bound."""
    for days in (-1, 0, 1, 5, 10, 20, 29, 30, 31, 60):
        before = now + dt.timedelta(days=days)
        listed = await store.list_devices(DeviceFilter(expiring_before=before), limit=1000)
        assert await store.count_expiring_devices(before) == len(listed), days


async def agree(store: Store, expected: dict[DeviceState, list[str]]) -> None:
    """Counts, listings and a page past the first all say ``expected``."""
    counts = await store.count_devices_by_state()
    assert counts == {s: len(expected.get(s, [])) for s in DeviceState}
    for state in DeviceState:
        listed = ids(await store.list_devices(DeviceFilter(state=state)))
        assert listed == sorted(expected.get(state, [])), state
    if len(expected.get(DeviceState.ACTIVE, [])) > 1:
        first = sorted(expected[DeviceState.ACTIVE])[0]
        later = await store.list_devices(DeviceFilter(state=DeviceState.ACTIVE), after=first)
        assert ids(later) == sorted(expected[DeviceState.ACTIVE])[1:]


async def populate(store: Store, now: dt.datetime) -> None:
    await store.import_manifest([entry(f"d{n}") for n in range(1, 6)], now)
    await store.add_pending_device(Device("p1", DeviceState.PENDING, now, now))
    await store.add_pending_device(Device("p2", DeviceState.PENDING, now, now))
    for serial, device_id in enumerate(["d1", "d2", "d3"], 1):
        await store.record_certificate(
            certificate(serial, device_id, now), expected={DeviceState.REGISTERED}, now=now,
            bootstrap_sha256=sha(f"bootstrap:{device_id}"),
        )  # fmt: skip
    await store.set_device_state(
        "d2", DeviceState.SUSPENDED, expected={DeviceState.ACTIVE}, now=now
    )
    await store.set_device_state(
        "p2", DeviceState.REJECTED, expected={DeviceState.PENDING}, now=now
    )
    await store.revoke_device("d3", RevocationReason.KEY_COMPROMISE, now)
    # d1 renews (a newer certificate expiring later), then loses that newer one: its
    # older good certificate is its newest good again. d4 holds two, the newer revoked.
    await store.record_certificate(
        certificate(11, "d1", now + dt.timedelta(hours=1), days=60),
        expected={DeviceState.ACTIVE}, now=now,
    )  # fmt: skip
    await expiring_agree(store, now)
    await store.revoke_certificate(11, RevocationReason.SUPERSEDED, now)
    await store.record_certificate(
        certificate(12, "d1", now + dt.timedelta(hours=2), days=5),
        expected={DeviceState.ACTIVE}, now=now, supersede=[1],
    )  # fmt: skip
    for device_id in ("d1",):
        await store.note_replacement_attempt(
            device_id, bootstrap_sha256=sha(f"bootstrap:{device_id}"), key_sha256=sha("k"),
            source="::1", now=now,
        )  # fmt: skip


EXPECTED = {
    DeviceState.REGISTERED: ["d4", "d5"],
    DeviceState.PENDING: ["p1"],
    DeviceState.ACTIVE: ["d1"],
    DeviceState.SUSPENDED: ["d2"],
    DeviceState.REJECTED: ["p2"],
    DeviceState.REVOKED: ["d3"],
}


async def test_devices_by_state_follow_every_change(store: Store, now: dt.datetime) -> None:
    await agree(store, {})
    await populate(store, now)
    await agree(store, EXPECTED)
    await expiring_agree(store, now)
    pending = await store.list_replacement_requests(ReplacementStatus.PENDING)
    assert [r.device_id for r in pending] == ["d1"]
    await store.decide_replacement_request(
        "d1", ReplacementStatus.REJECTED, now=now, actor="admin:a"
    )
    assert await store.list_replacement_requests(ReplacementStatus.PENDING) == []
    rejected = await store.list_replacement_requests(ReplacementStatus.REJECTED)
    assert [r.device_id for r in rejected] == ["d1"]
    assert await store.list_replacement_requests(ReplacementStatus.REJECTED, after="d1") == []


async def test_a_namespace_without_the_index_sets_gets_them(
    backend: Backend, now: dt.datetime
) -> None:
    store = await backend.open()
    try:
        await populate(store, now)
    finally:
        await store.close()
    if backend.name == "redis":
        from tests.contract.conftest import RedisBackend

        assert isinstance(backend, RedisBackend)
        async with backend.raw() as client:  # as a store of the previous version left it
            stale = [k async for k in client.scan_iter(match=f"{backend.tag}:devices:state:*")]
            stale += [k async for k in client.scan_iter(match=f"{backend.tag}:replacements:*")]
            stale += [f"{backend.tag}:devices:newest-expiry"]
            assert stale
            await client.delete(*stale, f"{backend.tag}:indexes")
    store = await backend.open()
    try:
        await agree(store, EXPECTED)
        await expiring_agree(store, now)
        pending = await store.list_replacement_requests(ReplacementStatus.PENDING)
        assert [r.device_id for r in pending] == ["d1"]
    finally:
        await store.close()
