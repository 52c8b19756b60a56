"""The embedded SQLite store (the default: zero set-up, one machine).

Python's sqlite3 blocks, and a thread hop per call costs more CPU than the
call (GIL hand-offs, futex wake-ups, context switches: measured, it was a
fifth of an enrollment). So the store splits the work by how long it may take:

- a write is its own ``BEGIN IMMEDIATE`` transaction, run on the event loop:
  its statements touch cached pages and, with ``synchronous=NORMAL``, its
  COMMIT appends to the WAL without waiting for the disk (microseconds);
- durability is a step of its own: a write is acknowledged only after an
  fdatasync of the WAL that began after its COMMIT, done by Linux native AIO
  (no thread; fleet.store._fsync) one at a time, so one fsync covers every
  write committed before it began (group commit). This is exactly as durable
  as ``synchronous=FULL`` for every acknowledged write; NORMAL still syncs
  around checkpoints, which keeps the file sound on power loss;
- short reads by key run on the loop too (on the writer connection when the
  loop holds it: its page cache is warm; else on a read-only connection);
- what may wait runs on the ONE worker thread: long reads (lists,
  snapshots), checkpoints (``wal_autocheckpoint`` is off so that no COMMIT
  on the loop copies a thousand pages), and writes while another process
  (``fleet serve --workers N``, a CLI) holds the write lock longer than
  LOCK_RETRY_SECONDS — those wait up to busy_timeout there, never on the loop.

An fsync that fails leaves the store refusing writes until it is reopened:
after a failed fdatasync Linux may report the next one clean although the
pages never reached the disk (PostgreSQL stops for the same reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TypeVar

from fleet.kernel.errors import StoreUnavailable
from fleet.records import RevocationEvent
from fleet.store._sql_records import SqlRecords
from fleet.store._sqlite_engine import SqliteEngine, is_busy

T = TypeVar("T")

# How often a feed follower looks for other processes' appends (its own process's
# wake it at once). Brokers kick revoked devices within about this; a process that
# needs no such speed opens the store with a slower poll (each look costs CPU).
FEED_POLL_SECONDS = 0.02
_FEED_PAGE = 1000


def _data_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return int(version)


class SqliteStore(SqliteEngine, SqlRecords):
    """Store backed by one SQLite file; see the module docstring for the threading model.

    The writer connection and the write path are the engine's
    (fleet.store._sqlite_engine); here are the read connection, the reads and
    the feed follower. A store belongs to the event loop that opened it.
    """

    def __init__(
        self, path: Path, loop: asyncio.AbstractEventLoop, feed_poll_seconds: float
    ) -> None:
        super().__init__(path, loop)
        self._feed_poll = feed_poll_seconds
        # The event loop's own connection for short reads; it never waits for a lock.
        self._reader: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path, *, feed_poll_seconds: float | None = None) -> SqliteStore:
        poll = FEED_POLL_SECONDS if feed_poll_seconds is None else feed_poll_seconds
        store = cls(path, asyncio.get_running_loop(), poll)
        try:
            await store._call(store._connect)
            store._open_reader()
        except BaseException:
            await store.close()
            raise
        return store

    # -- the read connection and reads --------------------------------------------
    def _open_reader(self) -> None:
        """The loop's read connection: busy_timeout 0, so it never blocks the loop."""
        try:
            self._reader = sqlite3.connect(self._path, timeout=0, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    async def _read(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """A read of any size, on the worker thread (long reads never stall the loop)."""
        return await self._call(lambda: self._transaction(False, body))

    async def _read_here(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """A short read of ONE statement (a few rows by key) on the loop's own
        connection: no thread hop. One statement sees one snapshot by itself.

        It is on every enrollment (device, certificate, manufacturer CAs). In
        WAL mode a reader waits for nobody, except in rare moments (another
        process recovering the WAL); then the read goes to the worker thread,
        which may wait, instead of failing or blocking the loop.
        """
        # The writer's page cache holds what it just wrote; the reader's is
        # invalidated by every write of the writer, so the writer reads
        # faster whenever it is the loop's (no worker task holds it).
        conn = self._reader if self._worker_jobs or self._conn is None else self._conn
        if conn is None or self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        try:
            return body(conn)
        except sqlite3.Error as exc:
            if not is_busy(exc):
                raise self._unavailable(exc) from exc
        return await self._read(body)

    def _data_version_now(self) -> int:
        """PRAGMA data_version of the read connection: it changes with every commit
        by another connection, our writer's included (the writer's own does not)."""
        reader = self._reader
        if reader is None:
            raise StoreUnavailable("the SQLite store is closed")
        try:
            return _data_version(reader)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error):
                self._reader.close()
            self._reader = None
        await super().close()

    # -- the feed --------------------------------------------------------------
    async def follow_feed(self, after_seq: int) -> AsyncGenerator[RevocationEvent, None]:
        last = after_seq
        backoff = self._feed_poll
        while True:
            # Taken before reading, so an append that lands after the read still wakes us.
            appended = self._feed_appended
            try:
                version = self._data_version_now()
                events = await self.feed_since(last, limit=_FEED_PAGE)
            except StoreUnavailable:
                # Transient (locked, briefly unreadable): brokers keep following and
                # report staleness through their own metrics rather than crash.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = self._feed_poll
            for event in events:
                yield event
                last = event.seq
            if len(events) == _FEED_PAGE:
                continue
            seen_version = version
            while not appended.is_set():
                # asyncio.timeout, not wait_for: this may run 50 times a second
                # for ever, and wait_for makes a task each time.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._feed_poll):
                        await appended.wait()
                    break
                try:
                    if self._data_version_now() != seen_version:
                        break
                except StoreUnavailable:
                    break
