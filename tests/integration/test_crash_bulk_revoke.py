"""kill -9 of `fleet device revoke --batch` in the middle, several times, then the
same command again: every revoked device has its feed event and exactly one audit
record, the audit chain verifies, and the rerun finishes the batch.

Before each revocation and its audit record were one write, a kill between the
two left a device revoked and never audited (the rerun found it revoked and had
nothing to do); tests/contract/test_audited_changes.py shows that deterministically.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from fleet.authority.audit import verify_audit_log
from fleet.records import DeviceFilter, DeviceState, ManifestEntry
from fleet.store.protocol import Store
from tests.support.fleet_server import make_data_dir, run_store

BATCH = 240
KILLS = 3


def _feed_head(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM revocation_feed").fetchone()
        return int(head)
    finally:
        conn.close()


async def _fleet(store: Store) -> None:
    now = dt.datetime.now(dt.UTC)
    entries = [
        ManifestEntry(f"d{i:04d}", f"{i:064x}", batch="b1" if i < BATCH else "b2")
        for i in range(BATCH + 20)
    ]
    await store.import_manifest(entries, now)


async def _consistent(store: Store) -> set[str]:
    """The invariants; the devices revoked so far."""
    _, problems = await verify_audit_log(store)
    assert problems == [], problems
    revoked = {
        d.device_id
        for d in await store.list_devices(DeviceFilter(state=DeviceState.REVOKED), limit=10_000)
    }
    fed = [e.device_id for e in await store.feed_since(0, limit=10_000)]
    assert sorted(fed) == sorted(revoked), "a revocation without exactly one feed event"
    audited = [
        r.event.device_id for r in await store.audit_records(limit=10_000)
        if r.event.action == "revoke"
    ]  # fmt: skip
    assert sorted(audited) == sorted(revoked), (
        f"revoked but not audited once: {sorted(set(revoked) ^ set(audited))[:5]}"
    )
    assert all(d.startswith("d0") and int(d[1:]) < BATCH for d in revoked)
    return revoked


def test_bulk_revoke_killed_midway_is_consistent_and_finishes(tmp_path: Path) -> None:
    seed = int(os.environ.get("FLEET_TEST_SEED", random.randrange(2**32)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    config = make_data_dir(tmp_path / "data")
    db = config.parent / "fleet.db"
    assert db.exists(), "the SQLite store is expected beside fleet.toml"
    run_store(config, _fleet)
    env = {**os.environ, "FLEET_CONFIG": str(config)}
    command = [
        sys.executable, "-m", "fleet", "device", "revoke", "--batch", "b1",
        "--reason", "keyCompromise", "--confirm",
    ]  # fmt: skip
    killed = 0
    for _ in range(KILLS):
        target = _feed_head(db) + rng.randrange(5, BATCH // (KILLS + 1))
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and _feed_head(db) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.kill()  # SIGKILL: no cleanup of any kind
            killed += 1
        proc.wait(timeout=10)
        run_store(config, _consistent)
    assert killed, "the command finished before any kill; raise BATCH"
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    revoked = run_store(config, _consistent)
    assert len(revoked) == BATCH
