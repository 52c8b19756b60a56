"""How fast the console's pages are at 100,000 devices and 50,000 audit records.

A real `fleet serve` on a fresh data directory holding N devices (manifest
import: 5 models, 100 batches of 1 %), plus N/100 pending devices. A signed-in
console session (a real admin token, through the sign-in form) then asks for
pages of /ui/devices: the first page, a deep page by keyset cursor, an id
prefix search, sparse and dense filters, and a filter nothing matches (the
worst case: the whole table is read to find out). Each figure is the median
and the 95th percentile of R requests, each on a new HTTPS connection (TLS
handshake included, as urllib does), the full page rendered (50 rows).

Then the Overview and the Pending page (which count and list devices by state:
indexes, never a walk of every device), and the Audit page over A audit
records: newest page, a deep page, a filter that matches the oldest record
only, a common filter, a date range. Each figure is also printed as a ratio
to the device list's first page of the same run, so a page that grows with
the fleet or the log shows as a large ratio. ``--backend redis`` runs it all
on a real redis-server started here.

    .venv/bin/python bench/console_paging.py [--devices 100000] [--audit 50000]
        [--requests 30] [--backend sqlite|redis]

It prints figures and asserts no timing; it exits 1 when a request failed.
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.cookiejar
import re
import ssl
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.support when run as bench/console_paging.py

from fleet.authority.admins import create_admin_token
from fleet.records import AdminRole, AuditEvent, Device, DeviceState, ManifestEntry
from fleet.store.protocol import Store
from fleet.store.sqlite import SqliteStore
from tests.support.fleet_server import FleetServer, make_data_dir
from tests.support.redis_server import RedisServer


async def populate_audit(store: Store, count: int) -> None:
    """``count`` audit records; the first (oldest) is the only one by admin:rare."""
    now = dt.datetime.now(dt.UTC)
    await store.append_audit(AuditEvent(now, "admin:rare", "trust_add", "done", "added"))
    noise = AuditEvent(now, "system", "renew", "allowed", "renewal", device_id="dev-000001")
    # SQLite commits a batch of racing appends together; Redis appends by compare-and-set.
    batch = 500 if isinstance(store, SqliteStore) else 1
    for _ in range(0, count - 1, batch):
        await asyncio.gather(*(store.append_audit(noise) for _ in range(batch)))


async def populate(store: Store, count: int) -> None:
    now = dt.datetime.now(dt.UTC)
    chunk = 5000
    for start in range(0, count, chunk):
        entries = [
            ManifestEntry(f"dev-{n:06d}", f"{n:064x}", f"m{n % 5}", f"b{n % 100:02d}")
            for n in range(start, min(start + chunk, count))
        ]
        await store.import_manifest(entries, now)
    for n in range(0, count, 100):
        await store.add_pending_device(
            Device(f"dev-{n:06d}p", DeviceState.PENDING, now, now, state_reason="unknown_device")
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--audit", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-console-bench-") as work:
        redis = None
        env: dict[str, str] = {}
        if args.backend == "redis":
            redis = RedisServer(Path(work) / "redis")
            redis.start()
            env["FLEET_STORE_URL"] = redis.url
        try:
            config = make_data_dir(Path(work) / "data")
            server = FleetServer(config, env=env)
            started = time.perf_counter()
            server.store(lambda s: populate(s, args.devices))
            server.store(lambda s: populate_audit(s, args.audit))
            took = time.perf_counter() - started
            print(
                f"{args.backend}: {args.devices} devices, {args.audit} audit records, {took:.1f} s"
            )
            now = dt.datetime.now(dt.UTC)
            token = server.store(
                lambda s: create_admin_token(s, "bench", AdminRole.ADMIN, actor="bench", now=now)
            )
            server.start()
            try:
                return measure(server, token, args.devices, args.audit, args.requests, args.backend)
            finally:
                server.stop()
        finally:
            if redis is not None:
                redis.stop()


def measure(
    server: FleetServer, token: str, devices: int, audit: int, requests: int, backend: str
) -> int:
    context = ssl.create_default_context(cafile=str(server.root_pem))
    browser = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
    )
    base = server.base
    form = browser.open(f"{base}/ui/login", timeout=30).read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    body = urllib.parse.urlencode({"csrf": csrf.group(1), "token": token}).encode()
    browser.open(f"{base}/ui/login", body, timeout=30).read()
    deep = f"dev-{devices * 9 // 10:06d}"
    cases = {
        "first page": "",
        f"deep page (after={deep})": f"after={deep}",
        "id prefix dev-0500": "q=dev-0500",
        "state=pending (1 %)": "state=pending",
        "model=m3 (20 %)": "model=m3",
        "batch=b42 (1 %)": "batch=b42",
        "batch=b42 deep (after=dev-090000)": "batch=b42&after=dev-090000",
        "batch nothing matches (full scan)": "batch=none",
    }
    if backend == "redis":
        # Redis has no index of model or batch: a filter nothing matches walks every
        # device hash (about a minute at 100,000), so it is left out there.
        del cases["batch nothing matches (full scan)"]
    today = dt.datetime.now(dt.UTC).date()
    pages = {f"devices: {name}": f"devices?{query}" for name, query in cases.items()}
    pages |= {
        "overview (counts by state, chart, brokers)": "",
        "pending (the approval queue)": "pending",
        "audit: newest page": "audit",
        f"audit: deep page (before={audit // 50})": f"audit?before={audit // 50}",
        "audit: actor=admin:rare (the oldest only)": "audit?actor=admin:rare",
        "audit: action=renew (nearly all)": "audit?action=renew",
        "audit: since today": f"audit?since={today}",
    }
    failed = 0
    baseline = 0.0
    print(f"GET /ui/..., {requests} requests each (ms):       median    p95  ratio   rows")
    for name, path in pages.items():
        timings = []
        rows = 0
        for _ in range(requests):
            started = time.perf_counter()
            with browser.open(f"{base}/ui/{path}", timeout=120) as reply:
                page = reply.read().decode()
                failed += reply.status != 200 or "/ui/login" in reply.url
            timings.append((time.perf_counter() - started) * 1000)
            rows = page.count('<tr><th scope="row">') + page.count('<tr><td class="num">')
        timings.sort()
        median = statistics.median(timings)
        baseline = baseline or median  # the device list's first page
        p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
        print(f"  {name:44s} {median:7.1f} {p95:6.1f} {median / baseline:6.1f} {rows:5d}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
