"""The slice of DB-API both SQL backends give their transaction bodies.

The store's rules (every check and change of a write) are written once, as
functions of one connection inside one transaction: SQLite runs them on its
own connection, PostgreSQL on an adapter (fleet.store._postgres_conn) that
speaks the same ``?`` placeholders and rows indexable by name and position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class SqlCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SqlConnection(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> SqlCursor: ...


# AuditQuery fields kept in the audit event's JSON, each with an index (search_audit,
# count_audit): created by SQLite's migration and PostgreSQL's migration 3.
AUDIT_INDEXED = ("actor", "action", "outcome", "reason")
