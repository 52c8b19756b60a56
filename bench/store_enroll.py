"""Enrollments/s and CPU per enrollment of one `fleet serve` on each store backend.

The same load as bench/est_enroll.py's "fleet direct" scenario (fresh TCP +
TLS 1.3 with a bootstrap client certificate, one POST of a CSR, a real
enrollment that must succeed), run against one `fleet serve --workers 1`
whose store is, in turn:

  sqlite      the embedded default (the baseline of the ratios)
  postgres    PostgreSQL 15 (initdb + pg_ctl here, fsync on, synchronous_commit on)
  redis       redis-server with appendonly yes + appendfsync always (what fleet
              accepts as a system of record)

CPU is fleet's (every process of `fleet serve`) and, separately, the store
server's (the postmaster and its backends, or redis-server). Figures only; no
timing is asserted. Exits 1 when a request failed.

    .venv/bin/python bench/store_enroll.py [--requests N] [--stores sqlite,postgres,redis]
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cryptography.hazmat.primitives import serialization
from est_enroll import Bench, Device, Target, make_devices

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import CertifiedKey
from fleet.records import ManufacturerCA
from fleet.store.postgres import upgrade_schema
from tests.support.factory import make_manufacturer
from tests.support.fleet_server import FleetServer, make_data_dir, run_store
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer

STORES = ("sqlite", "postgres", "redis")


@contextmanager
def store_server(name: str, tmp: Path) -> Iterator[tuple[dict[str, str], list[int]]]:
    """The env that points fleet at the store, and the store server's root pids."""
    if name == "sqlite":
        yield {}, []
    elif name == "postgres":
        pg = PostgresServer()
        try:
            pg.start()
            upgrade_schema(pg.url)
            postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
            yield {"FLEET_STORE_URL": pg.url}, [postmaster]
        finally:
            pg.stop()
            pg.remove()
    else:
        redis = RedisServer(tmp / "redis")
        try:
            redis.start()
            assert redis._proc is not None
            yield {"FLEET_STORE_URL": redis.url}, [redis._proc.pid]
        finally:
            redis.stop()


def run_one(
    name: str, args: argparse.Namespace, tmp: Path, manufacturer: CertifiedKey
) -> dict[str, object]:
    work = tmp / name
    config = make_data_dir(work / "data")
    with store_server(name, work) as (env, store_pids):
        trust_manufacturer_env(config, manufacturer, env)
        devices, entries = make_devices(
            work / "devices", manufacturer, name, args.warmup + args.requests
        )
        now = dt.datetime.now(dt.UTC)
        run_store(config, lambda store: store.import_manifest(entries, now), env=env)
        bench = Bench(args, work, config, config.parent / "ca/root.pem")
        server = FleetServer(config, env=env, workers=1)
        server.start()
        try:
            assert server.proc is not None
            result = measure(bench, server, store_pids, devices, args.warmup)
        finally:
            server.stop()
    return result


def trust_manufacturer_env(config: Path, manufacturer: CertifiedKey, env: dict[str, str]) -> None:
    cert = manufacturer.certificate
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    ca = ManufacturerCA(sha256_fingerprint(cert), "Bench", pem, dt.datetime.now(dt.UTC))
    run_store(config, lambda store: store.add_manufacturer_ca(ca), env=env)


def measure(
    bench: Bench, server: FleetServer, store_pids: list[int], devices: list[Device], warmup: int
) -> dict[str, object]:
    assert server.proc is not None
    parts = {"fleet": [server.proc.pid]}
    if store_pids:
        parts["store"] = store_pids
    target = Target("fleet", "fleet", server.port, parts)
    (result,) = bench.measure([target], {"fleet": devices}, warmup)
    n = max(result.requests, 1)
    return {
        "requests": result.requests,
        "ok": result.ok,
        "failed": result.failed,
        "failures": result.failures,
        "enrollments_per_second": round(result.rate, 1),
        "fleet_cpu_ms_per_enrollment": round(1000 * result.cpu_parts.get("fleet", 0.0) / n, 3),
        "store_cpu_ms_per_enrollment": round(1000 * result.cpu_parts.get("store", 0.0) / n, 3),
        "kernel_threads_ms_per_enrollment": round(1000 * result.kernel_threads_seconds / n, 3),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="measured, per store")
    parser.add_argument("--warmup", type=int, default=50, help="uncounted requests first")
    parser.add_argument("--concurrency", type=int, default=6, help="client threads")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated subset")
    parser.add_argument("--group", default="X25519", help="TLS key exchange group")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="per load phase")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measured batches (one store at a time: 1)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = set(stores) - set(STORES)
    if unknown:
        print(f"unknown store(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-store-"))
    figures: dict[str, dict[str, object]] = {}
    started = time.monotonic()
    try:
        manufacturer = make_manufacturer("Bench")
        print(
            f"{args.warmup} warm-up + {args.requests} measured enrollments per store, "
            f"{args.concurrency} client threads, one `fleet serve --workers 1`"
        )
        for name in stores:
            figures[name] = run_one(name, args, tmp, manufacturer)
            f = figures[name]
            print(
                f"  {name:<9} {f['enrollments_per_second']:>7} enrollments/s   "
                f"fleet {f['fleet_cpu_ms_per_enrollment']:6.2f} ms CPU/enrollment   "
                f"store server {f['store_cpu_ms_per_enrollment']:6.2f} ms   "
                f"{f['failed']} failed",
                flush=True,
            )
        base = figures.get("sqlite")
        if base:
            for name, f in figures.items():
                if name == "sqlite":
                    continue
                rate = float(f["enrollments_per_second"]) / max(
                    float(base["enrollments_per_second"]), 1e-9
                )
                cpu = (
                    float(f["fleet_cpu_ms_per_enrollment"])
                    + float(f["store_cpu_ms_per_enrollment"])
                ) / max(float(base["fleet_cpu_ms_per_enrollment"]), 1e-9)
                print(
                    f"  {name} vs sqlite: {rate:.2f}x the enrollments/s, "
                    f"{cpu:.2f}x the CPU per enrollment (fleet + store server)"
                )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"total time {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(f["failed"] for f in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
