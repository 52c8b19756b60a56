"""The SQLite schema and its in-place migration.

Versions: 2 added admin_credentials and cursors, 3 replacement_requests, 4
crl_numbers (new tables only), 5 the devices' manufacturer columns and the
audit search indexes, 6 signed_crls (a new table only). Two branches once both
released a "4" (one with crl_numbers, one with the manufacturer columns); so
every step checks what the file has rather than trusting the number, and any
3, either 4 or 5 upgrades in place to 6.
"""

from __future__ import annotations

import sqlite3

from fleet.kernel.errors import StoreUnavailable
from fleet.store._sql import AUDIT_INDEXED
from fleet.store._sql_replacements import SQLITE_SCHEMA as REPLACEMENTS_SCHEMA
from fleet.store.intermediates import SQLITE_SCHEMA as POOL_SCHEMA

SCHEMA_VERSION = 6

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS crl_numbers (
    name TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    content_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS signed_crls (
    name TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    content_seq INTEGER NOT NULL,
    der BLOB NOT NULL
);
"""


def migrate(conn: sqlite3.Connection) -> None:
    """Create what is missing and check the version (inside the caller's write transaction)."""
    for statement in (SCHEMA + REPLACEMENTS_SCHEMA + POOL_SCHEMA).split(";"):
        if statement.strip():
            conn.execute(statement)
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    version = row[0]
    if version is not None and version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the database has schema version {version}; this fleet knows up to {SCHEMA_VERSION}",
            hint="Upgrade fleet, or open a database written by this version.",
        )
    # Up to 4, and 6, only tables were added (created above). 5: the manufacturer
    # columns, which a file of 3 (or of the crl_numbers "4") lacks.
    columns = {r[1] for r in conn.execute("PRAGMA table_info(devices)")}
    if "manufacturer_sha256" not in columns:
        conn.execute("ALTER TABLE devices ADD COLUMN manufacturer_sha256 TEXT")
        conn.execute("ALTER TABLE devices ADD COLUMN manufacturer_name TEXT NOT NULL DEFAULT ''")
    # After the columns exist: on an old file the statements above ran before them.
    conn.execute(
        "CREATE INDEX IF NOT EXISTS devices_manufacturer ON devices(manufacturer_sha256, device_id)"
    )
    # The audit page's filters, on the event's own fields (no data is rewritten).
    for field in AUDIT_INDEXED:
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS audit_{field} "
            f"ON audit(json_extract(event, '$.{field}'), seq)"
        )
    if version is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif version < SCHEMA_VERSION:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


def rewrite_schema_version(conn: sqlite3.Connection) -> None:
    # SQLite skips an UPDATE that leaves a cell as it was (no page, no WAL
    # frame); changed and changed back, the page is written, content intact.
    conn.execute("UPDATE schema_version SET version = -version")
    conn.execute("UPDATE schema_version SET version = -version")
