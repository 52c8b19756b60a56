"""The SQLite store's threading model: what runs on the loop, what waits, what is durable.

Writes and short reads run on the event loop; only waiting (for the disk, for
another process's lock) happens elsewhere. These tests hold real SQLite locks
from a second connection and watch the event loop keep ticking.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import gc
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import fleet.store._sqlite_engine as sqlite_engine
from fleet.kernel.errors import StoreUnavailable
from fleet.records import AuditEvent, DeviceState, RevocationReason
from fleet.store._fsync import FileSyncer
from fleet.store.sqlite import SqliteStore
from tests.contract.test_store_contract import certificate, entry


def event(reason: str, *, pad: str = "") -> AuditEvent:
    detail = {"pad": pad} if pad else {}
    return AuditEvent(dt.datetime.now(dt.UTC), "system", "test", "allowed", reason, "d1", detail)


class _GatedSyncer(FileSyncer):
    """Real fdatasyncs, each begun only once ``gate()`` returns; counted when done."""

    def __init__(self, gate: Callable[[], Awaitable[object]]) -> None:
        super().__init__(asyncio.get_running_loop())
        self.gate = gate
        self.synced = 0

    def start(self, fd: int) -> asyncio.Future[None]:
        async def gated() -> None:
            await self.gate()
            await FileSyncer.start(self, fd)
            self.synced += 1

        return asyncio.ensure_future(gated())


class _Ticker:
    """Counts event-loop turns; a blocked loop shows as a gap between ticks."""

    def __init__(self) -> None:
        self.longest_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Ticker:
        # A full GC pass over the whole test session's heap (crypto, psycopg, redis
        # modules: ~0.1 s here) is not the store blocking the loop: collect now and
        # keep what exists out of later passes while ticking.
        gc.collect()
        gc.freeze()
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        gc.unfreeze()

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now


async def test_write_waits_for_another_process_lock_without_blocking_the_loop(
    tmp_path: Path, now: dt.datetime
) -> None:
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        await store.import_manifest([entry("d1"), entry("d2")], now)
        holder.execute("BEGIN IMMEDIATE")  # another process's write lock
        async with _Ticker() as ticker:
            write = asyncio.create_task(
                store.record_certificate(
                    certificate(1, "d1", now), expected={DeviceState.REGISTERED}, now=now
                )
            )
            queued = asyncio.create_task(store.append_audit(event("queued")))
            await asyncio.sleep(0.3)
            assert not write.done()
            assert not queued.done()
            # Reads go on: in WAL mode the lock holder blocks no reader.
            assert (await store.get_device("d1")).state is DeviceState.REGISTERED
            holder.execute("ROLLBACK")
            await asyncio.wait_for(asyncio.gather(write, queued), 5)
        assert ticker.longest_gap < 0.1, f"the event loop stalled {ticker.longest_gap:.3f}s"
        assert (await store.get_device("d1")).state is DeviceState.ACTIVE
        records = await store.audit_records(after_seq=0, limit=10)
        assert [r.event.reason for r in records] == ["queued"]
    finally:
        holder.close()
        await store.close()


async def test_a_write_is_acknowledged_only_after_the_wal_is_synced(
    tmp_path: Path, now: dt.datetime
) -> None:
    """Committed (visible to other connections) is not yet acknowledged: the fsync comes first."""
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    released = asyncio.Event()
    syncer = _GatedSyncer(released.wait)
    store._files = syncer  # the seam under test
    try:
        first = asyncio.create_task(store.append_audit(event("one")))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(store.append_audit(event("two")))
        await asyncio.sleep(0.1)
        assert not first.done()
        assert not second.done()
        other = sqlite3.connect(path)
        try:
            (count,) = other.execute("SELECT COUNT(*) FROM audit").fetchone()
        finally:
            other.close()
        assert count == 2  # both committed, neither acknowledged
        released.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        # The first sync began before the second commit: a second sync covers it.
        assert syncer.synced == 2
    finally:
        released.set()
        await store.close()


async def _largest_wal(path: Path, appends: int) -> int:
    wal = path.with_name(path.name + "-wal")
    store = await SqliteStore.open(path)
    try:
        largest = 0
        for n in range(appends):
            await store.append_audit(event(f"r{n}", pad="x" * 2000))
            largest = max(largest, wal.stat().st_size)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM audit").fetchone() == (appends,)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    return largest


async def test_checkpoints_keep_the_wal_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "CHECKPOINT_EVERY_COMMITS", 10**9)
    unchecked = await _largest_wal(tmp_path / "unchecked.db", 300)
    monkeypatch.setattr(sqlite_engine, "CHECKPOINT_EVERY_COMMITS", 20)
    checkpointed = await _largest_wal(tmp_path / "checkpointed.db", 300)
    # Unchecked, the WAL holds every page image ever written; checkpointed
    # every 20 commits, it starts over and stays near 20 commits' worth.
    assert checkpointed < unchecked / 5, (checkpointed, unchecked)


async def test_two_stores_on_one_file_interleave_writes(tmp_path: Path, now: dt.datetime) -> None:
    """Two server processes share one file: each one's writes wait for the other's lock."""
    path = tmp_path / "fleet.db"
    a = await SqliteStore.open(path)
    b = await SqliteStore.open(path)
    try:
        await asyncio.gather(
            *(store.append_audit(event(f"{n}")) for n in range(50) for store in (a, b))
        )
        records = await a.audit_records(after_seq=0, limit=1000)
        assert len(records) == 100
        assert [r.seq for r in records] == list(range(1, 101))
    finally:
        await a.close()
        await b.close()


async def test_closing_acknowledges_committed_writes_and_refuses_new_ones(
    tmp_path: Path, now: dt.datetime
) -> None:
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    writes = [asyncio.create_task(store.append_audit(event(f"{n}"))) for n in range(5)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results), results
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.append_audit(event("late"))
    assert not path.with_name("fleet.db-wal").exists()


async def test_a_briefly_held_lock_is_retried_on_the_loop_a_long_one_waits_on_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    hops: list[str] = []
    original = SqliteStore._on_worker

    def counting(self: SqliteStore, fn: Any, then: Any = None) -> Any:
        hops.append(getattr(getattr(fn, "func", fn), "__name__", "?"))
        return original(self, fn, then)

    monkeypatch.setattr(SqliteStore, "_on_worker", counting)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        for held, expect_worker in ((0.01, False), (0.2, True)):
            hops.clear()
            holder.execute("BEGIN IMMEDIATE")
            loop = asyncio.get_running_loop()
            loop.call_later(held, holder.execute, "ROLLBACK")
            await asyncio.wait_for(store.append_audit(event(f"held {held}")), 5)
            assert not holder.in_transaction  # the write landed after the lock was let go
            went_to_worker = "_writes_waiting" in hops
            assert went_to_worker is expect_worker, (held, hops)
    finally:
        holder.close()
        await store.close()


class _FailingSyncer(FileSyncer):
    """The first fdatasync fails as a dying disk's would (EIO)."""

    failed = False

    def start(self, fd: int) -> asyncio.Future[None]:
        if self.failed:
            return super().start(fd)
        self.failed = True
        future = asyncio.get_running_loop().create_future()
        future.set_exception(OSError(errno.EIO, "Input/output error"))
        return future


async def test_a_revocation_reaches_followers_even_if_its_caller_stopped_waiting(
    tmp_path: Path, now: dt.datetime
) -> None:
    store = await SqliteStore.open(tmp_path / "fleet.db")
    try:
        await store.import_manifest([entry("d1")], now)
        await store.record_certificate(
            certificate(1, "d1", now), expected={DeviceState.REGISTERED}, now=now
        )
        received: list[int] = []
        arrived = asyncio.Event()

        async def follow() -> None:
            async for feed_event in store.follow_feed(0):
                received.append(feed_event.seq)
                arrived.set()

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.05)
        store._files = _GatedSyncer(lambda: asyncio.sleep(0.05))  # room to cancel the caller
        caller = asyncio.create_task(
            store.revoke_certificate(1, RevocationReason.KEY_COMPROMISE, now)
        )
        await asyncio.sleep(0.01)
        caller.cancel()  # e.g. the admin's client went away: the revocation stands
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), 5)
        follower.cancel()
        assert received == [1]
    finally:
        await store.close()


async def test_after_a_failed_fsync_the_store_refuses_writes(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "fleet.db")
    try:
        store._files = _FailingSyncer(asyncio.get_running_loop())
        with pytest.raises(StoreUnavailable, match="fdatasync"):
            await store.append_audit(event("lost?"))
        # A later fdatasync may report success for pages that never reached the
        # disk: nothing more is acknowledged until the store is reopened.
        with pytest.raises(StoreUnavailable, match="refuses writes"):
            await store.append_audit(event("later"))
        assert len(await store.audit_records(after_seq=0, limit=10)) == 1  # reads go on
    finally:
        await store.close()
    reopened = await SqliteStore.open(tmp_path / "fleet.db")
    try:
        await reopened.append_audit(event("after a restart"))
    finally:
        await reopened.close()


async def test_queued_writes_behind_a_stuck_lock_fail_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.append_audit(event(f"w{n}")) for n in range(5)), return_exceptions=True
        )
        took = time.monotonic() - started
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        # One wait for the lock (retries, then one busy_timeout), not five in a row.
        assert took < 1.2, took
        holder.execute("ROLLBACK")
        await store.append_audit(event("after"))
    finally:
        holder.close()
        await store.close()


async def test_a_write_cancelled_before_it_began_never_runs(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(store.append_audit(event("cancelled")))
        await asyncio.sleep(0.01)  # queued behind the lock, retried on the loop
        write.cancel()
        await asyncio.sleep(0.02)
        holder.execute("ROLLBACK")
        await store.append_audit(event("kept"))
        reasons = [r.event.reason for r in await store.audit_records(after_seq=0, limit=10)]
        assert reasons == ["kept"]
    finally:
        holder.close()
        await store.close()
