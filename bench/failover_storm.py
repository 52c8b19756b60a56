"""kill -9 of a fleet node during a first-boot enrollment storm, on real hosts.

The multi-host cluster of tests/support/cluster.py (network namespaces, needs
root): HAProxy with docs/haproxy/fleet.cfg in front of two `fleet serve`
nodes on one Redis store. ``--devices`` devices (the device agent's EST
client, ``--threads`` at a time, from their own host) enroll through the
balancer; node A is killed with SIGKILL once a third of them have finished;
the others retry through the balancer and land on node B. Then every
certificate a device received is looked up in the store (must be there, good,
signed by the issuing CA).

    .venv/bin/python bench/failover_storm.py                 # 1,000 devices (issue 14)
    .venv/bin/python bench/failover_storm.py --devices 200

Prints figures (enrollments/s before and after the kill, retries, devices
held); asserts no timing. Exits 1 if an acknowledged certificate is missing
from the store or a device never got a certificate (held for approval included:
a device retrying with its key after a lost reply must get its certificate again).
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support when run as bench/failover_storm.py

from tests.support.cluster import build_cluster
from tests.support.netns import network
from tests.support.storm import check_storm, run_storm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="fleet serve --workers per node")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    args = parser.parse_args()
    print(
        f"seed {args.seed}; {args.devices} devices, {args.threads} at once, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="fleet-storm-") as tmp, network() as net:
        started = time.monotonic()
        cluster = build_cluster(net, Path(tmp), workers=args.workers)
        names = [f"storm-{i:05d}" for i in range(args.devices)]
        random.Random(args.seed).shuffle(names)
        boots = cluster.add_devices(names)
        took = time.monotonic() - started
        print(f"cluster up and {args.devices} devices in the manifest in {took:.1f} s")
        storm = run_storm(
            cluster, boots, kill_after=args.devices // 3, threads=args.threads, seed=args.seed
        )
        after = len(storm.received) - storm.before_kill
        print(
            f"before kill -9 of node A: {storm.before_kill} enrolled in {storm.killed_after:.1f} s "
            f"({storm.before_kill / storm.killed_after:.0f}/s over 2 nodes)"
        )
        rest = storm.seconds - storm.killed_after
        print(f"after:  {after} enrolled in {rest:.1f} s ({after / rest:.0f}/s on node B alone)")
        print(
            f"retried after an error: {len(storm.retried)} devices; held for approval "
            f"(should be 0: a retry with the same key gets its certificate again): "
            f"{len(storm.held)}"
        )
        check_storm(cluster, storm, names, via="fleet-b")
        missing = args.devices - len(storm.received)
        print(
            f"acknowledged certificates lost: 0 of {len(storm.received)} (all in the store, good); "
            f"devices without an answer: {missing}"
        )
        return 1 if missing else 0


if __name__ == "__main__":
    import pytest

    try:
        sys.exit(main())
    except pytest.skip.Exception as skipped:  # not root, no `ip netns`: say why
        print(f"cannot run: {skipped.msg}", file=sys.stderr)
        sys.exit(2)
