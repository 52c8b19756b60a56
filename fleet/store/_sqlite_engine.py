"""The SQLite store's engine: its ONE writer connection and how work runs on it.

The threading model is told in fleet.store.sqlite. Here: the writer
connection (WAL, ``synchronous=NORMAL``, no autocheckpoint, ``busy_timeout``
0 at rest), the ONE worker thread that shares it with the event loop (never
at once), and the write path on it: each write its own ``BEGIN IMMEDIATE`` on
the loop, retried there while another process holds the lock and then handed
to the worker; group commit (acknowledged only after an fdatasync of the WAL
that began after its COMMIT); checkpoints on the worker; and refusing writes
once an fdatasync failed. ``SqliteStore`` adds the read connection, the reads
and the feed follower on top.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fleet.kernel.errors import StoreUnavailable
from fleet.store._fsync import FileSyncer
from fleet.store._sqlite_schema import migrate, rewrite_schema_version

T = TypeVar("T")
log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# SQLite checkpoints after ~1000 WAL pages by default; an enrollment writes ~10.
CHECKPOINT_EVERY_COMMITS = 100
# Another process's write lock: retried on the loop this often, this long,
# before a write waits for it (up to BUSY_TIMEOUT_MS) on the worker thread.
LOCK_RETRY_DELAY = 0.001
LOCK_RETRY_SECONDS = 0.05


@dataclasses.dataclass(slots=True)
class _WriteJob:
    body: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    # Whether the result says a revocation feed event was appended (None: never).
    feed: Callable[[Any], bool] | None = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up waiting (cancelled); the write stands
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds a lock this statement needs (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _commit(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``body`` in the transaction begun on ``conn`` and commit; roll back on any failure."""
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the first error is the one to tell
                conn.execute("ROLLBACK")
        raise
    return result


class SqliteEngine:
    """The writer connection, its worker thread and the write path; see the module docstring.

    An engine belongs to the event loop that opened it.
    """

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._path = path
        self._wal_path = path.with_name(path.name + "-wal")
        self._loop = loop
        # Long reads and writes that must wait for another process's lock.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "fleet-sqlite")
        self._checkpoint: asyncio.Future[None] | None = None  # on the worker, if running
        self._files = FileSyncer(loop)
        # The writer connection. One thread at a time: the worker while a task
        # of ours runs there (_worker_jobs > 0), else the event loop.
        self._conn: sqlite3.Connection | None = None
        self._worker_jobs = 0
        self._pending: list[_WriteJob] = []  # writes waiting for the writer connection
        self._lock_retry: asyncio.TimerHandle | None = None  # another process holds the lock
        self._locked_since: float | None = None
        # Committed writes waiting for the next fsync of the WAL (their durability).
        self._unsynced: list[tuple[_WriteJob, Any]] = []
        self._sync: asyncio.Future[None] | None = None  # the fsync running now
        self._wal_fd = -1  # our own descriptor of the WAL, for fdatasync
        self._commits_since_checkpoint = 0
        self._failed: StoreUnavailable | None = None  # an fdatasync failed: writes refused
        self._closed = False
        # Replaced on every local feed append; PRAGMA data_version does not see
        # the writer connection's own commits, so followers wait on this as well.
        self._feed_appended = asyncio.Event()

    # -- connections ------------------------------------------------------------
    def _connect(self) -> None:
        """Open the writer connection and migrate the schema (worker thread)."""
        conn = sqlite3.connect(
            self._path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,  # used by the loop and by the worker, never at once
        )
        self._conn = conn
        conn.row_factory = sqlite3.Row
        # The first statement that reads the file: a corrupt or foreign file fails here.
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            # E.g. a network file system: without WAL, readers would block the writer.
            raise StoreUnavailable(f"SQLite could not switch {self._path} to WAL (got {mode})")
        # NORMAL: COMMIT does not fsync; _sync_committed does, off the loop, before
        # any write is acknowledged. Checkpoints still sync (that keeps the file
        # sound on power loss); they run on the worker thread, not inside COMMIT.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA foreign_keys = ON")
        self._transaction(True, migrate)
        # At rest the writer never waits: that is how it is used on the loop.
        # Worker tasks wait up to BUSY_TIMEOUT_MS (_patiently).
        conn.execute("PRAGMA busy_timeout = 0")
        # The WAL exists from here on and is never removed while our
        # connections are open (SQLite removes it when the last one closes).
        self._wal_fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(self._wal_fd)  # what an earlier run committed is durable before we go on

    def _transaction(self, write: bool, body: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the SQLite store is closed")
        # Reads also run in a transaction so multi-statement reads see one snapshot.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        return _commit(conn, body)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        err = StoreUnavailable(f"SQLite database {self._path} failed: {exc}")
        err.__cause__ = exc
        return err

    # -- threads ------------------------------------------------------------------
    def _on_worker(
        self, fn: Callable[[], T], then: Callable[[asyncio.Future[T]], None] | None = None
    ) -> asyncio.Future[T]:
        """Run ``fn`` on the worker thread; ``then`` runs on the loop when it is done.

        The writer connection is the loop's again only when every worker task
        has really finished, so the count drops in a done-callback of the
        executor's own future (a cancelled waiter does not end the task).
        """
        try:
            future = self._loop.run_in_executor(self._worker, self._patiently, fn)
        except RuntimeError as exc:  # the executor is shut down
            raise StoreUnavailable("the SQLite store is closed") from exc
        self._worker_jobs += 1

        def done(finished: asyncio.Future[T]) -> None:
            self._worker_jobs -= 1
            if then is not None:
                then(finished)
            self._kick()

        future.add_done_callback(done)
        return future

    def _patiently(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (worker thread) letting the writer wait for other processes' locks."""
        conn = self._conn
        if conn is None:
            return fn()  # opening, or closed
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            return fn()
        finally:
            if self._conn is conn:  # not closed by fn
                with contextlib.suppress(sqlite3.Error):  # fn's outcome stands
                    conn.execute("PRAGMA busy_timeout = 0")

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.shield(self._on_worker(fn))
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    # -- writes -------------------------------------------------------------------
    # Each write is its own transaction, run right here on the loop: its
    # statements touch cached pages and its COMMIT appends to the WAL without
    # waiting for the disk (microseconds). Durability is a separate step: the
    # write is acknowledged only after an fsync of the WAL that began after its
    # COMMIT. One fsync runs at a time, and it covers every write committed
    # before it began: group commit, with no thread hop per statement (a hop
    # costs more CPU than the statements: GIL hand-offs, futex wake-ups).
    async def _write(
        self,
        body: Callable[[sqlite3.Connection], T],
        *,
        feed: Callable[[T], bool] | None = None,
    ) -> T:
        """Run ``body`` in a write transaction; return once it is durable.

        ``feed``: tells from ``body``'s result whether it appended a revocation
        feed event; followers in this process are woken when it is durable, by
        the write path itself, so a caller that stopped waiting cannot lose it.
        """
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        if self._failed is not None:
            raise self._failed
        job = _WriteJob(body, self._loop.create_future(), feed)
        self._pending.append(job)
        self._kick()
        result: T = await job.future
        return result

    def _kick(self) -> None:
        """Run the waiting writes while the writer connection is the loop's."""
        while self._pending and not self._worker_jobs and self._lock_retry is None:
            job = self._pending.pop(0)
            if job.future.done():  # its caller gave up before it began: nothing to do
                continue
            conn = self._conn
            if self._closed or conn is None:
                _settle(job.future, None, StoreUnavailable("the SQLite store is closed"))
                continue
            if self._failed is not None:
                _settle(job.future, None, self._failed)
                continue
            try:
                begun = self._begin_without_waiting(conn)
                if begun:
                    result = _commit(conn, job.body)
            except Exception as exc:  # the job's own refusal, or SQLite failing
                error = self._unavailable(exc) if isinstance(exc, sqlite3.Error) else exc
                _settle(job.future, None, error)
                continue
            if begun:
                self._locked_since = None
                self._committed(job, result)
                continue
            # Another process holds the write lock. Its transactions are short
            # too (no COMMIT waits for the disk), so try again on the loop in a
            # moment; only past LOCK_RETRY_SECONDS wait for it on the worker
            # thread (busy_timeout), never on the loop. Later writes queue
            # behind, in order.
            now = self._loop.time()
            if self._locked_since is None:
                self._locked_since = now
            if now - self._locked_since < LOCK_RETRY_SECONDS:
                self._pending.insert(0, job)
                self._lock_retry = self._loop.call_later(LOCK_RETRY_DELAY, self._retry_lock)
                return
            self._locked_since = None
            # Every queued write goes along, so that they wait for the lock
            # once, not one busy_timeout after another.
            jobs = [job, *(j for j in self._pending if not j.future.done())]
            self._pending.clear()
            self._on_worker(
                functools.partial(self._writes_waiting, jobs),
                functools.partial(self._written_on_worker, jobs),
            )
            return

    def _writes_waiting(self, jobs: list[_WriteJob]) -> list[tuple[Any, BaseException | None]]:
        """(worker thread) Each job in its own transaction, waiting for the write lock;
        once the lock stays taken past busy_timeout, the rest fail at once."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        locked: StoreUnavailable | None = None
        for job in jobs:
            if locked is not None:
                outcomes.append((None, locked))
                continue
            try:
                outcomes.append((self._transaction(True, job.body), None))
            except sqlite3.Error as exc:
                error = self._unavailable(exc)
                locked = error if is_busy(exc) else None
                outcomes.append((None, error))
            except Exception as exc:  # the job's own refusal
                outcomes.append((None, exc))
        return outcomes

    def _written_on_worker(
        self, jobs: list[_WriteJob], done: asyncio.Future[list[tuple[Any, BaseException | None]]]
    ) -> None:
        error = done.exception()
        if error is not None:  # not a job's failure (the store closed under it, a bug)
            for job in jobs:
                _settle(job.future, None, error)
            return
        for job, (result, failure) in zip(jobs, done.result(), strict=True):
            if failure is None:
                self._committed(job, result)
            else:
                _settle(job.future, None, failure)

    def _retry_lock(self) -> None:
        self._lock_retry = None
        self._kick()

    @staticmethod
    def _begin_without_waiting(conn: sqlite3.Connection) -> bool:
        try:
            conn.execute("BEGIN IMMEDIATE")  # busy_timeout is 0 here
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                return False
            raise
        return True

    def _committed(self, job: _WriteJob, result: Any) -> None:
        self._unsynced.append((job, result))
        self._sync_committed()

    def _sync_committed(self) -> None:
        """Start an fsync covering every committed write, unless one is running."""
        if self._sync is not None or not self._unsynced:
            return
        batch, self._unsynced = self._unsynced, []
        if self._failed is not None:  # no later fsync can be trusted
            self._made_durable(batch, self._failed)
            return
        try:
            self._sync = self._files.start(self._wal_fd)
        except OSError as exc:
            self._made_durable(batch, exc)
            return
        self._sync.add_done_callback(lambda done: self._synced(batch, done))

    def _synced(self, batch: list[tuple[_WriteJob, Any]], done: asyncio.Future[None]) -> None:
        self._sync = None
        self._made_durable(
            batch, done.exception() if not done.cancelled() else OSError("cancelled")
        )
        self._sync_committed()

    def _made_durable(
        self, batch: list[tuple[_WriteJob, Any]], error: BaseException | None
    ) -> None:
        failed = None
        if error is not None:
            if self._failed is None:
                log.critical("fdatasync of %s failed: %s; refusing writes", self._wal_path, error)
                self._failed = StoreUnavailable(
                    f"SQLite database {self._path}: an fdatasync of its WAL failed ({error}); "
                    "writes committed since may not be on disk, so the store refuses writes",
                    hint="Check the disk, then restart the server (the store is reopened).",
                )
            failed = self._failed
        for job, result in batch:
            _settle(job.future, result, failed)
        if any(job.feed is not None and job.feed(result) for job, result in batch):
            self._notify_feed()  # committed (durable unless failed): followers read it
        self._commits_since_checkpoint += len(batch)
        if self._commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS and not (
            self._closed or self._checkpoint
        ):
            self._commits_since_checkpoint = 0
            self._checkpoint = self._on_worker(self._run_checkpoint, self._checkpointed)

    def _run_checkpoint(self) -> None:
        """Copy the WAL into the database file (worker thread, on the writer connection).

        Not inside a COMMIT on the loop (wal_autocheckpoint is off): it copies
        ~1000 pages and syncs twice (synchronous=NORMAL: the WAL before, the
        database after). On the writer connection, so no write of ours lands
        while it runs: the next write finds the WAL fully copied and starts it
        over instead of growing it.
        """
        conn = self._conn
        if conn is None:
            return
        (_, frames, copied) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames > 0 and frames == copied:
            # All copied: the next write starts the WAL over, and SQLite
            # syncs the new WAL header inside that COMMIT. Do that write here,
            # not on the loop (the one-row schema table, rewritten unchanged).
            self._transaction(True, rewrite_schema_version)

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpoint = None
        error = done.exception()
        if error is not None and not (isinstance(error, sqlite3.Error) and is_busy(error)):
            log.warning("SQLite checkpoint of %s failed (tried again later): %s", self._path, error)

    # -- closing ------------------------------------------------------------------
    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        self._closed = True  # writes not yet begun are refused from now on
        if self._lock_retry is not None:
            self._lock_retry.cancel()
            self._lock_retry = None
        with contextlib.suppress(StoreUnavailable):
            await self._call(self._close_connection)  # after the worker's own writes
        # Writes committed before now are acknowledged once durable, not dropped.
        while (running := self._sync or self._checkpoint) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        self._files.close()
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd = -1
        self._worker.shutdown(wait=False)
        self._kick()  # writes still queued learn that the store is closed

    def _notify_feed(self) -> None:
        self._feed_appended.set()
        self._feed_appended = asyncio.Event()
