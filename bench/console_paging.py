"""How fast the console's device list pages at 100,000 devices (SQLite, one worker).

A real `fleet serve` on a fresh data directory holding N devices (manifest
import: 5 models, 100 batches of 1 %), plus N/100 pending devices. A signed-in
console session (a real admin token, through the sign-in form) then asks for
pages of /ui/devices: the first page, a deep page by keyset cursor, an id
prefix search, sparse and dense filters, and a filter nothing matches (the
worst case: the whole table is read to find out). Each figure is the median
and the 95th percentile of R requests, each on a new HTTPS connection (TLS
handshake included, as urllib does), the full page rendered (50 rows).

    .venv/bin/python bench/console_paging.py [--devices 100000] [--requests 30]

It prints figures and asserts no timing; it exits 1 when a request failed.
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
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
from fleet.store.protocol import Store
from fleet.store.records import AdminRole, Device, DeviceState, ManifestEntry
from tests.support.fleet_server import FleetServer, make_data_dir


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
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-console-bench-") as work:
        config = make_data_dir(Path(work) / "data")
        server = FleetServer(config)
        started = time.perf_counter()
        server.store(lambda s: populate(s, args.devices))
        print(f"populated {args.devices} devices in {time.perf_counter() - started:.1f} s")
        now = dt.datetime.now(dt.UTC)
        token = server.store(
            lambda s: create_admin_token(s, "bench", AdminRole.VIEWER, actor="bench", now=now)
        )
        server.start()
        try:
            return measure(server, token, args.devices, args.requests)
        finally:
            server.stop()


def measure(server: FleetServer, token: str, devices: int, requests: int) -> int:
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
    failed = 0
    print(f"GET /ui/devices, {requests} requests each (ms): median  p95   rows")
    for name, query in cases.items():
        timings = []
        rows = 0
        for _ in range(requests):
            started = time.perf_counter()
            with browser.open(f"{base}/ui/devices?{query}", timeout=60) as reply:
                page = reply.read().decode()
                failed += reply.status != 200 or not reply.url.startswith(f"{base}/ui/devices")
            timings.append((time.perf_counter() - started) * 1000)
            rows = page.count('<th scope="row"><a href="/ui/devices/')
        timings.sort()
        p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
        print(f"  {name:38s} {statistics.median(timings):7.1f} {p95:6.1f} {rows:5d}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
