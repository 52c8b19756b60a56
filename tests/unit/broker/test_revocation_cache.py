from __future__ import annotations

import asyncio
import datetime as dt
import stat
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest

from broker_plugins.revocation_cache import CacheSettings, RevocationCache
from broker_plugins.snapshot import RevocationState, read_snapshot_file
from fleet.kernel.errors import ConfigError, StoreUnavailable
from fleet.records import (
    RevocationEvent,
    RevocationKind,
    RevocationReason,
    RevocationSnapshot,
)

AT = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def event(seq: int, device: str, serial: int) -> RevocationEvent:
    return RevocationEvent(
        seq, RevocationKind.DEVICE, device, (serial,), RevocationReason.UNSPECIFIED, AT
    )


class FakeFeed:
    """A store's feed: events by sequence; ``follow_feed`` may drop events (gaps)."""

    def __init__(self) -> None:
        self.events: list[RevocationEvent] = []
        self.down = False
        self.drop: set[int] = set()
        self.appended = asyncio.Event()

    def append(self, device: str, serial: int) -> RevocationEvent:
        e = event(len(self.events) + 1, device, serial)
        self.events.append(e)
        self.appended.set()
        return e

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def revocation_snapshot(self) -> RevocationSnapshot:
        self._check()
        return RevocationSnapshot(
            len(self.events),
            frozenset(s for e in self.events for s in e.serials),
            frozenset(e.device_id for e in self.events),
        )

    async def feed_head(self) -> int:
        self._check()
        return len(self.events)

    async def feed_since(self, seq: int, *, limit: int = 1000) -> list[RevocationEvent]:
        self._check()
        return [e for e in self.events if e.seq > seq][:limit]

    async def follow_feed(self, after_seq: int) -> AsyncGenerator[RevocationEvent, None]:
        last = after_seq
        while True:
            self.appended.clear()
            for e in list(self.events):
                if e.seq > last:
                    last = e.seq
                    if e.seq not in self.drop:
                        yield e
            await self.appended.wait()


async def test_snapshot_then_events_then_gap_is_filled() -> None:
    feed = FakeFeed()
    feed.append("d1", 1)
    cache = RevocationCache(feed, CacheSettings(max_staleness=5, probe_interval=0.05))  # type: ignore[arg-type]
    seen: list[int] = []
    cache.on_revoked(lambda e: seen.append(e.seq))
    await cache.start()
    try:
        assert cache.is_revoked(1)
        assert cache.is_device_revoked("d1")
        assert cache.usable()
        feed.drop = {2}  # the notification of event 2 is lost
        feed.append("d2", 2)
        feed.append("d3", 3)
        assert await cache.wait_for_seq(3, 2)
        assert cache.is_revoked(2)
        assert cache.is_device_revoked("d3")
        assert seen == [2, 3]
    finally:
        await cache.close()


async def test_feed_reset_never_unrevokes() -> None:
    feed = FakeFeed()
    feed.append("d1", 1)
    feed.append("d2", 2)
    cache = RevocationCache(feed, CacheSettings(max_staleness=5, probe_interval=0.05))  # type: ignore[arg-type]
    await cache.start()
    try:
        feed.events = []  # a Redis without persistence restarted empty
        feed.append("d9", 9)
        for _ in range(100):
            if cache.is_revoked(9):
                break
            await asyncio.sleep(0.02)
        assert cache.is_revoked(9)
        assert cache.is_revoked(1)
        assert cache.is_device_revoked("d2")
    finally:
        await cache.close()


async def test_feed_reset_already_past_our_seq_is_detected() -> None:
    # The restarted store recorded more events than we had seen before we probed:
    # by sequence alone it looks ahead of us, and "events after 2" would skip 1 and 2.
    feed = FakeFeed()
    feed.append("d1", 1)
    feed.append("d2", 2)
    cache = RevocationCache(feed, CacheSettings(max_staleness=5, probe_interval=0.05))  # type: ignore[arg-type]
    await cache.start()
    try:
        await asyncio.sleep(0.15)  # a probe anchors event 2
        feed.events = []
        for device, serial in (("n1", 11), ("n2", 12), ("n3", 13)):
            feed.append(device, serial)
        for _ in range(100):
            if all(cache.is_revoked(s) for s in (11, 12, 13)):
                break
            await asyncio.sleep(0.02)
        assert all(cache.is_revoked(s) for s in (1, 2, 11, 12, 13))
        assert cache.is_device_revoked("n1")
    finally:
        await cache.close()


async def test_staleness_policy() -> None:
    feed = FakeFeed()
    clock = [100.0]
    closed = RevocationCache(
        feed,
        CacheSettings(max_staleness=1, probe_interval=0.02),
        monotonic=lambda: clock[0],  # type: ignore[arg-type]
    )
    opened = RevocationCache(
        feed,
        CacheSettings(max_staleness=1, fail_open=True, probe_interval=0.02),
        monotonic=lambda: clock[0],  # type: ignore[arg-type]
    )
    await closed.start()
    await opened.start()
    try:
        assert closed.usable()
        assert opened.usable()
        feed.down = True
        await asyncio.sleep(0.1)
        clock[0] += 1.5
        assert closed.staleness_seconds() >= 1.5
        assert not closed.usable()
        assert opened.usable()
        feed.down = False
        await asyncio.sleep(0.1)
        assert closed.usable()
    finally:
        await closed.close()
        await opened.close()


async def test_nothing_known_before_the_first_snapshot() -> None:
    feed = FakeFeed()
    feed.down = True
    cache = RevocationCache(feed, CacheSettings(max_staleness=1, fail_open=True))  # type: ignore[arg-type]
    await cache.start(initial_timeout=0.1)
    try:
        assert not cache.usable()
    finally:
        await cache.close()


# -- the snapshot file ----------------------------------------------------------------


async def wait_for(condition: Callable[[], bool], within: float = 2.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def file_settings(path: Path, **kwargs: Any) -> CacheSettings:
    return CacheSettings(max_staleness=5, probe_interval=0.05, snapshot_file=path, **kwargs)


async def test_revocations_reach_the_file_and_survive_an_emptied_store(tmp_path: Path) -> None:
    path = tmp_path / "state" / "revocations.snapshot"
    feed = FakeFeed()
    feed.append("d1", 1)
    cache = RevocationCache(feed, file_settings(path))  # type: ignore[arg-type]
    await cache.start()
    try:
        on_disk = read_snapshot_file(path)
        assert on_disk is not None
        assert on_disk.serials == {1}
        assert on_disk.devices == {"d1"}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        feed.append("d2", 2)
        assert await cache.wait_for_seq(2, 2)
        # Written without a clean stop, within the coalescing bound.
        assert await wait_for(lambda: not cache.snapshot_pending, 1.0)
        on_disk = read_snapshot_file(path)
        assert on_disk == RevocationState(2, {1, 2}, {"d1", "d2"})
    finally:
        # Not closed yet: what a crash leaves is what the next start reads.
        restarted = RevocationCache(FakeFeed(), file_settings(path))  # type: ignore[arg-type]
        await restarted.start()
        await cache.close()
    try:
        assert restarted.is_revoked(1)
        assert restarted.is_revoked(2)
        assert restarted.is_device_revoked("d1")
        assert restarted.is_device_revoked("d2")
        assert restarted.usable()  # the (empty) store answered
    finally:
        await restarted.close()


async def test_file_and_store_are_merged_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "revocations.snapshot"
    path.write_text(RevocationState(5, {0xA}, {"old"}).snapshot_text(0))
    feed = FakeFeed()
    feed.append("new", 0xB)
    cache = RevocationCache(feed, file_settings(path))  # type: ignore[arg-type]
    await cache.start()
    try:
        assert cache.is_revoked(0xA)
        assert cache.is_revoked(0xB)
        assert cache.is_device_revoked("old")
        assert cache.is_device_revoked("new")
        on_disk = read_snapshot_file(path)
        assert on_disk is not None
        assert on_disk.serials == {0xA, 0xB}
        assert on_disk.devices == {"old", "new"}
        assert on_disk.seq == 1  # the store's feed sequence, which the cache follows
    finally:
        await cache.close()


async def test_file_counts_as_knowledge_not_as_contact(tmp_path: Path) -> None:
    path = tmp_path / "revocations.snapshot"
    path.write_text(RevocationState(1, {7}, {"d7"}).snapshot_text(0))
    feed = FakeFeed()
    feed.down = True
    cache = RevocationCache(feed, file_settings(path, fail_open=True))  # type: ignore[arg-type]
    await cache.start(initial_timeout=0.1)
    try:
        assert cache.is_revoked(7)
        assert cache.is_device_revoked("d7")
        assert not cache.usable()
    finally:
        await cache.close()


async def test_damaged_or_unwritable_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "revocations.snapshot"
    path.write_text(RevocationState(1, {7}, {"d7"}).snapshot_text(0).removesuffix("end\n"))
    cache = RevocationCache(FakeFeed(), file_settings(path))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="incomplete"):
        await cache.start()
    await cache.close()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cache = RevocationCache(FakeFeed(), file_settings(blocker / "revocations.snapshot"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="snapshot file"):
        await cache.start()
    await cache.close()


async def test_a_burst_is_on_disk_within_the_coalescing_bound(tmp_path: Path) -> None:
    path = tmp_path / "revocations.snapshot"
    feed = FakeFeed()
    cache = RevocationCache(feed, file_settings(path, snapshot_coalesce=0.2))  # type: ignore[arg-type]
    await cache.start()
    try:
        for n in range(1, 201):
            feed.append(f"b{n}", n)
        assert await cache.wait_for_seq(200, 2)
        # Bound: one coalescing pause plus the writes around it (well under 1 s here).
        assert await wait_for(lambda: not cache.snapshot_pending, 1.0)
        state = read_snapshot_file(path)
        assert state is not None
        assert state.seq == 200
        assert len(state.serials) == 200
        assert len(state.devices) == 200
    finally:
        await cache.close()
