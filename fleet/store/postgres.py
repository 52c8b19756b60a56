"""The PostgreSQL store: the system of record when a fleet outgrows one machine.

Every record rule is the shared SQL of fleet.store._sql_records, the same
transaction bodies SQLite runs; this module is only the engine under them:

- each write is one transaction that first takes ONE transaction-level
  advisory lock (per schema), so writes are serialized exactly as SQLite's
  ``BEGIN IMMEDIATE`` serializes them: of racing first enrollments one wins,
  the audit hash chain and the feed sequence (MAX+1) never fork. Reads never
  take it (MVCC snapshots, ``REPEATABLE READ``);
- a write is acknowledged when COMMIT returns, which is when the server's
  ``synchronous_commit`` says it is durable: ``on`` (local WAL flushed), and
  with ``synchronous_standby_names`` set, on the synchronous standby too
  (``remote_apply`` also makes it visible to reads there). A server with
  ``synchronous_commit = off`` (acknowledged writes may vanish) is refused;
- the revocation feed is the ``revocation_feed`` table (a durable sequence);
  a write that appends an event also ``NOTIFY``s (delivered at COMMIT) so
  followers wake at once; a follower re-reads from its last sequence after
  every wake-up and at least every FEED_POLL_SECONDS, so a notification lost
  with a connection never loses an event;
- connections come from a psycopg_pool pool, checked before use: a broken
  connection (server restarted, standby promoted behind the same address) is
  replaced without a restart. Meanwhile calls fail with StoreUnavailable (the
  HTTP layer's 503 + Retry-After), never hang past POOL_TIMEOUT_SECONDS.

The bodies are synchronous (they are shared with SQLite), so they run on a
small thread pool, one pool connection per thread; LISTEN uses psycopg's
async connection on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import re
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from fleet.kernel.errors import ConfigError, StoreUnavailable
from fleet.records import RevocationEvent
from fleet.store._postgres_schema import VERSION_TABLE, check_version, pending
from fleet.store._sql import SqlConnection
from fleet.store._sql_records import SqlRecords

T = TypeVar("T")
log = logging.getLogger(__name__)

POOL_SIZE = 8
POOL_TIMEOUT_SECONDS = 5.0
# psycopg_pool retries a lost connection with exponential backoff (1, 2, 4 s…)
# until this long, then starts over at 1 s on the next request: so a server
# back after a long outage is found again within seconds, not minutes.
RECONNECT_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5
FEED_POLL_SECONDS = 1.0  # the catch-up read when no notification came
_FEED_PAGE = 1000
# pg_advisory_xact_lock(int, int): this constant, then hashtext(current_schema()).
_WRITE_LOCK_CLASS = 0x666C74  # "flt"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class _Row:
    """A row indexable by column name and by position, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], _Row]:
    names = {c.name: i for i, c in enumerate(cursor.description or ())}
    return functools.partial(_Row, names)


@functools.lru_cache(maxsize=512)
def _placeholders(statement: str) -> str:
    """The shared SQL's ``?`` placeholders in psycopg's ``%s`` form."""
    return statement.replace("%", "%%").replace("?", "%s")


class _Connection:
    """A psycopg connection seen through the DB-API slice the shared bodies use."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, statement: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[_Row]:
        cursor = self._conn.cursor(row_factory=_row_factory)
        return cursor.execute(_placeholders(statement), tuple(parameters))


def _channel(schema: str) -> str:
    return f"fleet_feed_{schema}"


def _connect_kwargs(schema: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "autocommit": True}
    if schema is not None:
        kwargs["options"] = f"-c search_path={schema}"
    return kwargs


def _check_schema_name(schema: str | None) -> None:
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise StoreUnavailable(f"invalid PostgreSQL schema name {schema!r}")


def _unavailable(url: str, exc: BaseException) -> StoreUnavailable:
    # psycopg's messages name host and port, never the password.
    err = StoreUnavailable(
        f"PostgreSQL is unavailable: {str(exc).strip() or type(exc).__name__}",
        hint="Check that PostgreSQL is running and reachable at store.url; "
        "fleet reconnects by itself once it is.",
    )
    err.__cause__ = exc
    return err


def _schema_version(conn: psycopg.Connection[Any]) -> int:
    """0 when the database has no fleet schema yet (read only: openers never create it)."""
    exists = conn.execute("SELECT to_regclass('fleet_schema')").fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM fleet_schema").fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def upgrade_schema(url: str, *, schema: str | None = None) -> tuple[int, int]:
    """Apply every pending migration (``fleet db upgrade``); ``(from, to)`` versions.

    Each step is its own transaction under the write lock, so two nodes
    upgrading at once apply it once; a newer database is refused untouched.
    """
    _check_schema_name(schema)
    try:
        with psycopg.connect(url, **_connect_kwargs(schema)) as conn:
            if schema is not None:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                conn.commit()
            with conn.transaction():
                _lock_writes(conn)
                conn.execute(VERSION_TABLE)
                start = _schema_version(conn)
            version = start
            for version, statements in pending(start):
                with conn.transaction():
                    _lock_writes(conn)
                    if _schema_version(conn) >= version:
                        continue  # another node applied it meanwhile
                    conn.execute(statements)
                    conn.execute("DELETE FROM fleet_schema")
                    conn.execute("INSERT INTO fleet_schema (version) VALUES (%s)", (version,))
            return start, max(start, version)
    except psycopg.Error as exc:
        raise _unavailable(url, exc) from exc


def _lock_writes(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_WRITE_LOCK_CLASS,)
    )


_BEGIN_WRITE = (
    f"BEGIN; SELECT pg_advisory_xact_lock({_WRITE_LOCK_CLASS}, hashtext(current_schema()))"
)


def _rollback(conn: psycopg.Connection[Any]) -> None:
    """Roll back after a failure; a broken connection is the pool's to discard."""
    with contextlib.suppress(psycopg.Error):
        conn.execute("ROLLBACK")


class PostgresStore(SqlRecords):
    """Store on a PostgreSQL database (one schema of it); see the module docstring."""

    def __init__(self, url: str, schema: str | None, pool: ConnectionPool[Any]) -> None:
        self._url = url
        self._search_path = schema  # None: the URL's or the server's default
        self._schema = schema or "public"  # the one in use, once open() asked
        self._pool = pool
        self._threads = concurrent.futures.ThreadPoolExecutor(POOL_SIZE, "fleet-postgres")
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, schema: str | None = None) -> PostgresStore:
        """Connect and check the schema version (never changed here: see upgrade_schema)."""
        _check_schema_name(schema)
        pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=POOL_TIMEOUT_SECONDS,
            kwargs=_connect_kwargs(schema),
            check=ConnectionPool.check_connection,
            reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
            open=False,
            name="fleet-store",
        )
        store = cls(url, schema, pool)
        try:
            # One direct connection first: its error names the cause (the pool's says
            # only that it timed out).
            version, current = await store._run(store._probe)
            check_version(version)
            store._schema = current
            await store._run(functools.partial(pool.open, wait=True, timeout=POOL_TIMEOUT_SECONDS))
        except BaseException:
            await store.close()
            raise
        return store

    @staticmethod
    def _event_field(field: str) -> str:
        # The expression of migration 3's audit indexes (jsonb: an immutable cast).
        return f"((event::jsonb) ->> '{field}')"

    # -- the engine -----------------------------------------------------------------
    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        loop = asyncio.get_running_loop()
        try:
            # Shielded: a caller that stops waiting does not undo a write under way.
            return await asyncio.shield(loop.run_in_executor(self._threads, fn))
        except (psycopg.Error, PoolTimeout) as exc:
            raise _unavailable(self._url, exc) from exc
        except RuntimeError as exc:  # the executor is shut down
            raise StoreUnavailable("the PostgreSQL store is closed") from exc

    def _probe(self) -> tuple[int, str]:
        """The schema version and the schema (search_path) this store works in;
        refuses a server that would acknowledge commits before they are durable."""
        with psycopg.connect(self._url, **_connect_kwargs(self._search_path)) as conn:
            durable = conn.execute("SHOW synchronous_commit").fetchone()
            if durable is not None and durable[0] == "off":
                raise ConfigError(
                    "PostgreSQL runs with synchronous_commit = off: a COMMIT fleet "
                    "acknowledges (a certificate, a revocation) could vanish in a crash",
                    hint="Set synchronous_commit = on (or remote_write / remote_apply with a "
                    "synchronous standby) for fleet's role or database: "
                    "ALTER ROLE fleet SET synchronous_commit = on.",
                )
            row = conn.execute("SELECT current_schema()").fetchone()
            if row is None or row[0] is None:
                raise StoreUnavailable(
                    "PostgreSQL has no current schema for this user (search_path)",
                    hint="Create the schema or set search_path, then run fleet db upgrade.",
                )
            return _schema_version(conn), str(row[0])

    # Pool connections are in autocommit mode and transactions are begun by hand:
    # BEGIN and the write lock go in one round trip, and a one-statement read
    # needs no transaction at all (each round trip costs both sides CPU).
    def _in_write(self, body: Callable[[SqlConnection], T], feed: Callable[[T], bool] | None) -> T:
        with self._pool.connection() as conn:
            conn.execute(_BEGIN_WRITE)  # two statements: a constant, no parameters
            try:
                result = body(_Connection(conn))
                if feed is not None and feed(result):
                    conn.execute("SELECT pg_notify(%s, '')", (_channel(self._schema),))
            except BaseException:
                _rollback(conn)
                raise
            conn.execute("COMMIT")
        return result  # COMMIT returned: durable as synchronous_commit says

    def _in_read(self, body: Callable[[SqlConnection], T]) -> T:
        with self._pool.connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            try:
                result = body(_Connection(conn))
            except BaseException:
                _rollback(conn)
                raise
            conn.execute("COMMIT")
        return result

    def _in_statement(self, body: Callable[[SqlConnection], T]) -> T:
        """One statement, autocommit: it sees one snapshot by itself."""
        with self._pool.connection() as conn:
            return body(_Connection(conn))

    async def _write(
        self, body: Callable[[SqlConnection], T], *, feed: Callable[[T], bool] | None = None
    ) -> T:
        return await self._run(functools.partial(self._in_write, body, feed))

    async def _read(self, body: Callable[[SqlConnection], T]) -> T:
        return await self._run(functools.partial(self._in_read, body))

    async def _read_here(self, body: Callable[[SqlConnection], T]) -> T:
        return await self._run(functools.partial(self._in_statement, body))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # Writes under way finish (and are acknowledged) before the pool closes.
        await loop.run_in_executor(None, functools.partial(self._threads.shutdown, wait=True))
        await loop.run_in_executor(None, self._pool.close)

    # -- revocation feed -----------------------------------------------------------
    async def _listen(self) -> psycopg.AsyncConnection[Any] | None:
        """A LISTENing connection, or None while PostgreSQL is unreachable (then poll)."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url, **_connect_kwargs(self._search_path)
            )
        except psycopg.Error as exc:
            log.warning("revocation feed: cannot LISTEN (%s); polling meanwhile", exc)
            return None
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(_channel(self._schema))))
        except psycopg.Error as exc:
            log.warning("revocation feed: cannot LISTEN (%s); polling meanwhile", exc)
            await conn.close()
            return None
        return conn

    async def follow_feed(self, after_seq: int) -> AsyncGenerator[RevocationEvent, None]:
        last = after_seq
        listener: psycopg.AsyncConnection[Any] | None = None
        try:
            while not self._closed:
                if listener is None or listener.closed:
                    listener = await self._listen()  # before reading: no append slips between
                try:
                    events = await self.feed_since(last, limit=_FEED_PAGE)
                except StoreUnavailable:
                    # Brokers keep following and report staleness by their own metrics.
                    await asyncio.sleep(FEED_POLL_SECONDS)
                    continue
                for event in events:
                    yield event
                    last = event.seq
                if len(events) == _FEED_PAGE:
                    continue
                if listener is None:
                    await asyncio.sleep(FEED_POLL_SECONDS)
                    continue
                try:
                    async for _ in listener.notifies(timeout=FEED_POLL_SECONDS, stop_after=1):
                        pass
                except psycopg.Error as exc:
                    log.warning("revocation feed: LISTEN connection lost (%s); reconnecting", exc)
                    with contextlib.suppress(psycopg.Error):
                        await listener.close()
                    listener = None
        finally:
            if listener is not None:
                with contextlib.suppress(psycopg.Error):
                    await listener.close()
