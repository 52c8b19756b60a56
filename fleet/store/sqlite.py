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
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import sqlite3
from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fleet.kernel.errors import (
    AdminNotFound,
    CertificateNotFound,
    NotFound,
    StoreConflict,
    StoreUnavailable,
    TokenInvalid,
)
from fleet.store import _sqlite_replacements as replacements
from fleet.store._codec import (
    admin_order,
    check_admin_credential,
    check_cursor,
    check_manifest,
    check_target_state,
    feed_event_from_json,
    opt_ts,
    parse_ts,
    serial_hex,
    serial_int,
    ts,
)
from fleet.store._fsync import FileSyncer
from fleet.store._sqlite_rows import (
    _append_audit,
    _append_feed,
    _certificate,
    _device,
    _fetch_device,
)
from fleet.store.audit_chain import event_from_json
from fleet.store.intermediates import SQLITE_SCHEMA as _POOL_SCHEMA
from fleet.store.intermediates import SqliteIntermediates
from fleet.store.records import (
    AdminCredential,
    AdminRole,
    AuditEvent,
    AuditPage,
    AuditQuery,
    AuditRecord,
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceFilter,
    DeviceState,
    EnrollmentToken,
    ManifestEntry,
    Manufacturer,
    ManufacturerCA,
    ReplacementRequest,
    ReplacementStatus,
    RevocationEvent,
    RevocationKind,
    RevocationReason,
    RevocationSnapshot,
)

T = TypeVar("T")
# AuditQuery fields kept in the event JSON, each with an index (created by _migrate).
AUDIT_INDEXED = ("actor", "action", "outcome", "reason")
log = logging.getLogger(__name__)

# 2 added admin_credentials and cursors, 3 replacement_requests (new tables only: older
# files upgrade in place), 4 the devices' manufacturer columns (added by _migrate).
SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 5000
FEED_POLL_SECONDS = 0.02
# SQLite checkpoints after ~1000 WAL pages by default; an enrollment writes ~10.
CHECKPOINT_EVERY_COMMITS = 100
# Another process's write lock: retried on the loop this often, this long,
# before a write waits for it (up to BUSY_TIMEOUT_MS) on the worker thread.
LOCK_RETRY_DELAY = 0.001
LOCK_RETRY_SECONDS = 0.05
_FEED_PAGE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    bootstrap_sha256 TEXT,
    model TEXT NOT NULL DEFAULT '',
    batch TEXT NOT NULL DEFAULT '',
    enrolled_bootstrap_sha256 TEXT,
    enrolled_at TEXT,
    state_reason TEXT NOT NULL DEFAULT '',
    manufacturer_sha256 TEXT,
    manufacturer_name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS devices_state ON devices(state);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    pem TEXT NOT NULL,
    status TEXT NOT NULL,
    revoked_at TEXT,
    revocation_reason TEXT
);
CREATE INDEX IF NOT EXISTS certificates_device ON certificates(device_id);
CREATE INDEX IF NOT EXISTS certificates_not_after ON certificates(not_after);
CREATE INDEX IF NOT EXISTS certificates_status ON certificates(status);
CREATE TABLE IF NOT EXISTS manufacturer_cas (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    pem TEXT NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    device_id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    prev_sha256 TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    device_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_device ON audit(device_id, seq);
CREATE TABLE IF NOT EXISTS revocation_feed (
    seq INTEGER PRIMARY KEY,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_credentials (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


def _audit(row: sqlite3.Row) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        event=event_from_json(json.loads(row["event"])),
        prev_sha256=row["prev_sha256"],
        sha256=row["sha256"],
    )


def _admin(row: sqlite3.Row) -> AdminCredential:
    return AdminCredential(
        name=row["name"],
        role=AdminRole(row["role"]),
        kind=row["kind"],
        sha256=row["sha256"],
        created_at=parse_ts(row["created_at"]),
        disabled=bool(row["disabled"]),
    )


def _same_certificate_recorded(conn: sqlite3.Connection, c: CertificateRecord) -> bool:
    """Whether exactly ``c`` is already recorded: a replay (the Redis backend sees
    those after a retry), not a conflict."""
    existing = conn.execute(
        "SELECT device_id, pem FROM certificates WHERE serial = ?", (serial_hex(c.serial),)
    ).fetchone()
    return (
        existing is not None and existing["device_id"] == c.device_id and existing["pem"] == c.pem
    )


_GOOD = CertificateStatus.GOOD.value
# The newest good certificate of the device in the enclosing query: latest
# issued_at, then the highest serial (length first: hex serials as numbers).
_NEWEST_GOOD_NOT_AFTER = (
    "(SELECT c.not_after FROM certificates c "
    "WHERE c.device_id = devices.device_id AND c.status = ? "
    "ORDER BY c.issued_at DESC, length(c.serial) DESC, c.serial DESC LIMIT 1)"
)


def _device_where(device_filter: DeviceFilter, after: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (fixed strings only; every value a parameter) of a device filter."""
    clauses = ["device_id > ?"]
    params: list[Any] = ["" if after is None else after]
    if device_filter.state is not None:
        clauses.append("state = ?")
        params.append(device_filter.state.value)
    if device_filter.batch is not None:
        clauses.append("batch = ?")
        params.append(device_filter.batch)
    if device_filter.model is not None:
        clauses.append("model = ?")
        params.append(device_filter.model)
    if device_filter.manufacturer_sha256 is not None:
        clauses.append("manufacturer_sha256 = ?")
        params.append(device_filter.manufacturer_sha256)
    if device_filter.issued_before is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM certificates c WHERE c.device_id = devices.device_id "
            "AND c.status = ? AND c.issued_at < ?)"
        )
        params += [_GOOD, ts(device_filter.issued_before)]
    if device_filter.expiring_before is not None:
        # NULL (no good certificate) < ? is NULL: such devices do not match.
        clauses.append(f"{_NEWEST_GOOD_NOT_AFTER} < ?")
        params += [_GOOD, ts(device_filter.expiring_before)]
    return " AND ".join(clauses), params


def _audit_where(query: AuditQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (fixed strings only; every value a parameter) of an audit query."""
    clauses: list[str] = ["seq > ?"]
    params: list[Any] = [query.after_seq]
    if query.before_seq is not None:
        clauses.append("seq < ?")
        params.append(query.before_seq)
    if query.device_id is not None:
        clauses.append("device_id = ?")
        params.append(query.device_id)
    for field in AUDIT_INDEXED:
        value = getattr(query, field)
        if value is not None:
            # The very expression of the index, so the planner uses it.
            clauses.append(f"json_extract(event, '$.{field}') = ?")
            params.append(value)
    return " AND ".join(clauses), params


@dataclasses.dataclass(slots=True)
class _WriteJob:
    body: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    # Whether the result says a revocation feed event was appended (None: never).
    feed: Callable[[Any], bool] | None = None


def _appended(event: RevocationEvent | None) -> bool:
    return event is not None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up waiting (cancelled); the write stands
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds a lock this statement needs (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _rewrite_schema_version(conn: sqlite3.Connection) -> None:
    # SQLite skips an UPDATE that leaves a cell as it was (no page, no WAL
    # frame); changed and changed back, the page is written, content intact.
    conn.execute("UPDATE schema_version SET version = -version")
    conn.execute("UPDATE schema_version SET version = -version")


def _data_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return int(version)


class SqliteStore(SqliteIntermediates):
    """Store backed by one SQLite file; see the module docstring for the threading model.

    A store belongs to the event loop that opened it.
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
        # The event loop's own connection for short reads; it never waits for a lock.
        self._reader: sqlite3.Connection | None = None
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

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        store = cls(path, asyncio.get_running_loop())
        try:
            await store._call(store._connect)
            store._open_reader()
        except BaseException:
            await store.close()
            raise
        return store

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
        self._transaction(True, self._migrate)
        # At rest the writer never waits: that is how it is used on the loop.
        # Worker tasks wait up to BUSY_TIMEOUT_MS (_patiently).
        conn.execute("PRAGMA busy_timeout = 0")
        # The WAL exists from here on and is never removed while our
        # connections are open (SQLite removes it when the last one closes).
        self._wal_fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(self._wal_fd)  # what an earlier run committed is durable before we go on

    def _open_reader(self) -> None:
        """The loop's read connection: busy_timeout 0, so it never blocks the loop."""
        try:
            self._reader = sqlite3.connect(self._path, timeout=0, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        for statement in (_SCHEMA + replacements.SCHEMA + _POOL_SCHEMA).split(";"):
            if statement.strip():
                conn.execute(statement)
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = row[0]
        columns = {r[1] for r in conn.execute("PRAGMA table_info(devices)")}
        if "manufacturer_sha256" not in columns:  # a file of schema 3 or older
            conn.execute("ALTER TABLE devices ADD COLUMN manufacturer_sha256 TEXT")
            conn.execute(
                "ALTER TABLE devices ADD COLUMN manufacturer_name TEXT NOT NULL DEFAULT ''"
            )
        # The audit page's filters, on the event's own fields (no data is rewritten).
        for field in AUDIT_INDEXED:
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS audit_{field} "
                f"ON audit(json_extract(event, '$.{field}'), seq)"
            )
        # After the columns exist: on an old file the statements above ran before them.
        conn.execute(
            "CREATE INDEX IF NOT EXISTS devices_manufacturer "
            "ON devices(manufacturer_sha256, device_id)"
        )
        if version is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            # Up to 3 only tables were added (created above); 4 added the columns above.
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        elif version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"the database has schema version {version}; this fleet knows up to "
                f"{SCHEMA_VERSION}",
                hint="Upgrade fleet, or open a database written by this version.",
            )

    def _transaction(self, write: bool, body: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the SQLite store is closed")
        # Reads also run in a transaction so multi-statement reads see one snapshot.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to tell
                    conn.execute("ROLLBACK")
            raise
        return result

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

    # -- reads ----------------------------------------------------------------------
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
            if not _is_busy(exc):
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
                    result = self._commit_here(conn, job)
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
                locked = error if _is_busy(exc) else None
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
            if _is_busy(exc):
                return False
            raise
        return True

    @staticmethod
    def _commit_here(conn: sqlite3.Connection, job: _WriteJob) -> Any:
        try:
            result = job.body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return result

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
            self._transaction(True, _rewrite_schema_version)

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpoint = None
        error = done.exception()
        if error is not None and not (isinstance(error, sqlite3.Error) and _is_busy(error)):
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
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error):
                self._reader.close()
            self._reader = None
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

    # -- manufacturer trust ------------------------------------------------
    async def add_manufacturer_ca(self, ca: ManufacturerCA) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO manufacturer_cas (sha256, name, pem, added_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256) DO NOTHING",
                (ca.sha256, ca.name, ca.pem, ts(ca.added_at)),
            )
            return cursor.rowcount == 1

        return await self._write(body)

    async def remove_manufacturer_ca(self, sha256: str) -> None:
        def body(conn: sqlite3.Connection) -> None:
            cursor = conn.execute("DELETE FROM manufacturer_cas WHERE sha256 = ?", (sha256,))
            if cursor.rowcount == 0:
                raise NotFound(f"no trusted manufacturer CA with fingerprint {sha256}")

        await self._write(body)

    async def list_manufacturer_cas(self) -> list[ManufacturerCA]:
        def body(conn: sqlite3.Connection) -> list[ManufacturerCA]:
            rows = conn.execute(
                "SELECT sha256, name, pem, added_at FROM manufacturer_cas ORDER BY added_at, sha256"
            ).fetchall()
            return [
                ManufacturerCA(
                    sha256=r["sha256"],
                    name=r["name"],
                    pem=r["pem"],
                    added_at=parse_ts(r["added_at"]),
                )
                for r in rows
            ]

        return await self._read_here(body)

    # -- devices -------------------------------------------------------------
    async def import_manifest(self, entries: Sequence[ManifestEntry], now: dt.datetime) -> int:
        check_manifest(entries)
        at = ts(now)

        def body(conn: sqlite3.Connection) -> int:
            created = 0
            for e in entries:
                cursor = conn.execute(
                    "UPDATE devices SET bootstrap_sha256 = ?, model = ?, batch = ?, updated_at = ? "
                    "WHERE device_id = ?",
                    (e.bootstrap_sha256, e.model, e.batch, at, e.device_id),
                )
                if cursor.rowcount == 0:
                    conn.execute(
                        "INSERT INTO devices (device_id, state, created_at, updated_at, "
                        "bootstrap_sha256, model, batch) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.device_id,
                            DeviceState.REGISTERED.value,
                            at,
                            at,
                            e.bootstrap_sha256,
                            e.model,
                            e.batch,
                        ),
                    )
                    created += 1
                if e.manufacturer is not None:
                    conn.execute(
                        "UPDATE devices SET manufacturer_sha256 = ?, manufacturer_name = ? "
                        "WHERE device_id = ?",
                        (e.manufacturer.sha256, e.manufacturer.name, e.device_id),
                    )
            return created

        return await self._write(body)

    async def get_device(self, device_id: str) -> Device:
        return await self._read_here(lambda conn: _fetch_device(conn, device_id))

    async def add_pending_device(
        self, device: Device, *, audit: AuditEvent | None = None
    ) -> Device:
        def body(conn: sqlite3.Connection) -> Device:
            cursor = conn.execute(
                "INSERT INTO devices (device_id, state, created_at, updated_at, bootstrap_sha256, "
                "model, batch, enrolled_bootstrap_sha256, enrolled_at, state_reason, "
                "manufacturer_sha256, manufacturer_name) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO NOTHING",
                (
                    device.device_id,
                    device.state.value,
                    ts(device.created_at),
                    ts(device.updated_at),
                    device.bootstrap_sha256,
                    device.model,
                    device.batch,
                    device.enrolled_bootstrap_sha256,
                    opt_ts(device.enrolled_at),
                    device.state_reason,
                    device.manufacturer.sha256 if device.manufacturer else None,
                    device.manufacturer.name if device.manufacturer else "",
                ),
            )
            if cursor.rowcount == 0:
                raise StoreConflict(f"device {device.device_id!r} already exists")
            _append_audit(conn, audit)
            return _fetch_device(conn, device.device_id)

        return await self._write(body)

    async def set_device_state(
        self,
        device_id: str,
        state: DeviceState,
        *,
        expected: Collection[DeviceState],
        now: dt.datetime,
        reason: str = "",
        audit: AuditEvent | None = None,
    ) -> Device:
        check_target_state(state)
        allowed = {s.value for s in expected}
        at = ts(now)

        def body(conn: sqlite3.Connection) -> Device:
            current = _fetch_device(conn, device_id)
            if current.state.value not in allowed:
                raise StoreConflict(
                    f"device {device_id!r} is {current.state.value}, not one of {sorted(allowed)}"
                )
            conn.execute(
                "UPDATE devices SET state = ?, updated_at = ?, state_reason = ? "
                "WHERE device_id = ?",
                (state.value, at, reason, device_id),
            )
            _append_audit(conn, audit)
            return _fetch_device(conn, device_id)

        return await self._write(body)

    async def list_devices(
        self, device_filter: DeviceFilter, *, after: str | None = None, limit: int = 100
    ) -> list[Device]:
        where, params = _device_where(device_filter, after)
        params.append(limit)
        # Only fixed clause strings are joined in; every value is a parameter.
        sql = f"SELECT * FROM devices WHERE {where} ORDER BY device_id LIMIT ?"  # noqa: S608
        return await self._read(lambda conn: [_device(r) for r in conn.execute(sql, params)])

    async def count_devices_by_state(self) -> dict[DeviceState, int]:
        def body(conn: sqlite3.Connection) -> dict[DeviceState, int]:
            rows = conn.execute("SELECT state, COUNT(*) FROM devices GROUP BY state")
            counts = dict.fromkeys(DeviceState, 0)
            counts.update({DeviceState(state): int(n) for state, n in rows})
            return counts

        return await self._read(body)

    async def count_expiring_devices(self, before: dt.datetime) -> int:
        devices, _ = await self.count_blast_radius(DeviceFilter(expiring_before=before))
        return devices

    async def count_blast_radius(self, device_filter: DeviceFilter) -> tuple[int, int]:
        where, params = _device_where(device_filter, None)
        # Only fixed clause strings are joined in; every value is a parameter.
        sql = (
            "SELECT COUNT(*), COALESCE(SUM((SELECT COUNT(*) FROM certificates c "  # noqa: S608
            "WHERE c.device_id = devices.device_id AND c.status = ?)), 0) "
            f"FROM devices WHERE {where}"
        )

        def body(conn: sqlite3.Connection) -> tuple[int, int]:
            devices, certificates = conn.execute(sql, [_GOOD, *params]).fetchone()
            return int(devices), int(certificates)

        return await self._read(body)

    # -- certificates --------------------------------------------------------
    async def record_certificate(
        self,
        certificate: CertificateRecord,
        *,
        expected: Collection[DeviceState],
        now: dt.datetime,
        bootstrap_sha256: str | None = None,
        audit: AuditEvent | None = None,
        supersede: Collection[int] = (),
        replacement_key: str | None = None,
        manufacturer: Manufacturer | None = None,
    ) -> Device:
        allowed = {s.value for s in expected}
        at = ts(now)
        c = certificate

        def body(conn: sqlite3.Connection) -> tuple[Device, RevocationEvent | None]:
            current = _fetch_device(conn, c.device_id)
            if current.state.value not in allowed:
                if _same_certificate_recorded(conn, c):
                    return current, None  # a replayed call that already succeeded
                raise StoreConflict(
                    f"device {c.device_id!r} is {current.state.value}, not one of {sorted(allowed)}"
                )
            if replacement_key is not None:
                if _same_certificate_recorded(conn, c):
                    return current, None  # consumed by the call being replayed
                replacements.consume_approval(conn, c.device_id, replacement_key)
            try:
                conn.execute(
                    "INSERT INTO certificates (serial, device_id, not_before, not_after, "
                    "issued_at, pem, status, revoked_at, revocation_reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        serial_hex(c.serial),
                        c.device_id,
                        ts(c.not_before),
                        ts(c.not_after),
                        ts(c.issued_at),
                        c.pem,
                        c.status.value,
                        opt_ts(c.revoked_at),
                        None if c.revocation_reason is None else c.revocation_reason.value,
                    ),
                )
            except sqlite3.IntegrityError:  # the serial is taken (the device exists)
                if _same_certificate_recorded(conn, c):
                    return current, None
                raise StoreConflict(
                    f"a different certificate with serial {serial_hex(c.serial)} is recorded"
                ) from None
            if bootstrap_sha256 is None:
                conn.execute(
                    "UPDATE devices SET state = ?, updated_at = ? WHERE device_id = ?",
                    (DeviceState.ACTIVE.value, at, c.device_id),
                )
            else:
                conn.execute(
                    "UPDATE devices SET state = ?, updated_at = ?, enrolled_bootstrap_sha256 = ?, "
                    "enrolled_at = ? WHERE device_id = ?",
                    (DeviceState.ACTIVE.value, at, bootstrap_sha256, at, c.device_id),
                )
            if manufacturer is not None:
                conn.execute(
                    "UPDATE devices SET manufacturer_sha256 = ?, manufacturer_name = ? "
                    "WHERE device_id = ?",
                    (manufacturer.sha256, manufacturer.name, c.device_id),
                )
            superseded = replacements.revoke_certificates(
                conn, c.device_id, supersede, RevocationReason.SUPERSEDED, now
            )
            _append_audit(conn, audit)
            # What the UPDATE just wrote, without reading the row back.
            return dataclasses.replace(
                current,
                state=DeviceState.ACTIVE,
                updated_at=parse_ts(at),
                enrolled_bootstrap_sha256=(
                    current.enrolled_bootstrap_sha256
                    if bootstrap_sha256 is None
                    else bootstrap_sha256
                ),
                enrolled_at=current.enrolled_at if bootstrap_sha256 is None else parse_ts(at),
                manufacturer=current.manufacturer if manufacturer is None else manufacturer,
            ), superseded

        device, _ = await self._write(body, feed=lambda result: result[1] is not None)
        return device

    # -- replacement requests ----------------------------------------------------
    async def get_replacement_request(self, device_id: str) -> ReplacementRequest | None:
        return await self._read_here(lambda conn: replacements.fetch_request(conn, device_id))

    async def list_replacement_requests(
        self, status: ReplacementStatus, *, after: str | None = None, limit: int = 100
    ) -> list[ReplacementRequest]:
        return await self._read(lambda conn: replacements.list_requests(conn, status, after, limit))

    async def note_replacement_attempt(
        self,
        device_id: str,
        *,
        bootstrap_sha256: str,
        key_sha256: str,
        source: str,
        now: dt.datetime,
        audit: AuditEvent | None = None,
    ) -> ReplacementRequest:
        return await self._write(
            lambda conn: replacements.note_attempt(
                conn, device_id, bootstrap_sha256=bootstrap_sha256, key_sha256=key_sha256,
                source=source, now=now, audit=audit,
            )
        )  # fmt: skip

    async def decide_replacement_request(
        self,
        device_id: str,
        status: ReplacementStatus,
        *,
        now: dt.datetime,
        actor: str,
        revoke: RevocationReason | None = None,
        audit: AuditEvent | None = None,
        key_sha256: str | None = None,
    ) -> tuple[ReplacementRequest, RevocationEvent | None]:
        return await self._write(
            lambda conn: replacements.decide(
                conn,
                device_id,
                status,
                now=now,
                actor=actor,
                revoke=revoke,
                audit=audit,
                key_sha256=key_sha256,
            ),
            feed=lambda result: result[1] is not None,
        )

    async def get_certificate(self, serial: int) -> CertificateRecord:
        def body(conn: sqlite3.Connection) -> CertificateRecord:
            row = conn.execute(
                "SELECT * FROM certificates WHERE serial = ?", (serial_hex(serial),)
            ).fetchone()
            if row is None:
                raise CertificateNotFound(f"no certificate with serial {serial:x}")
            return _certificate(row)

        return await self._read_here(body)

    async def list_certificates(self, device_id: str) -> list[CertificateRecord]:
        def body(conn: sqlite3.Connection) -> list[CertificateRecord]:
            rows = conn.execute("SELECT * FROM certificates WHERE device_id = ?", (device_id,))
            certs = [_certificate(r) for r in rows]
            return sorted(certs, key=lambda c: (c.issued_at, c.serial), reverse=True)

        return await self._read_here(body)

    async def list_expiring(
        self, before: dt.datetime, *, limit: int = 1000
    ) -> list[CertificateRecord]:
        # Hex serials of different lengths do not sort as text; length first makes them numeric.
        sql = (
            "SELECT * FROM certificates WHERE not_after < ? AND status = ? "
            "ORDER BY not_after, length(serial), serial LIMIT ?"
        )
        params = (ts(before), CertificateStatus.GOOD.value, limit)
        return await self._read(lambda conn: [_certificate(r) for r in conn.execute(sql, params)])

    async def list_revoked(self) -> list[CertificateRecord]:
        sql = "SELECT * FROM certificates WHERE status = ? ORDER BY length(serial), serial"
        params = (CertificateStatus.REVOKED.value,)
        return await self._read(lambda conn: [_certificate(r) for r in conn.execute(sql, params)])

    async def revoke_certificate(
        self,
        serial: int,
        reason: RevocationReason,
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> RevocationEvent | None:
        at = ts(now)

        def body(conn: sqlite3.Connection) -> RevocationEvent | None:
            row = conn.execute(
                "SELECT device_id, status FROM certificates WHERE serial = ?", (serial_hex(serial),)
            ).fetchone()
            if row is None:
                raise CertificateNotFound(f"no certificate with serial {serial:x}")
            if row["status"] == CertificateStatus.REVOKED.value:
                return None
            conn.execute(
                "UPDATE certificates SET status = ?, revoked_at = ?, revocation_reason = ? "
                "WHERE serial = ?",
                (CertificateStatus.REVOKED.value, at, reason.value, serial_hex(serial)),
            )
            _append_audit(conn, audit)
            return _append_feed(
                conn, RevocationKind.CERTIFICATE, row["device_id"], [serial], reason, now
            )

        return await self._write(body, feed=_appended)

    async def revoke_device(
        self,
        device_id: str,
        reason: RevocationReason,
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> RevocationEvent | None:
        at = ts(now)

        def body(conn: sqlite3.Connection) -> RevocationEvent | None:
            current = _fetch_device(conn, device_id)
            if current.state is DeviceState.REVOKED:
                return None
            good = [
                r["serial"]
                for r in conn.execute(
                    "SELECT serial FROM certificates WHERE device_id = ? AND status = ?",
                    (device_id, CertificateStatus.GOOD.value),
                )
            ]
            conn.execute(
                "UPDATE certificates SET status = ?, revoked_at = ?, revocation_reason = ? "
                "WHERE device_id = ? AND status = ?",
                (
                    CertificateStatus.REVOKED.value,
                    at,
                    reason.value,
                    device_id,
                    CertificateStatus.GOOD.value,
                ),
            )
            conn.execute(
                "UPDATE devices SET state = ?, updated_at = ?, state_reason = ? "
                "WHERE device_id = ?",
                (DeviceState.REVOKED.value, at, reason.value, device_id),
            )
            _append_audit(conn, audit)
            return _append_feed(
                conn,
                RevocationKind.DEVICE,
                device_id,
                [serial_int(s) for s in good],
                reason,
                now,
            )

        return await self._write(body, feed=_appended)

    # -- admin credentials -------------------------------------------------------
    async def put_admin_credential(self, cred: AdminCredential) -> None:
        check_admin_credential(cred)

        def body(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "INSERT INTO admin_credentials (sha256, name, role, kind, created_at, disabled) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                (
                    cred.sha256,
                    cred.name,
                    cred.role.value,
                    cred.kind,
                    ts(cred.created_at),
                    int(cred.disabled),
                ),
            )
            if cursor.rowcount == 0:
                raise StoreConflict(f"an admin credential with sha256 {cred.sha256} exists")

        await self._write(body)

    async def find_admin_credential(self, sha256: str) -> AdminCredential:
        def body(conn: sqlite3.Connection) -> AdminCredential:
            row = conn.execute(
                "SELECT * FROM admin_credentials WHERE sha256 = ?", (sha256,)
            ).fetchone()
            if row is None:
                raise AdminNotFound(f"no admin credential with sha256 {sha256}")
            return _admin(row)

        return await self._read_here(body)

    async def list_admin_credentials(self) -> list[AdminCredential]:
        def body(conn: sqlite3.Connection) -> list[AdminCredential]:
            rows = conn.execute("SELECT * FROM admin_credentials").fetchall()
            return sorted(map(_admin, rows), key=admin_order)

        return await self._read(body)

    async def disable_admin_credential(self, sha256: str) -> None:
        def body(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE admin_credentials SET disabled = 1 WHERE sha256 = ?", (sha256,)
            )
            if cursor.rowcount == 0:
                raise AdminNotFound(f"no admin credential with sha256 {sha256}")

        await self._write(body)

    # -- one-time enrollment tokens -----------------------------------------
    async def put_enrollment_token(self, token: EnrollmentToken) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO enrollment_tokens "
                "(device_id, token_sha256, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (token.device_id, token.token_sha256, ts(token.created_at), ts(token.expires_at)),
            )

        await self._write(body)

    async def consume_enrollment_token(
        self, device_id: str, token_sha256: str, now: dt.datetime
    ) -> None:
        at = ts(now)

        def body(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT token_sha256, expires_at FROM enrollment_tokens WHERE device_id = ?",
                (device_id,),
            ).fetchone()
            # One message for every cause, so a caller cannot probe which it was.
            if row is None or row["token_sha256"] != token_sha256 or row["expires_at"] <= at:
                raise TokenInvalid(f"no valid enrollment token for device {device_id!r}")
            conn.execute("DELETE FROM enrollment_tokens WHERE device_id = ?", (device_id,))

        await self._write(body)

    # -- audit log -------------------------------------------------------------
    async def append_audit(self, event: AuditEvent) -> AuditRecord:
        def body(conn: sqlite3.Connection) -> AuditRecord:
            record = _append_audit(conn, event)
            assert record is not None
            return record

        return await self._write(body)

    async def audit_records(
        self, *, device_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        if device_id is None:
            sql = "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"
            params: tuple[Any, ...] = (after_seq, limit)
        else:
            sql = "SELECT * FROM audit WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            params = (device_id, after_seq, limit)
        return await self._read(lambda conn: [_audit(r) for r in conn.execute(sql, params)])

    async def search_audit(self, query: AuditQuery, *, limit: int = 100) -> AuditPage:
        where, params = _audit_where(query)
        sql = f"SELECT * FROM audit WHERE {where} ORDER BY seq DESC LIMIT ?"  # noqa: S608
        params.append(limit)
        records = await self._read(lambda conn: [_audit(r) for r in conn.execute(sql, params)])
        # An index answers the whole query: a short page is the end.
        return AuditPage(records, records[-1].seq if len(records) == limit else 0)

    async def count_audit(
        self, query: AuditQuery, *, by: tuple[str, ...]
    ) -> dict[tuple[str, ...], int]:
        if not by or any(field not in AUDIT_INDEXED for field in by):
            raise ValueError(f"count_audit groups by some of {AUDIT_INDEXED}, not {by}")
        where, params = _audit_where(query)
        groups = ", ".join(f"json_extract(event, '$.{field}')" for field in by)
        sql = f"SELECT {groups}, COUNT(*) FROM audit WHERE {where} GROUP BY {groups}"  # noqa: S608

        def body(conn: sqlite3.Connection) -> dict[tuple[str, ...], int]:
            return {
                tuple(str(v) for v in row[:-1]): int(row[-1]) for row in conn.execute(sql, params)
            }

        return await self._read(body)

    # -- cursors -----------------------------------------------------------------
    async def get_cursor(self, name: str) -> int:
        def body(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read_here(body)

    async def set_cursor(self, name: str, value: int) -> None:
        check_cursor(name, value)

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._write(body)

    async def list_cursors(self, prefix: str) -> dict[str, int]:
        def body(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT name, value FROM cursors WHERE substr(name, 1, ?) = ?",
                (len(prefix), prefix),
            )
            return {str(name): int(value) for name, value in rows}

        return await self._read_here(body)

    # -- revocation feed -------------------------------------------------------
    async def feed_head(self) -> int:
        def body(conn: sqlite3.Connection) -> int:
            (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM revocation_feed").fetchone()
            return int(head)

        return await self._read_here(body)

    async def feed_since(self, seq: int, *, limit: int = 1000) -> list[RevocationEvent]:
        def body(conn: sqlite3.Connection) -> list[RevocationEvent]:
            rows = conn.execute(
                "SELECT seq, event FROM revocation_feed WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            return [feed_event_from_json(r["event"]) for r in rows]

        return await self._read_here(body)

    async def revocation_snapshot(self) -> RevocationSnapshot:
        def body(conn: sqlite3.Connection) -> RevocationSnapshot:
            (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM revocation_feed").fetchone()
            serials = conn.execute(
                "SELECT serial FROM certificates WHERE status = ?",
                (CertificateStatus.REVOKED.value,),
            )
            devices = conn.execute(
                "SELECT device_id FROM devices WHERE state = ?", (DeviceState.REVOKED.value,)
            )
            return RevocationSnapshot(
                seq=int(head),
                serials=frozenset(serial_int(r[0]) for r in serials),
                device_ids=frozenset(r[0] for r in devices),
            )

        return await self._read(body)

    async def follow_feed(self, after_seq: int) -> AsyncGenerator[RevocationEvent, None]:
        last = after_seq
        backoff = FEED_POLL_SECONDS
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
            backoff = FEED_POLL_SECONDS
            for event in events:
                yield event
                last = event.seq
            if len(events) == _FEED_PAGE:
                continue
            seen_version = version
            while not appended.is_set():
                # asyncio.timeout, not wait_for: this runs 50 times a second
                # for ever, and wait_for makes a task each time.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FEED_POLL_SECONDS):
                        await appended.wait()
                    break
                try:
                    if self._data_version_now() != seen_version:
                        break
                except StoreUnavailable:
                    break
