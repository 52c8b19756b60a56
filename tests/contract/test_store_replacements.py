"""The Store contract for replacement requests and superseded certificates (both backends)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from fleet.kernel.errors import DeviceNotFound, StoreConflict
from fleet.records import (
    CertificateStatus,
    Device,
    DeviceState,
    ReplacementRequest,
    ReplacementStatus,
    RevocationKind,
    RevocationReason,
)
from fleet.store.protocol import Store
from tests.contract.conftest import Backend
from tests.contract.test_store_contract import (
    audit_event,
    certificate,
    chain_of,
    enrolled,
    sha,
)

MINUTE = dt.timedelta(minutes=1)
BOOT = sha("bootstrap:d1")


async def attempt(
    store: Store, now: dt.datetime, key: str = "k1", *, n: int | None = None, source: str = "::1"
) -> ReplacementRequest:
    return await store.note_replacement_attempt(
        "d1",
        bootstrap_sha256=BOOT,
        key_sha256=sha(key),
        source=source,
        now=now,
        audit=None if n is None else audit_event(now, n, "d1"),
    )


async def test_a_replay_opens_one_pending_request_and_counts_the_next(
    store: Store, now: dt.datetime
) -> None:
    await enrolled(store, "d1", 1, now)
    assert await store.get_replacement_request("d1") is None
    first = await attempt(store, now, n=1, source="192.0.2.1")
    assert first == ReplacementRequest(
        "d1", BOOT, sha("k1"), now, now, attempts=1, keys_seen=1, source="192.0.2.1"
    )
    await attempt(store, now + MINUTE, n=2)
    third = await attempt(store, now + 2 * MINUTE, "k2", n=3, source="192.0.2.9")
    assert (third.attempts, third.keys_seen, third.key_sha256) == (3, 2, sha("k2"))
    assert (third.first_seen, third.last_seen, third.source) == (now, now + 2 * MINUTE, "192.0.2.9")
    assert await store.get_replacement_request("d1") == third
    # The device is untouched, and each attempt was audited in the same change.
    device = await store.get_device("d1")
    assert (device.state, device.updated_at) == (DeviceState.ACTIVE, now)
    assert await chain_of(store) == [("reason-1", "d1"), ("reason-2", "d1"), ("reason-3", "d1")]


async def test_a_request_needs_an_active_device(store: Store, now: dt.datetime) -> None:
    with pytest.raises(DeviceNotFound):
        await attempt(store, now)
    await enrolled(store, "d1", 1, now)
    await store.set_device_state(
        "d1", DeviceState.SUSPENDED, expected={DeviceState.ACTIVE}, now=now
    )
    with pytest.raises(StoreConflict):
        await attempt(store, now, n=1)
    assert await store.get_replacement_request("d1") is None
    assert await chain_of(store) == []  # nothing audited for a change not made


@pytest.mark.parametrize("instances", [1, 2])
async def test_racing_replays_make_one_request(
    store: Store, backend: Backend, now: dt.datetime, instances: int
) -> None:
    await enrolled(store, "d1", 1, now)
    stores = [store] + [await backend.open() for _ in range(instances - 1)]
    try:
        results = await asyncio.gather(
            *(
                attempt(stores[n % instances], now + n * MINUTE, f"k{n % 2}", n=n)
                for n in range(12)
            ),
            return_exceptions=True,
        )
    finally:
        for extra in stores[1:]:
            await extra.close()
    assert all(isinstance(r, ReplacementRequest) for r in results), results
    request = await store.get_replacement_request("d1")
    assert request is not None
    assert request.attempts == 12
    assert sorted(r.attempts for r in results if isinstance(r, ReplacementRequest)) == list(
        range(1, 13)
    )
    assert len(await chain_of(store)) == 12


async def test_approving_supersedes_every_good_certificate_at_once(
    store: Store, now: dt.datetime
) -> None:
    await enrolled(store, "d1", 1, now)
    await store.record_certificate(
        certificate(2, "d1", now), expected={DeviceState.ACTIVE}, now=now
    )
    await attempt(store, now)
    head = await store.feed_head()
    request, event = await store.decide_replacement_request(
        "d1",
        ReplacementStatus.APPROVED,
        now=now + MINUTE,
        actor="admin:alice",
        revoke=RevocationReason.SUPERSEDED,
        audit=audit_event(now, 7, "d1"),
    )
    assert (request.status, request.decided_at, request.decided_by) == (
        ReplacementStatus.APPROVED,
        now + MINUTE,
        "admin:alice",
    )
    assert event is not None
    assert (event.seq, event.kind, event.serials, event.reason) == (
        head + 1,
        RevocationKind.CERTIFICATE,
        (1, 2),
        RevocationReason.SUPERSEDED,
    )
    for cert in await store.list_certificates("d1"):
        assert (cert.status, cert.revocation_reason) == (
            CertificateStatus.REVOKED,
            RevocationReason.SUPERSEDED,
        )
    assert (await store.get_device("d1")).state is DeviceState.ACTIVE
    assert await store.feed_since(head) == [event]
    assert await chain_of(store) == [("reason-7", "d1")]
    # Answered once: a second answer conflicts and changes nothing.
    with pytest.raises(StoreConflict):
        await store.decide_replacement_request(
            "d1", ReplacementStatus.REJECTED, now=now, actor="admin:bob", audit=audit_event(now, 8)
        )
    with pytest.raises(StoreConflict):  # an approved request is not reopened by a replay
        await attempt(store, now)
    assert await chain_of(store) == [("reason-7", "d1")]


async def test_rejecting_with_and_without_revocation(store: Store, now: dt.datetime) -> None:
    await enrolled(store, "d1", 1, now)
    await attempt(store, now)
    request, event = await store.decide_replacement_request(
        "d1", ReplacementStatus.REJECTED, now=now, actor="admin:alice"
    )
    assert (request.status, event) == (ReplacementStatus.REJECTED, None)
    assert (await store.get_certificate(1)).status is CertificateStatus.GOOD

    await enrolled(store, "d2", 2, now)
    await store.note_replacement_attempt(
        "d2", bootstrap_sha256=BOOT, key_sha256=sha("x"), source="", now=now
    )
    _, event = await store.decide_replacement_request(
        "d2",
        ReplacementStatus.REJECTED,
        now=now,
        actor="admin:alice",
        revoke=RevocationReason.KEY_COMPROMISE,
    )
    assert event is not None
    assert event.serials == (2,)
    assert (await store.get_certificate(2)).revocation_reason is RevocationReason.KEY_COMPROMISE
    assert 2 in (await store.revocation_snapshot()).serials
    assert (await store.get_device("d2")).state is DeviceState.ACTIVE


async def test_decide_without_a_pending_request(store: Store, now: dt.datetime) -> None:
    with pytest.raises(DeviceNotFound):
        await store.decide_replacement_request(
            "nobody", ReplacementStatus.APPROVED, now=now, actor="a"
        )
    await enrolled(store, "d1", 1, now)
    with pytest.raises(StoreConflict):
        await store.decide_replacement_request(
            "d1", ReplacementStatus.APPROVED, now=now, actor="a", audit=audit_event(now, 1)
        )
    assert await chain_of(store) == []


async def test_an_approved_key_is_issued_once_and_the_approval_consumed(
    store: Store, now: dt.datetime
) -> None:
    await enrolled(store, "d1", 1, now)
    await attempt(store, now, "k1")
    # Not approved yet: recording for the key conflicts and writes nothing.
    with pytest.raises(StoreConflict):
        await store.record_certificate(
            certificate(2, "d1", now), expected={DeviceState.ACTIVE}, now=now,
            replacement_key=sha("k1"), audit=audit_event(now, 1, "d1"),
        )  # fmt: skip
    await store.decide_replacement_request(
        "d1", ReplacementStatus.APPROVED, now=now, actor="a", revoke=RevocationReason.SUPERSEDED
    )
    with pytest.raises(StoreConflict):  # another key than the approved one
        await store.record_certificate(
            certificate(2, "d1", now), expected={DeviceState.ACTIVE}, now=now,
            replacement_key=sha("k2"),
        )  # fmt: skip
    later = now + MINUTE
    device = await store.record_certificate(
        certificate(2, "d1", later), expected={DeviceState.ACTIVE}, now=later,
        bootstrap_sha256=BOOT, replacement_key=sha("k1"), audit=audit_event(now, 2, "d1"),
    )  # fmt: skip
    assert (device.state, device.enrolled_at) == (DeviceState.ACTIVE, later)
    assert await store.get_replacement_request("d1") is None
    # A replayed call succeeds again without writing; a second issue needs a new approval.
    again = await store.record_certificate(
        certificate(2, "d1", later), expected={DeviceState.ACTIVE}, now=later,
        bootstrap_sha256=BOOT, replacement_key=sha("k1"), audit=audit_event(now, 3, "d1"),
    )  # fmt: skip
    assert again.state is DeviceState.ACTIVE
    with pytest.raises(StoreConflict):
        await store.record_certificate(
            certificate(3, "d1", later), expected={DeviceState.ACTIVE}, now=later,
            replacement_key=sha("k1"),
        )  # fmt: skip
    assert [c.serial for c in await store.list_certificates("d1")] == [2, 1]
    assert await chain_of(store) == [("reason-2", "d1")]


async def test_recording_supersedes_the_named_good_certificates(
    store: Store, now: dt.datetime
) -> None:
    await enrolled(store, "d1", 1, now)
    await enrolled(store, "d2", 9, now)
    await store.record_certificate(
        certificate(2, "d1", now), expected={DeviceState.ACTIVE}, now=now
    )
    await store.revoke_certificate(2, RevocationReason.KEY_COMPROMISE, now)
    head = await store.feed_head()
    # 2 is already revoked, 9 is another device's: only 1 is superseded.
    result = await store.record_certificate(
        certificate(3, "d1", now), expected={DeviceState.ACTIVE}, now=now, supersede=(1, 2, 9)
    )
    assert isinstance(result, Device)
    (event,) = await store.feed_since(head)
    assert (event.kind, event.serials, event.reason) == (
        RevocationKind.CERTIFICATE,
        (1,),
        RevocationReason.SUPERSEDED,
    )
    statuses = {c.serial: c.revocation_reason for c in await store.list_certificates("d1")}
    assert statuses == {
        3: None,
        2: RevocationReason.KEY_COMPROMISE,
        1: RevocationReason.SUPERSEDED,
    }
    assert (await store.get_certificate(9)).status is CertificateStatus.GOOD
    # Nothing left to supersede: no feed event.
    await store.record_certificate(
        certificate(4, "d1", now), expected={DeviceState.ACTIVE}, now=now, supersede=(1,)
    )
    assert await store.feed_head() == head + 1
    assert {c.serial for c in await store.list_expiring(now + 365 * dt.timedelta(days=1))} == {
        3,
        4,
        9,
    }


async def test_followers_see_superseded_certificates(store: Store, now: dt.datetime) -> None:
    await enrolled(store, "d1", 1, now)
    head = await store.feed_head()
    follower = store.follow_feed(head)
    pending = asyncio.ensure_future(anext(follower))
    try:
        await store.record_certificate(
            certificate(2, "d1", now), expected={DeviceState.ACTIVE}, now=now, supersede=(1,)
        )
        event = await asyncio.wait_for(pending, 5)
        assert event.serials == (1,)
    finally:
        pending.cancel()
        close = getattr(follower, "aclose", None)
        if close is not None:
            await close()


async def test_replacement_requests_are_listed_by_status_in_device_order(
    store: Store, now: dt.datetime
) -> None:
    for device_id in ("d3", "d1", "d2"):
        await enrolled(store, device_id, int(device_id[1:]), now)
        await store.note_replacement_attempt(
            device_id, bootstrap_sha256=BOOT, key_sha256=sha(device_id), source="", now=now
        )
    await store.decide_replacement_request(
        "d2", ReplacementStatus.REJECTED, now=now, actor="admin:a"
    )
    pending = await store.list_replacement_requests(ReplacementStatus.PENDING)
    assert [r.device_id for r in pending] == ["d1", "d3"]
    assert pending[0] == await store.get_replacement_request("d1")
    page = await store.list_replacement_requests(ReplacementStatus.PENDING, after="d1", limit=1)
    assert [r.device_id for r in page] == ["d3"]
    rejected = await store.list_replacement_requests(ReplacementStatus.REJECTED)
    assert [r.device_id for r in rejected] == ["d2"]


async def test_an_answer_bound_to_a_key_fails_when_a_replay_changed_it(
    store: Store, now: dt.datetime
) -> None:
    await enrolled(store, "d1", 1, now)
    await attempt(store, now)  # the admin is shown k1 ...
    await attempt(store, now + MINUTE, "k2")  # ... and a replay with k2 lands first
    with pytest.raises(StoreConflict, match="another key"):
        await store.decide_replacement_request(
            "d1", ReplacementStatus.APPROVED, now=now, actor="admin:a",
            revoke=RevocationReason.SUPERSEDED, key_sha256=sha("k1"),
        )  # fmt: skip
    # Nothing changed: still pending, the certificate still good.
    request = await store.get_replacement_request("d1")
    assert request is not None
    assert request.status is ReplacementStatus.PENDING
    assert [c.status for c in await store.list_certificates("d1")] == [CertificateStatus.GOOD]
    answered, _ = await store.decide_replacement_request(
        "d1", ReplacementStatus.APPROVED, now=now, actor="admin:a", key_sha256=sha("k2")
    )
    assert answered.status is ReplacementStatus.APPROVED
