"""PostgreSQL schema migrations: numbered, applied in order by ``fleet db upgrade``.

A migration, once released, never changes: a later change is a new entry.
Every text column is ``COLLATE "C"`` (byte order), the order the shared SQL
(fleet.store._sql_records) and SQLite rely on for ids, hex serials and ISO
times whatever the database's default locale. Integers are BIGINT: cursors
and sequences are signed 64-bit in every backend.

``fleet serve`` and every other opener refuse a database whose version is
older (with the command to run) or newer (written by a later fleet) than
SCHEMA_VERSION; only ``fleet db upgrade`` changes it, under an advisory lock
so two nodes upgrading at once apply each step once.
"""

from __future__ import annotations

from fleet.kernel.errors import StoreUnavailable

UPGRADE_COMMAND = "fleet db upgrade --config <your fleet.toml>"

# (version, statements); version N is the schema after applying entry N.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE devices (
    device_id TEXT COLLATE "C" PRIMARY KEY,
    state TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL,
    bootstrap_sha256 TEXT COLLATE "C",
    model TEXT COLLATE "C" NOT NULL DEFAULT '',
    batch TEXT COLLATE "C" NOT NULL DEFAULT '',
    enrolled_bootstrap_sha256 TEXT COLLATE "C",
    enrolled_at TEXT COLLATE "C",
    state_reason TEXT COLLATE "C" NOT NULL DEFAULT ''
);
CREATE INDEX devices_state ON devices(state);
CREATE TABLE certificates (
    serial TEXT COLLATE "C" PRIMARY KEY,
    device_id TEXT COLLATE "C" NOT NULL REFERENCES devices(device_id),
    not_before TEXT COLLATE "C" NOT NULL,
    not_after TEXT COLLATE "C" NOT NULL,
    issued_at TEXT COLLATE "C" NOT NULL,
    pem TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    revoked_at TEXT COLLATE "C",
    revocation_reason TEXT COLLATE "C"
);
CREATE INDEX certificates_device ON certificates(device_id);
CREATE INDEX certificates_not_after ON certificates(not_after);
CREATE INDEX certificates_status ON certificates(status);
CREATE TABLE manufacturer_cas (
    sha256 TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    pem TEXT COLLATE "C" NOT NULL,
    added_at TEXT COLLATE "C" NOT NULL
);
CREATE TABLE enrollment_tokens (
    device_id TEXT COLLATE "C" PRIMARY KEY,
    token_sha256 TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    expires_at TEXT COLLATE "C" NOT NULL
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    event TEXT COLLATE "C" NOT NULL,
    prev_sha256 TEXT COLLATE "C" NOT NULL,
    sha256 TEXT COLLATE "C" NOT NULL,
    device_id TEXT COLLATE "C"
);
CREATE INDEX audit_device ON audit(device_id, seq);
CREATE TABLE revocation_feed (
    seq BIGINT PRIMARY KEY,
    event TEXT COLLATE "C" NOT NULL
);
CREATE TABLE admin_credentials (
    sha256 TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    role TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE cursors (
    name TEXT COLLATE "C" PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE replacement_requests (
    device_id TEXT COLLATE "C" PRIMARY KEY REFERENCES devices(device_id),
    bootstrap_sha256 TEXT COLLATE "C" NOT NULL,
    key_sha256 TEXT COLLATE "C" NOT NULL,
    first_seen TEXT COLLATE "C" NOT NULL,
    last_seen TEXT COLLATE "C" NOT NULL,
    attempts BIGINT NOT NULL,
    keys_seen BIGINT NOT NULL,
    source TEXT COLLATE "C" NOT NULL DEFAULT '',
    status TEXT COLLATE "C" NOT NULL,
    decided_at TEXT COLLATE "C",
    decided_by TEXT COLLATE "C" NOT NULL DEFAULT ''
);
CREATE TABLE manufacturer_intermediates (
    sha256 TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    pem TEXT COLLATE "C" NOT NULL,
    added_at TEXT COLLATE "C" NOT NULL
);
""",
    ),
    (
        2,
        """
CREATE TABLE crl_numbers (
    name TEXT COLLATE "C" PRIMARY KEY,
    number BIGINT NOT NULL,
    content_seq BIGINT NOT NULL
);
""",
    ),
    (
        3,
        """
ALTER TABLE devices ADD COLUMN manufacturer_sha256 TEXT COLLATE "C";
ALTER TABLE devices ADD COLUMN manufacturer_name TEXT COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX devices_manufacturer ON devices(manufacturer_sha256, device_id);
CREATE INDEX audit_actor ON audit(((event::jsonb) ->> 'actor'), seq);
CREATE INDEX audit_action ON audit(((event::jsonb) ->> 'action'), seq);
CREATE INDEX audit_outcome ON audit(((event::jsonb) ->> 'outcome'), seq);
CREATE INDEX audit_reason ON audit(((event::jsonb) ->> 'reason'), seq);
""",
    ),
    (
        4,
        """
CREATE TABLE signed_crls (
    name TEXT COLLATE "C" PRIMARY KEY,
    number BIGINT NOT NULL,
    content_seq BIGINT NOT NULL,
    der BYTEA NOT NULL
);
""",
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]
VERSION_TABLE = "CREATE TABLE IF NOT EXISTS fleet_schema (version BIGINT NOT NULL)"


def check_version(found: int) -> None:
    """Refuse a database this fleet cannot use as it is (pure; ``found`` 0: no schema)."""
    if found < SCHEMA_VERSION:
        what = "has no fleet schema" if found == 0 else f"has schema version {found}"
        raise StoreUnavailable(
            f"the PostgreSQL database {what}; this fleet needs version {SCHEMA_VERSION}",
            hint=f"Run: {UPGRADE_COMMAND} (back up first; it is safe to run on every node).",
        )
    if found > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the PostgreSQL database has schema version {found}, newer than the "
            f"{SCHEMA_VERSION} this fleet knows",
            hint="Run the fleet release that upgraded it (or newer) on this node.",
        )


def pending(found: int) -> list[tuple[int, str]]:
    """The migrations to apply to a database at version ``found``, in order."""
    if found > SCHEMA_VERSION:
        check_version(found)
    return [(version, sql) for version, sql in MIGRATIONS if version > found]
