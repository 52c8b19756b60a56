"""Scale out on real hosts: enrollments/s and CPU per enrollment with 1 and 2 fleet nodes
per store engine, and revoke -> kick latency with many devices over 2 broker nodes.

The multi-host cluster of tests/support/cluster.py (network namespaces, needs
root): HAProxy with docs/haproxy/fleet.cfg in front of two `fleet serve`
nodes and two Mosquitto nodes (plugin + sidecar), the store on its own host.
One cluster per engine, one after the other:

  sqlite      one file on the machine's disk: 1 node only (a SQLite file is
              not shared between hosts)
  redis       redis-server persisting every write (appendonly yes,
              appendfsync always)
  postgresql  a primary and a synchronous standby (`fleet db upgrade` first);
              skipped with the reason where fleet cannot open it yet

enroll      ``--enrollments`` first enrollments (the device agent's EST
            client, ``--threads`` at once over ``--client-processes`` forked
            processes, from the device host) through the balancer, with node
            B stopped (1 node), then again with node B back and marked up by
            HAProxy (2 nodes). Reported: enrollments/s (wall), CPU per
            enrollment of the `fleet serve` processes (utime+stime from /proc
            of each node's process tree) and of the store's server
            processes, separately.
kick        on ``--kick-engine``'s cluster: ``--devices`` enrolled devices hold
            an MQTT session, half on broker node A and half on node B (each
            connected straight to its node: the balancer's maxconn stays
            that of docs/haproxy/fleet.cfg); each broker's RLIMIT_NOFILE is
            raised with prlimit. ``--revocations`` of them are revoked one by
            one through the store, as `fleet device revoke` does, alternating
            nodes, timed from the store's acknowledgement to the moment the
            device's TCP connection is closed by its broker. The devices'
            side is one asyncio process (this one) on the device host.

    .venv/bin/python bench/scale_out.py                                # all engines, 10,000 devices
    .venv/bin/python bench/scale_out.py --devices 2000 --enrollments 300
    .venv/bin/python bench/scale_out.py --engines redis --devices 20 --enrollments 10

Targets (issue 14): revoke -> kick p99 <= 100 ms with the devices spread over 2
broker nodes (a verdict line). Enrollment figures are printed side by side,
not judged. Asserts no timing; exits 1 if an enrollment or a revocation
failed, 2 if the cluster cannot be built here (not root, no `ip netns`).
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support when run as bench/scale_out.py

from broker_revoke import P99_TARGET_MS, percentile
from scale_out_enroll import (
    EnrollFigures,
    enroll_all,
    measure_enrollments,
    start_node_b,
    stop_node_b,
)
from scale_out_kick import KickFigures, measure_kicks

from tests.support.cluster import STORE_ENGINES, build_cluster
from tests.support.netns import network

ENGINES = ("sqlite", "redis", "postgresql")
ONE_NODE_ONLY = {"sqlite"}


# -- one engine's cluster -------------------------------------------------------------------


@dataclasses.dataclass
class EngineRun:
    engine: str
    skipped: str = ""
    enroll: list[EnrollFigures] = dataclasses.field(default_factory=list)
    kick: KickFigures | None = None


def run_engine(engine: str, args: argparse.Namespace, kick: bool) -> EngineRun:
    run = EngineRun(engine)
    print(f"{engine}:", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"fleet-scale-{engine}-") as tmp, network() as net:
        try:
            cluster = build_cluster(net, Path(tmp), engine=engine, workers=args.workers)
        except Exception as error:  # the engine cannot start here: say why, go on
            run.skipped = _reason(error)
            print(f"  skipped: {run.skipped}", flush=True)
            return run
        phases = 1 if engine in ONE_NODE_ONLY else 2
        names = [f"{engine}-{i:05d}" for i in range(args.enrollments * (phases + 1))]
        kick_names = [f"kick-{i:05d}" for i in range(args.devices)] if kick else []
        boots = cluster.add_devices(names + kick_names)
        warmup, *batches = [names[i :: phases + 1] for i in range(phases + 1)]
        stop_node_b(cluster)
        enroll_all(cluster, {n: boots[n] for n in warmup}, args.threads)  # warm-up, not timed
        for nodes, batch in enumerate(batches, start=1):
            if nodes == 2:
                start_node_b(cluster)
            figures = measure_enrollments(
                cluster,
                engine,
                nodes,
                {n: boots[n] for n in batch},
                args.threads,
                args.client_processes,
            )
            run.enroll.append(figures)
            print(f"  {_enroll_line(figures)}", flush=True)
        if kick:  # on the nodes of the last row
            run.kick = measure_kicks(
                cluster, {n: boots[n] for n in kick_names}, args.revocations, args.threads
            )
    return run


def _reason(error: Exception) -> str:
    """The first line of an error, and the last line of the log it carries (if any)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


# -- report -----------------------------------------------------------------------------------


def _enroll_line(f: EnrollFigures) -> str:
    store = (
        f"{f.per_enrollment_ms(f.store_cpu):5.2f} ms" if f.store_cpu is not None else "in-process"
    )
    return (
        f"{f.engine:10s} {f.nodes} node(s): {f.enrolled:5d} enrolled in {f.seconds:6.1f} s"
        f" = {f.rate:6.1f} enrollments/s   fleet CPU {f.per_enrollment_ms(f.fleet_cpu):5.2f}"
        f" ms/enrollment   store CPU {store}/enrollment"
        f"   (failed {f.failed}, retried {f.retried})"
    )


def report(runs: list[EngineRun], args: argparse.Namespace) -> int:
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}; devices, balancer,"
        f" fleet nodes, brokers and store all share this machine"
    )
    print(
        f"enrollments through HAProxy ({args.enrollments} per row, {args.threads} at once from"
        f" {args.client_processes} client process(es),"
        f" `fleet serve --workers {args.workers}` per node):"
    )
    failed = 0
    for run in runs:
        if run.skipped:
            print(f"  {run.engine:10s} skipped: {run.skipped}")
        for figures in run.enroll:
            print(f"  {_enroll_line(figures)}")
            failed += figures.failed
    by_key = {(f.engine, f.nodes): f for run in runs for f in run.enroll}
    for engine in ENGINES:
        one, two = by_key.get((engine, 1)), by_key.get((engine, 2))
        if one and two and one.rate:
            print(f"  {engine}: 2 nodes / 1 node = {two.rate / one.rate:.2f}x enrollments/s")
    for run in runs:
        kick = run.kick
        if kick is None:
            continue
        every = [ms for values in kick.latencies.values() for ms in values]
        print(
            f"revoke -> kick on {run.engine}, {kick.connected} devices connected over 2 broker"
            f" nodes (RLIMIT_NOFILE {kick.nofile} each), timed from the store's acknowledgement:"
        )
        for node, values in kick.latencies.items():
            if values:
                print(
                    f"  {node}: {len(values):4d} kicks  p50 {percentile(values, 0.5):6.1f} ms"
                    f"   p99 {percentile(values, 0.99):6.1f} ms   max {max(values):6.1f} ms"
                )
        if kick.ack_ms:
            print(
                f"  store acknowledgement of a revocation: p50 {percentile(kick.ack_ms, 0.5):.1f}"
                f" ms, p99 {percentile(kick.ack_ms, 0.99):.1f} ms"
            )
        print(
            f"  broker CPU {kick.broker_cpu_ms:.2f} ms/revocation (both nodes); bystanders"
            f" dropped {kick.bystanders_dropped}; kicks not seen within 5 s {kick.failed}"
        )
        failed += kick.failed
        if every:
            p50, p99 = percentile(every, 0.5), percentile(every, 0.99)
            verdict = "MET" if p99 <= P99_TARGET_MS and not kick.failed else "NOT MET"
            print(
                f"target: revoke -> kick p99 <= {P99_TARGET_MS:.0f} ms with {kick.connected}"
                f" devices over 2 broker nodes: p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
                f" mean {statistics.fmean(every):.1f} ms ({verdict})"
            )
        else:
            print("target: revoke -> kick: no kick completed (NOT MET)")
    if args.json:
        args.json.write_text(
            json.dumps([dataclasses.asdict(run) for run in runs], indent=2, default=str)
        )
    if failed:
        print(f"FAILED: {failed} enrollment(s) or revocation(s) did not complete")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"store engines, comma-separated, in order (default {','.join(ENGINES)})",
    )
    parser.add_argument("--enrollments", type=int, default=500, help="enrollments per row")
    parser.add_argument("--threads", type=int, default=16, help="devices enrolling at once")
    parser.add_argument("--workers", type=int, default=1, help="fleet serve --workers per node")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="device client processes for the timed enrollments (default 2)",
    )
    parser.add_argument("--devices", type=int, default=10_000, help="devices connected (kick)")
    parser.add_argument("--revocations", type=int, default=100, help="revocations timed")
    parser.add_argument(
        "--kick-engine", default="redis", help="the engine whose cluster runs the kick ('none')"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in STORE_ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; known: {', '.join(STORE_ENGINES)}")
    if args.kick_engine != "none" and args.kick_engine not in engines:
        parser.error(f"--kick-engine {args.kick_engine} is not in --engines")
    args.revocations = min(args.revocations, args.devices)
    # This process holds every device's session: its own descriptor limit first.
    need = args.devices + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    runs = [run_engine(engine, args, kick=engine == args.kick_engine) for engine in engines]
    return report(runs, args)


if __name__ == "__main__":
    import pytest

    try:
        sys.exit(main())
    except pytest.skip.Exception as skipped:  # not root, no `ip netns`: say why
        print(f"cannot run: {skipped.msg}", file=sys.stderr)
        sys.exit(2)
