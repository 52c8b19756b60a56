"""The admin commands end to end: `fleet trust`, `fleet manifest`, `fleet device`.

Each test runs the real `fleet` command in a subprocess against a data
directory made by `fleet init`, then looks at the store directly. One test
runs the same commands against a real redis-server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql
from redis.asyncio import Redis

from fleet.config import load_config
from fleet.kernel.errors import TokenInvalid
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import CertifiedKey, create_issuing_ca, load_certificates_pem
from fleet.pki.keys import load_private_key_pem
from fleet.records import Device, DeviceState
from fleet.store.factory import open_store
from fleet.store.protocol import Store
from fleet.tokens import token_sha256
from tests.support.factory import (
    make_bootstrap,
    make_manufacturer,
    manifest_csv,
    manifest_entry,
    write_pem,
)
from tests.support.postgres import PostgresServer, fresh_schema, postgres_server
from tests.support.redis_server import RedisServer, redis_server

__all__ = ["postgres_server", "redis_server"]

_T = TypeVar("_T")


def fleet(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "FLEET_CONFIG"}, **(env or {})},
        cwd=cwd,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1 with diagnostics (what happened, reason code, what to do) naming ``words``."""
    assert result.returncode == 1, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stderr.startswith("error: ")
    assert "reason: " in result.stderr
    assert "what to do: " in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the module; tests use their own device ids and CAs."""
    directory = tmp_path_factory.mktemp("admin") / "data"
    ok(fleet("init", "--dir", directory))
    return directory


@pytest.fixture
def config(data: Path) -> Path:
    return data / "fleet.toml"


def with_store(config: Path, use: Callable[[Store], Awaitable[_T]], **env: str) -> _T:
    """Run ``use`` on the store the config names (FLEET_* overrides in ``env``)."""

    async def run() -> _T:
        loaded = load_config(config, environ=env)
        store = await open_store(loaded.store_url, redis=loaded.store_redis)
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(run())


def add_pending(config: Path, device_id: str, **env: str) -> None:
    """What the EST server does for an unknown device: hold it for approval."""
    now = dt.datetime.now(dt.UTC)
    device = Device(device_id, DeviceState.PENDING, now, now, state_reason="unknown_device_held")
    with_store(config, lambda store: store.add_pending_device(device), **env)


def get_device(config: Path, device_id: str, **env: str) -> Device:
    return with_store(config, lambda store: store.get_device(device_id), **env)


# -- fleet trust ---------------------------------------------------------------------
def test_trust_add_list_remove(tmp_path: Path, data: Path, config: Path) -> None:
    acme = make_manufacturer("Acme")
    ca_pem, _ = write_pem(tmp_path / "acme.pem", acme)
    fingerprint = sha256_fingerprint(acme.certificate)

    # --config given on the group; FLEET_CONFIG; ./fleet.toml in the working directory.
    added = ok(fleet("trust", "--config", config, "add-manufacturer", ca_pem))
    assert "Trusted manufacturer CA 'Acme Device CA'" in added
    assert fingerprint in added
    again = ok(fleet("trust", "add-manufacturer", ca_pem, env={"FLEET_CONFIG": str(config)}))
    assert "already trusted; nothing changed" in again

    listed = json.loads(ok(fleet("trust", "list", "--json", cwd=data)))
    (entry,) = [e for e in listed if e["sha256"] == fingerprint]
    assert entry["name"] == "Acme Device CA"
    assert entry["subject"] == "CN=Acme Device CA,O=Acme"
    assert fingerprint in ok(fleet("trust", "list", "--config", config))

    # openssl's spelling of the fingerprint works.
    colons = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    assert fingerprint in ok(fleet("trust", "remove", colons, "--config", config))
    listed = json.loads(ok(fleet("trust", "list", "--json", "--config", config)))
    assert fingerprint not in {e["sha256"] for e in listed}
    refused(fleet("trust", "remove", fingerprint, "--config", config), "no trusted manufacturer CA")
    refused(fleet("trust", "remove", "abc", "--config", config), "not a SHA-256 fingerprint")

    audit = with_store(config, lambda store: store.audit_records())
    actions = [(r.event.action, r.event.detail.get("sha256")) for r in audit]
    assert ("trust_add", fingerprint) in actions
    assert ("trust_remove", fingerprint) in actions
    assert all(r.event.actor.startswith("admin:") for r in audit)


def test_trust_refuses_device_certs_and_the_fleets_own_cas(tmp_path: Path, config: Path) -> None:
    globex = make_manufacturer("Globex")
    bootstrap_pem, _ = write_pem(tmp_path / "device.pem", make_bootstrap(globex, "dev-1"))
    refused(fleet("trust", "add-manufacturer", bootstrap_pem, "--config", config), "not a CA")

    data = config.parent
    for own in ("ca/root.pem", "ca/issuing.pem", "ca/admin.pem"):
        refused(
            fleet("trust", "add-manufacturer", data / own, "--config", config),
            "this fleet's",
            "trust_domains_mixed",
        )
    # A CA the fleet root signed (here: a second issuing CA) is in the fleet's domain too.
    root = CertifiedKey(
        certificate=load_certificates_pem((data / "ca/root.pem").read_bytes())[0],
        private_key=load_private_key_pem((data / "ca/root.key").read_bytes()),
    )
    sub_ca = create_issuing_ca(root, "another CA under the fleet root", now=dt.datetime.now(dt.UTC))
    sub_pem, _ = write_pem(tmp_path / "sub.pem", sub_ca)
    refused(
        fleet("trust", "add-manufacturer", sub_pem, "--config", config),
        "was issued by this fleet's CA",
        "trust_domains_mixed",
    )

    # A bundle is checked whole: one bad certificate and nothing is added.
    ca_pem, _ = write_pem(tmp_path / "globex.pem", globex)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca_pem.read_bytes() + bootstrap_pem.read_bytes())
    refused(fleet("trust", "add-manufacturer", bundle, "--config", config), "not a CA")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    refused(fleet("trust", "add-manufacturer", garbage, "--config", config), "PEM")
    trusted = with_store(config, lambda store: store.list_manufacturer_cas())
    assert sha256_fingerprint(globex.certificate) not in {ca.sha256 for ca in trusted}


# -- fleet manifest ----------------------------------------------------------------
def test_manifest_import_dry_run_create_update(tmp_path: Path, config: Path) -> None:
    initech = make_manufacturer("Initech")
    boots = [make_bootstrap(initech, f"mf-{i}") for i in range(3)]
    csv_path = tmp_path / "manifest.csv"
    csv_path.write_text(manifest_csv(manifest_entry(b, model="TH-200", batch="w22") for b in boots))

    dry = ok(fleet("manifest", "import", csv_path, "--dry-run", "--config", config))
    assert "3 device(s), all valid; nothing imported" in dry
    refused(fleet("device", "show", "mf-0", "--config", config), "device_not_found")

    assert "3 device(s) created, 0 updated" in ok(
        fleet("manifest", "import", csv_path, "--config", config)
    )
    csv_path.write_text(manifest_csv(manifest_entry(b, model="TH-300") for b in boots))
    result = json.loads(ok(fleet("manifest", "import", csv_path, "--json", "--config", config)))
    assert result == {"entries": 3, "created": 0, "updated": 3}

    shown = json.loads(ok(fleet("device", "show", "mf-1", "--json", "--config", config)))
    assert shown["state"] == "registered"
    assert shown["model"] == "TH-300"
    assert shown["bootstrap_sha256"] == sha256_fingerprint(boots[1].certificate)
    listed = json.loads(
        ok(fleet("device", "list", "--state", "registered", "--json", "--config", config))
    )
    assert {"mf-0", "mf-1", "mf-2"} <= {d["device_id"] for d in listed}
    table = ok(fleet("device", "list", "--config", config))
    assert table.splitlines()[0].split() == [
        "DEVICE",
        "STATE",
        "MODEL",
        "BATCH",
        "PINNED",
        "UPDATED",
    ]


def test_a_bad_manifest_line_imports_nothing(tmp_path: Path, config: Path) -> None:
    umbrella = make_manufacturer("Umbrella")
    good = [manifest_entry(make_bootstrap(umbrella, f"bad-{i}")) for i in range(2)]
    text = manifest_csv([*good, ("bad/3", "c" * 64, "", "")])
    csv_path = tmp_path / "manifest.csv"
    csv_path.write_text(text)
    error = refused(fleet("manifest", "import", csv_path, "--config", config), "line 4:", "'/'")
    assert "nothing was imported" in error
    refused(fleet("device", "show", "bad-0", "--config", config), "device_not_found")

    clone = manifest_csv([good[0], ("bad-9", good[0].bootstrap_sha256, "", "")])
    csv_path.write_text(clone)
    refused(fleet("manifest", "import", csv_path, "--config", config), "line 3:", "clone")


# Found from outside: `fleet trust add-manufacturer /dev/zero` read until memory ran
# out (the CLI read the whole file), and a bad PEM's hint pointed a CLI user at the API
# description. Input files are read up to the size the API takes, then refused.
@pytest.mark.parametrize(
    ("command", "reason"),
    [(("trust", "add-manufacturer"), "pem_invalid"), (("trust", "add-intermediate"), "pem_invalid"),
     (("manifest", "import"), "manifest_invalid")],
)  # fmt: skip
def test_an_endless_or_oversized_input_file_is_refused_unread(
    tmp_path: Path, config: Path, command: tuple[str, ...], reason: str
) -> None:
    refused(fleet(*command, "/dev/zero", "--config", config), "larger than", reason)
    big = tmp_path / "big"
    big.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (33 << 20))
    refused(fleet(*command, big, "--config", config), "larger than", reason)


def test_a_garbage_pem_says_what_a_ca_bundle_is(tmp_path: Path, config: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nZZZZ\n-----END CERTIFICATE-----\n")
    error = refused(fleet("trust", "add-manufacturer", garbage, "--config", config), "pem_invalid")
    assert "BEGIN CERTIFICATE" in error
    assert "openapi" not in error


# Found from outside: `--issued-before 9999-12-31T23:59:59-05:00` (and `device renew
# --before` the same) died with an OverflowError traceback (the API had its own, fixed
# copy of the time rule), and `--batch ""` selected every device without a batch (the
# API refuses an empty selector, the console ignores it).
@pytest.mark.parametrize("option", ["--issued-before", "--before"])
def test_a_time_beyond_the_utc_calendar_is_a_usage_error(config: Path, option: str) -> None:
    when = "9999-12-31T23:59:59-05:00"
    args = (
        ("device", "revoke", "--issued-before", when, "--reason", "superseded", "--dry-run")
        if option == "--issued-before"
        else ("device", "renew", "--all", "--before", when)
    )
    result = fleet(*args, "--config", config)
    assert result.returncode == 2, result
    assert "outside the years 1-9999 in UTC" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_bulk_selector_selects_nothing(config: Path) -> None:
    ok(fleet("device", "token", "no-batch-1", "--out", config.parent / "nb.token",
             "--config", config))  # fmt: skip
    for option in ("--batch", "--model"):
        refused(
            fleet("device", "revoke", option, "", "--reason", "superseded", "--confirm",
                  "--config", config),
            "selection_empty", "is empty",
        )  # fmt: skip
    blank = fleet("device", "revoke", "--manufacturer", "", "--reason", "superseded", "--confirm",
                  "--config", config)  # fmt: skip
    assert blank.returncode == 2, blank  # no selector at all: a usage error
    assert "revoked" not in ok(fleet("device", "show", "no-batch-1", "--config", config))


def test_a_garbage_ceremony_file_is_named_with_what_to_give_instead(
    tmp_path: Path, config: Path
) -> None:
    """Found from outside: `fleet ca install-issuing --cert garbage` said to fix a setting
    in fleet.toml, and `sign-issuing --csr garbage` to send DER base64 for EST."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nZZZZ\n-----END CERTIFICATE-----\n")
    error = refused(fleet("ca", "install-issuing", "--cert", garbage, "--config", config),
                    "pem_invalid", "--cert", "sign-issuing --out")  # fmt: skip
    assert "fleet.toml" not in error
    root_dir = config.parent / "ca"
    error = refused(
        fleet("ca", "sign-issuing", "--root-dir", root_dir, "--csr", garbage,
              "--out", tmp_path / "out.pem"),
        "csr_invalid", "--csr", "rotate-issuing --csr-out",
    )  # fmt: skip
    assert "base64 for EST" not in error


def test_a_request_invalid_hint_points_a_cli_user_at_help(tmp_path: Path, config: Path) -> None:
    """The API's hint ("the API description is at /api/v1/openapi.json") was all a CLI
    user got for a bad value."""
    error = refused(
        fleet("admin", "create", "a b", "--role", "viewer", "--out", tmp_path / "creds",
              "--config", config),
        "request_invalid",
    )  # fmt: skip
    assert "--help" in error


@pytest.mark.parametrize("command", [("manifest", "import"), ("trust", "add-manufacturer")])
def test_a_missing_input_file_is_named_and_fleet_toml_is_not_blamed(
    tmp_path: Path, config: Path, command: tuple[str, str]
) -> None:
    missing = tmp_path / "missing.file"
    error = refused(fleet(*command, missing, "--config", config), f"cannot read {missing}")
    assert "fleet.toml" not in error  # the generic config hint sent people to the wrong file


# -- fleet device token ----------------------------------------------------------------
def test_token_is_printed_once_and_only_its_hash_is_stored(config: Path) -> None:
    out = ok(fleet("device", "token", "tok-1", "--expires-in", "2h", "--config", config))
    assert "Created device tok-1 (pending" in out
    assert "shown only this once" in out
    (token,) = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert len(token) == 43
    assert out.count(token) == 1

    # The database holds the SHA-256 of the token, never the token.
    data = config.parent
    for path in data.glob("fleet.db*"):  # the database, its WAL and shared memory
        assert token.encode() not in path.read_bytes(), path
    with sqlite3.connect(data / "fleet.db") as db:
        rows = db.execute(
            "SELECT token_sha256, expires_at FROM enrollment_tokens WHERE device_id = 'tok-1'"
        ).fetchall()
    assert rows[0][0] == hashlib.sha256(token.encode()).hexdigest()
    audit = with_store(config, lambda store: store.audit_records(device_id="tok-1"))
    assert [r.event.action for r in audit] == ["token_issue"]
    assert token not in json.dumps([r.event.detail for r in audit])

    # The stored hash is what the EST server checks, once.
    now = dt.datetime.now(dt.UTC)
    with_store(config, lambda s: s.consume_enrollment_token("tok-1", token_sha256(token), now))
    with pytest.raises(TokenInvalid):
        with_store(config, lambda s: s.consume_enrollment_token("tok-1", token_sha256(token), now))
    assert get_device(config, "tok-1").state is DeviceState.PENDING


def test_secrets_go_to_a_new_0600_file_with_out(config: Path, tmp_path: Path) -> None:
    device_file = tmp_path / "tok-3.token"
    out = ok(fleet("device", "token", "tok-3", "--out", device_file, "--config", config))
    # The hint is a command the agent accepts: --token-file needs --device-id.
    assert f"fleet-agent enroll ... --device-id tok-3 --token-file {device_file}" in out
    admin_file = tmp_path / "ci.token"
    out += ok(fleet("admin", "token", "ci-out", "--role", "viewer", "--out", admin_file,
                    "--config", config))  # fmt: skip
    for path in (device_file, admin_file):
        assert path.stat().st_mode & 0o777 == 0o600
        secret = path.read_text().strip()
        assert len(secret) == 43
        assert secret not in out  # written, never printed
    now = dt.datetime.now(dt.UTC)
    secret = device_file.read_text().strip()
    with_store(config, lambda s: s.consume_enrollment_token("tok-3", token_sha256(secret), now))

    # An existing file may hold the only copy of another secret: refused, nothing made.
    before = admin_file.read_bytes()
    refused(fleet("admin", "token", "ci-again", "--role", "viewer", "--out", admin_file,
                  "--config", config), "the file exists")  # fmt: skip
    refused(fleet("device", "token", "tok-4", "--out", admin_file, "--config", config),
            "the file exists")  # fmt: skip
    assert admin_file.read_bytes() == before
    names = json.loads(ok(fleet("admin", "list", "--json", "--config", config)))
    assert "ci-again" not in [c["name"] for c in names]
    refused(fleet("device", "show", "tok-4", "--config", config), "device_not_found")


def test_token_for_a_known_device_and_refusals(config: Path) -> None:
    add_pending(config, "tok-2")
    ok(fleet("device", "approve", "tok-2", "--config", config))
    issued = json.loads(ok(fleet("device", "token", "tok-2", "--json", "--config", config)))
    assert issued["device_created"] is False
    assert issued["device_id"] == "tok-2"
    expires = dt.datetime.fromisoformat(issued["expires_at"])
    assert (
        dt.timedelta(days=6, hours=23) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=7)
    )
    assert get_device(config, "tok-2").state is DeviceState.REGISTERED  # unchanged

    refused(fleet("device", "token", "bad/id", "--config", config), "'/'", "device_id_invalid")
    refused(fleet("device", "token", "tok-3", "--expires-in", "1y", "--config", config), "1y")
    add_pending(config, "tok-4")
    ok(fleet("device", "reject", "tok-4", "--config", config))
    refused(fleet("device", "token", "tok-4", "--config", config), "rejected")


# -- fleet device approve / reject ------------------------------------------------
def test_approve_and_reject_pending_devices(config: Path) -> None:
    add_pending(config, "wait-1")
    add_pending(config, "wait-2")

    assert "Approved device wait-1: now registered" in ok(
        fleet("device", "approve", "wait-1", "--config", config)
    )
    rejected = json.loads(ok(fleet("device", "reject", "wait-2", "--json", "--config", config)))
    assert rejected["state"] == "rejected"
    assert get_device(config, "wait-1").state is DeviceState.REGISTERED

    error = refused(
        fleet("device", "approve", "wait-1", "--config", config),
        "device wait-1 is registered, not pending; nothing changed",
        "device_not_pending",
    )
    assert "fleet device show wait-1" in error
    refused(fleet("device", "reject", "wait-2", "--config", config), "is rejected, not pending")
    refused(fleet("device", "approve", "ghost", "--config", config), "device_not_found", "ghost")
    assert get_device(config, "wait-2").state is DeviceState.REJECTED

    audit = with_store(config, lambda store: store.audit_records(device_id="wait-1"))
    (record,) = audit
    assert (record.event.action, record.event.outcome, record.event.reason) == (
        "approve",
        "done",
        "admin_approved",
    )
    assert record.event.actor.startswith("admin:")
    assert record.event.actor.endswith("@local")
    assert record.event.detail["held_for"] == "unknown_device_held"


def test_help_and_a_missing_config(tmp_path: Path) -> None:
    assert "HTTP Basic password" in ok(fleet("device", "token", "--help"))
    refused(fleet("device", "list", cwd=tmp_path), "no config file at fleet.toml", "fleet init")


# -- PostgreSQL: `fleet db upgrade` before anything else ---------------------------------
def test_db_upgrade_on_postgresql(config: Path, postgres_server: PostgresServer) -> None:
    schema = fresh_schema()
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    env = {"FLEET_STORE_URL": f"{postgres_server.url}?options=-csearch_path%3D{schema}"}
    # Every command refuses an unmigrated database and names the command to run.
    refused(fleet("device", "list", "--config", config, env=env), "fleet db upgrade")
    assert "upgraded from version 0 to" in ok(fleet("db", "upgrade", "--config", config, env=env))
    assert "nothing to do" in ok(fleet("db", "upgrade", "--config", config, env=env))
    assert json.loads(ok(fleet("device", "list", "--json", "--config", config, env=env))) == []
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {}.fleet_schema SET version = version + 1").format(
                sql.Identifier(schema)
            )
        )
    refused(fleet("db", "upgrade", "--config", config, env=env), "newer")
    refused(fleet("device", "list", "--config", config, env=env), "newer")


def test_db_upgrade_on_sqlite_has_nothing_to_do(config: Path) -> None:
    assert "nothing to do" in ok(fleet("db", "upgrade", "--config", config))


# -- the same commands on Redis ----------------------------------------------------------
@pytest.mark.needs_binary("redis-server")
def test_admin_commands_on_redis(tmp_path: Path, config: Path, redis_server: RedisServer) -> None:
    # A database of its own on the session's server, emptied first.
    url = redis_server.url.removesuffix("/0") + "/7"

    async def flush() -> None:
        async with Redis.from_url(url) as client:
            await client.flushdb()

    asyncio.run(flush())
    env = {"FLEET_STORE_URL": url}

    hooli = make_manufacturer("Hooli")
    ca_pem, _ = write_pem(tmp_path / "hooli.pem", hooli)
    ok(fleet("trust", "add-manufacturer", ca_pem, "--name", "Hooli", "--config", config, env=env))
    listed = json.loads(ok(fleet("trust", "list", "--json", "--config", config, env=env)))
    assert [ca["name"] for ca in listed] == ["Hooli"]

    csv_path = tmp_path / "manifest.csv"
    csv_path.write_text(manifest_csv([manifest_entry(make_bootstrap(hooli, "rd-1"))]))
    assert "1 device(s) created" in ok(
        fleet("manifest", "import", csv_path, "--config", config, env=env)
    )
    out = ok(fleet("device", "token", "rd-2", "--config", config, env=env))
    (token,) = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    add_pending(config, "rd-3", **env)
    ok(fleet("device", "approve", "rd-3", "--config", config, env=env))

    devices = json.loads(ok(fleet("device", "list", "--json", "--config", config, env=env)))
    assert {d["device_id"]: d["state"] for d in devices} == {
        "rd-1": "registered",
        "rd-2": "pending",
        "rd-3": "registered",
    }

    async def everything_stored() -> str:
        async with Redis.from_url(url, decode_responses=True) as client:
            values: list[object] = []
            async for key in client.scan_iter():
                kind = await client.type(key)
                if kind == "hash":
                    values.append(await client.hgetall(key))
                elif kind == "string":
                    values.append(await client.get(key))
                elif kind == "zset":
                    values.append(await client.zrange(key, 0, -1))
                elif kind == "list":
                    values.append(await client.lrange(key, 0, -1))
                elif kind == "set":
                    values.append(sorted(await client.smembers(key)))
                else:
                    values.append(kind)
            return json.dumps(values)

    stored = asyncio.run(everything_stored())
    assert token_sha256(token) in stored
    assert token not in stored
    now = dt.datetime.now(dt.UTC)
    with_store(
        config, lambda s: s.consume_enrollment_token("rd-2", token_sha256(token), now), **env
    )
    # Nothing of this went to the SQLite database of the same data directory.
    assert "rd-1" not in ok(fleet("device", "list", "--config", config))


def test_admin_disable_takes_the_fingerprint_as_listed(config: Path) -> None:
    ok(fleet("admin", "token", "prefix-bot", "--role", "viewer", "--config", config))
    listed = json.loads(ok(fleet("admin", "list", "--json", "--config", config)))
    mine = next(c for c in listed if c["name"] == "prefix-bot")
    shown = mine["sha256"][:16]  # what the table shows
    refused(fleet("admin", "disable", shown[:4], "--config", config), "fingerprint_invalid")
    refused(fleet("admin", "disable", "0" * 16, "--config", config), "admin_not_found")
    spelled = ":".join(shown[i : i + 2] for i in range(0, 16, 2)).upper()
    assert mine["sha256"] in ok(fleet("admin", "disable", spelled, "--config", config))
    listed = json.loads(ok(fleet("admin", "list", "--json", "--config", config)))
    assert next(c for c in listed if c["name"] == "prefix-bot")["disabled"] is True
