"""Seeded fuzz of everything a client or admin sends, against live servers: counts by status.

Starts `fleet serve` in TLS mode and a second one in proxy mode (loopback
only, temporary directory, both stopped by PID on the way out), then sends N
inputs per target, in parallel shards with seeds ``seed + 1000*target + shard``:

  csr                mutated CSRs (half re-signed) to simpleenroll, base64 or raw
  client_cert_mtls   mutated bootstrap certificates presented in the TLS handshake
  client_cert_proxy  mutated certificates in the trusted proxy's X-SSL-Client-Cert
  ocsp_post          mutated OCSP requests, POSTed as DER
  ocsp_get           mutated OCSP requests, as the base64 path of a GET
  admin_json         generated and mutated JSON bodies to the admin API

It prints, per target, how many answers had each status (``unusable``: the
client's OpenSSL refused the mutated certificate, nothing was sent;
``tls_refused``: the handshake failed), the total, and whether either server
logged a traceback or an error. It exits 1 on any 5xx or logged error.

    .venv/bin/python bench/fuzz_est.py [--inputs N] [--shards K] [--seed S] [--targets a,b]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.admin.conftest import make_admin
from tests.integration.est.conftest import Fleet, running_fleet, trust_manufacturer
from tests.support import hostile
from tests.support.fuzz_targets import TARGETS, Counts, Target, make_target


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=20_000, help="inputs per target")
    parser.add_argument("--shards", type=int, default=4, help="parallel senders per target")
    parser.add_argument("--seed", type=int, default=7030)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    return parser.parse_args(argv)


def fuzz(target: Target, names: list[str], args: argparse.Namespace) -> dict[str, Counts]:
    jobs = []
    with ThreadPoolExecutor(max_workers=args.shards * len(names)) as pool:
        for index, name in enumerate(names):
            per_shard = [args.inputs // args.shards] * args.shards
            per_shard[0] += args.inputs - sum(per_shard)
            for shard, count in enumerate(per_shard):
                seed = args.seed + 1000 * index + shard
                work = target.work / f"{name}-{shard}"
                work.mkdir(exist_ok=True)
                shard_target = Target(**{**target.__dict__, "work": work})
                jobs.append((name, pool.submit(_shard, shard_target, name, seed, count)))
        results: dict[str, Counts] = {name: collections.Counter() for name in names}
        for name, job in jobs:
            results[name].update(job.result())
    return results


def _shard(target: Target, name: str, seed: int, count: int) -> Counts:
    failures: list[str] = []
    counts = TARGETS[name](target, hostile.Mutator(seed), count, failures)
    for failure in failures[:3]:
        print(f"  5xx in {name} (seed {seed}): {failure[:160]}", flush=True)
    return counts


def log_problems(fleet: Fleet) -> int:
    log = fleet.server.log()
    return log.count("Traceback") + log.count('"level": "error"')


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.targets.split(",") if n]
    print(f"seed {args.seed}; {args.inputs} inputs per target; {args.shards} shards per target")
    proxy_env = {"FLEET_SERVER_MODE": "proxy", "FLEET_SERVER_TRUSTED_PROXIES": '["127.0.0.1"]'}
    with tempfile.TemporaryDirectory(prefix="fleet-fuzz-") as tmp:
        base = Path(tmp)
        with (
            running_fleet(base / "tls") as fleet,
            running_fleet(base / "proxy", env=proxy_env, scheme="http") as proxied,
        ):
            trust_manufacturer(proxied.server, fleet.manufacturer, "Acme-shared")
            admin = make_admin(fleet)
            target = make_target(fleet, proxied=proxied, admin_token=admin.tokens["admin"])
            started = time.monotonic()
            results = fuzz(target, names, args)
            elapsed = time.monotonic() - started
            problems = log_problems(fleet) + log_problems(proxied)
    total = sum(sum(c.values()) for c in results.values())
    fives = 0
    print(f"\n{'target':<18} {'inputs':>7}  counts by status")
    for name, counts in results.items():
        fives += sum(v for k, v in counts.items() if isinstance(k, int) and k >= 500)
        ordered = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda i: str(i[0])))
        print(f"{name:<18} {sum(counts.values()):>7}  {ordered}")
    print(f"\ntotal inputs {total} in {elapsed:.0f} s; 5xx: {fives}; "
          f"tracebacks or errors in the server logs: {problems}")  # fmt: skip
    return 1 if fives or problems else 0


if __name__ == "__main__":
    sys.exit(main())
