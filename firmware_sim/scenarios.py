"""`fleet-sim run --scenario NAME --devices N`: fleet situations with faults, checked and measured.

Every scenario starts a fresh world (data directory, `fleet serve`, embedded
broker), runs real devices (``SimDevice``: the agent's own EST and MQTT code)
through one situation, and returns a :class:`Report`: checks (each passed or
not, with what was seen), figures (latencies, counts, wall time, peak memory)
and time series for plots. The run exits 0 only if every check passed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import importlib
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from device_agent.agent import RenewResult
from device_agent.errors import AgentError, Pending, Refused, Transient
from device_agent.mqtt import MqttSession, TlsIdentity, tls_context
from device_agent.renewal import Phase, RenewalPolicy, assess
from device_agent.testhooks import CLOCK_OFFSET_ENV, CRASH_AT_ENV, CRASH_STEPS
from firmware_sim.device import BrokerAddress, SimDevice
from firmware_sim.factory import FactoryOutput, manifest_text, run_factory
from firmware_sim.lightmqtt import LightDevice, LightFleet
from firmware_sim.netfault import LatencyProxy
from firmware_sim.world import LOOPBACK, BrokerThread, World
from fleet.authority.admin import approve_device
from fleet.authority.lifecycle import revoke_device
from fleet.kernel.clock import SimulatedClock, SystemClock
from fleet.records import DeviceState, RevocationReason
from fleet.store.protocol import Store

T = TypeVar("T")
R = TypeVar("R")

ADMIN = "admin:fleet-sim"
MAX_WORKERS = 32
# Above this many devices, sessions are light asyncio MQTT clients (firmware_sim.lightmqtt)
# instead of one MqttSession (paho + a thread) per device.
LIGHT_MQTT_ABOVE = 200
LIGHT_CONCURRENCY = 64  # TLS handshakes in flight at once
FD_RESERVE = 512  # descriptors kept for the server link, store, logs, threads
# Simulated devices retry on a compressed time scale (the real floor is 5 s, base 10 s, cap 1 h):
# the same backoff logic, seconds instead of minutes.
SIM_POLICY = RenewalPolicy(backoff_floor=0.5, backoff_base=1.0, backoff_cap=5.0)
# The broker outage: how long the broker stays unreachable, and the MQTT reconnect backoff
# the sessions use (SimDevice.connect's defaults: 1 s minimum, doubling, capped at 30 s).
BROKER_OUTAGE_S = 3.0
MQTT_RECONNECT_MIN = 1.0
MQTT_RECONNECT_MAX = 30.0


# -- report ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class Report:
    scenario: str
    devices: int
    checks: list[Check] = dataclasses.field(default_factory=list)
    figures: dict[str, float | int | str] = dataclasses.field(default_factory=dict)
    # name -> (x, y) points, for plots: e.g. enrollment latencies, connected devices over time
    series: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, passed, detail))
        return passed

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "devices": self.devices,
            "ok": self.ok,
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "figures": self.figures,
            "series": {k: [list(p) for p in v] for k, v in self.series.items()},
        }

    def render(self) -> str:
        lines = [f"scenario {self.scenario} — {self.devices} devices", ""]
        width = max([len(c.name) for c in self.checks] + [5])
        lines.append(f"  {'check':<{width}}  result  detail")
        lines.append(f"  {'-' * width}  ------  {'-' * 40}")
        for c in self.checks:
            lines.append(f"  {c.name:<{width}}  {'✓ ok' if c.passed else '✗ FAIL':<6}  {c.detail}")
        if self.figures:
            lines.append("")
            fwidth = max(len(k) for k in self.figures)
            lines.append(f"  {'figure':<{fwidth}}  value")
            lines.append(f"  {'-' * fwidth}  {'-' * 12}")
            for key, value in self.figures.items():
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                lines.append(f"  {key:<{fwidth}}  {shown}")
        lines.append("")
        passed = sum(c.passed for c in self.checks)
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{self.scenario}: {verdict} ({passed}/{len(self.checks)} checks passed)")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class PlotSpec:
    """How one series is drawn: its file name, title and axis labels (with units)."""

    stem: str
    title: str
    xlabel: str
    ylabel: str
    kind: str  # "histogram" (of y, in ms), "bars" (y per x, in ms) or "steps" (y over x)


PLOTS: dict[str, PlotSpec] = {
    "enroll_latency_s": PlotSpec(
        "enrollment-latency", "Enrollment latency (EST simpleenroll, first boot)",
        "enrollment latency (ms)", "devices", "histogram",
    ),
    "connected_over_time": PlotSpec(
        "connected-devices", "Devices connected to the broker over mTLS",
        "time since connecting began (s)", "connected devices", "steps",
    ),
    "revoke_to_disconnect_latency_s": PlotSpec(
        "revoke-to-disconnect", "Revoke → disconnect latency (live session kicked)",
        "revoked device (in revocation order)", "revoke → disconnect (ms)", "bars",
    ),
    "certificates_by_issuer": PlotSpec(
        "certificates-by-issuer", "Good (unexpired) device certificates held, by issuing CA",
        "simulated years", "devices holding one", "lines",
    ),
    "renew_latency_s": PlotSpec(
        "renewal-latency", "Renewal latency (EST simplereenroll)",
        "renewal latency (ms)", "devices", "histogram",
    ),
}  # fmt: skip


def plots_unavailable() -> str | None:
    """Why PNG plots cannot be drawn here (matplotlib missing), or None if they can."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        return (
            f"matplotlib is not installed ({exc}); "
            "pip install 'fleet-enroll[sim]' or pip install 'matplotlib>=3.7,<4'"
        )
    return None


def write_plots(report: Report, directory: Path) -> list[Path]:
    """PNG plots of the report's series (Agg backend, no display); [] without matplotlib."""
    if plots_unavailable() is not None:
        return []
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    integer_ticks = importlib.import_module("matplotlib.ticker").MaxNLocator
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, points in report.series.items():  # "GROUP|LINE": one figure, a line each
        group, sep, line = name.partition("|")
        if sep and points:
            groups.setdefault(group, {})[line] = points
    for group, lines in groups.items():
        written.append(_write_lines(pyplot, report, group, lines, directory))
    for name, points in report.series.items():
        if not points or "|" in name:
            continue
        spec = PLOTS.get(name) or PlotSpec(
            name.replace("_", "-"), name.replace("_", " "), "x", "y", "steps"
        )
        figure = pyplot.figure(figsize=(7, 4), dpi=100)
        axes = figure.add_subplot(1, 1, 1)
        xs = [float(x) for x, _ in points]
        ys = [float(y) for _, y in points]
        if spec.kind == "histogram":
            ms = [y * 1000 for y in ys]
            axes.hist(ms, bins=min(40, max(5, len(ms) // 3)), color="tab:blue", edgecolor="white")
            for fraction, style in ((0.5, "--"), (0.95, ":")):
                value = _percentile(ms, fraction)
                label = f"p{round(fraction * 100)} {value:.0f} ms"
                axes.axvline(value, color="tab:red", linestyle=style, label=label)
            axes.legend()
        elif spec.kind == "bars":
            ms = [y * 1000 for y in ys]
            axes.bar([i + 1 for i in range(len(ms))], ms, color="tab:orange")
            axes.xaxis.set_major_locator(integer_ticks(integer=True))
            p50 = _percentile(ms, 0.5)
            axes.axhline(p50, color="tab:red", linestyle="--", label=f"p50 {p50:.1f} ms")
            axes.legend()
        else:
            axes.step(xs, ys, where="post", color="tab:green")
            axes.set_ylim(bottom=0)
        if spec.ylabel in ("devices", "connected devices"):  # counts: whole numbers
            axes.yaxis.set_major_locator(integer_ticks(integer=True))
        axes.set_xlabel(spec.xlabel)
        axes.set_ylabel(spec.ylabel)
        axes.set_title(f"{spec.title}\n{report.scenario}, {report.devices} devices", fontsize=10)
        axes.grid(alpha=0.3)
        path = directory / f"{report.scenario}-{spec.stem}.png"
        figure.tight_layout()
        figure.savefig(path, format="png")
        pyplot.close(figure)
        written.append(path)
    return written


def _write_lines(
    pyplot: Any,
    report: Report,
    group: str,
    lines: dict[str, list[tuple[float, float]]],
    directory: Path,
) -> Path:
    """One figure with a step line per member of ``group`` (e.g. certificates per issuer)."""
    spec = PLOTS.get(group) or PlotSpec(group.replace("_", "-"), group, "x", "y", "lines")
    figure = pyplot.figure(figsize=(8, 4.5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    for label, points in sorted(lines.items()):
        axes.step([p[0] for p in points], [p[1] for p in points], where="post", label=label)
    axes.set_ylim(bottom=0)
    axes.set_xlabel(spec.xlabel)
    axes.set_ylabel(spec.ylabel)
    axes.set_title(f"{spec.title}\n{report.scenario}, {report.devices} devices", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    path = directory / f"{report.scenario}-{spec.stem}.png"
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)
    return path


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """One progress line (rewritten in place on a terminal, printed now and then otherwise)."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.tty = out.isatty()
        self._lock = threading.Lock()
        self._last = 0.0

    def update(self, phase: str, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            final = done >= total
            if not self.tty and not final and now - self._last < 2.0:
                return
            self._last = now
            width = 30
            filled = int(width * done / total) if total else width
            bar = "#" * filled + "." * (width - filled)
            text = f"  {phase:<22} [{bar}] {done}/{total}"
            if self.tty:
                self.out.write("\r" + text + ("\n" if final else ""))
            else:
                self.out.write(text + "\n")
            self.out.flush()

    def note(self, text: str) -> None:
        with self._lock:
            self.out.write(f"  {text}\n")
            self.out.flush()


def parallel(
    fn: Callable[[T], R],
    items: Sequence[T],
    progress: Progress,
    phase: str,
    workers: int = MAX_WORKERS,
) -> list[tuple[T, R | BaseException, float]]:
    """``fn`` over ``items`` on a thread pool: (item, result or exception, seconds) each."""
    results: list[tuple[T, R | BaseException, float]] = []

    def timed(item: T) -> tuple[R | BaseException, float]:
        started = time.monotonic()
        try:
            return fn(item), time.monotonic() - started
        except Exception as exc:
            return exc, time.monotonic() - started

    progress.update(phase, 0, len(items))
    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(items)))) as pool:
        futures = {pool.submit(timed, item): item for item in items}
        for future in concurrent.futures.as_completed(futures):
            outcome, seconds = future.result()
            results.append((futures[future], outcome, seconds))
            progress.update(phase, len(results), len(items))
    return results


def _failures(results: Iterable[tuple[T, object, float]]) -> list[tuple[T, BaseException]]:
    return [(item, out) for item, out, _ in results if isinstance(out, BaseException)]


def _describe(exc: object) -> str:
    if isinstance(exc, AgentError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


# -- the test bench: a world with a factory's devices ---------------------------------------------


class Bench:
    """A fresh world plus ``count`` factory devices (``registered`` of them in the manifest)."""

    def __init__(
        self,
        work_dir: Path,
        count: int,
        progress: Progress,
        *,
        registered: int | None = None,
        server_env: dict[str, str] | None = None,
        clock: SystemClock | None = None,
        mqtt: str = "auto",
        latency_ms: int = 0,
        broker_proxy: bool = False,
        clock_skew: float = 0.0,
        sim_clock: SimulatedClock | None = None,
    ) -> None:
        self.latency_ms = latency_ms
        self.proxy: LatencyProxy | None = None
        # devices reach the broker through a switchable proxy (broker outages), if asked
        self.broker_proxy: LatencyProxy | None = None
        self.want_broker_proxy = broker_proxy
        self.clock_skew = clock_skew  # seconds the devices' clocks are off (the server's is not)
        self.light = mqtt == "light" or (mqtt == "auto" and count > LIGHT_MQTT_ABOVE)
        self.work_dir = work_dir
        self.progress = progress
        self.world = World(work_dir, server_env=server_env, sim_clock=sim_clock)
        self.count = count
        self.registered = count if registered is None else registered
        self.clock = clock
        self.factory: FactoryOutput | None = None
        self.devices: list[SimDevice] = []
        # (seconds since the first connect, sessions connected): sampled by connect_all
        # and sample_connected; becomes the report's "connected_over_time" series.
        self.timeline: list[tuple[float, float]] = []
        self._connect_t0: float | None = None

    def setup(self, *, broker: bool = True) -> None:
        world = self.world
        self.progress.note("setting up: fleet init, factory, trust, manifest, server, broker")
        world.init()
        factory = run_factory(self.work_dir / "factory", self.count, now=world.now())
        self.factory = factory
        world.fleet("trust", "add-manufacturer", factory.ca_cert)
        manifest = self.work_dir / "manifest-registered.csv"
        manifest.write_text(manifest_text(factory.devices[: self.registered]))
        if self.registered:
            world.fleet("manifest", "import", manifest)
        world.start_server()
        server_base = world.server.base
        if self.latency_ms:  # devices reach the EST server through a delaying proxy
            self.proxy = LatencyProxy(
                lambda: (LOOPBACK, world.server.port), self.latency_ms / 1000
            ).start()
            server_base = self.proxy.base
        if broker:
            world.start_broker()
            if self.want_broker_proxy:
                self.broker_proxy = LatencyProxy(self._broker_target, 0.0).start()
        self.devices = [
            SimDevice(
                d.device_id,
                self.work_dir / "devices" / d.device_id,
                server=server_base,
                ca_fingerprint=world.root_fingerprint,
                bootstrap_cert=d.cert,
                bootstrap_key=d.key,
                clock=self.clock,
                policy=SIM_POLICY,
                rng=random.Random(d.device_id),  # noqa: S311 - jitter, not secrets
                sleep=time.sleep,
            )
            for d in factory.devices
        ]

    def _broker_target(self) -> tuple[str, int]:
        assert self.world.broker is not None
        return LOOPBACK, self.world.broker.port

    @property
    def broker_address(self) -> BrokerAddress:
        if self.broker_proxy is not None:
            return BrokerAddress(LOOPBACK, self.broker_proxy.port)
        assert self.world.broker is not None
        return BrokerAddress(LOOPBACK, self.world.broker.port)

    def enroll_all(
        self, devices: Sequence[SimDevice], phase: str = "enrolling", max_wait: float = 30.0
    ) -> list[tuple[SimDevice, object, float]]:
        results = parallel(lambda d: d.enroll(max_wait=max_wait), devices, self.progress, phase)
        return [(d, out, s) for d, out, s in results]

    def sample_connected(self) -> int:
        """Count the sessions connected now and add that point to the timeline."""
        now = time.monotonic()
        if self._connect_t0 is None:
            self._connect_t0 = now
        connected = sum(1 for d in self.devices if d.session is not None and d.session.connected)
        self.timeline.append((now - self._connect_t0, connected))
        return connected

    def connect_all(self, devices: Sequence[SimDevice], timeout: float = 20.0) -> list[str]:
        """Connect each device; the ids not connected within ``timeout``."""
        self.sample_connected()
        for device in devices:
            device.connect(
                self.broker_address,
                heartbeat=3600,
                reconnect_min=MQTT_RECONNECT_MIN,
                reconnect_max=MQTT_RECONNECT_MAX,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # sampled every 20 ms: connected devices over time
            up = sum(1 for d in devices if d.session is not None and d.session.connected)
            self.sample_connected()
            self.progress.update("connecting", up, len(devices))
            if up == len(devices):
                break
            time.sleep(0.02)
        missing = []
        for device in devices:
            assert device.session is not None
            if not device.session.wait_connected(max(0.0, deadline - time.monotonic())):
                missing.append(device.device_id)
        self.sample_connected()
        return missing

    def connect_all_light(self, devices: Sequence[SimDevice], report: Report) -> list[str]:
        """Connect every device as a light session, in waves that fit the descriptor limit.

        Each wave's sessions stay open until the broker has been asked which serials it
        holds for every one of them; then the wave disconnects and the next one starts.
        The ids not admitted (or not seen by the broker with their issued serial) are returned.
        """
        broker = self.world.broker
        assert broker is not None
        wave_size = light_wave_size(len(devices))
        fleet = LightFleet(LOOPBACK, broker.port, concurrency=LIGHT_CONCURRENCY)
        started = time.monotonic()
        done = 0
        timeline: list[tuple[float, float]] = [(0.0, 0.0)]
        missing: list[str] = []
        errors: list[str] = []
        held_at_once = 0
        waves = [devices[i : i + wave_size] for i in range(0, len(devices), wave_size)]

        def on_done(light: LightDevice) -> None:
            nonlocal done
            done += 1
            self.progress.update("connecting (light)", done, len(devices))
            if done % 100 == 0 or done == len(devices):
                timeline.append((time.monotonic() - started, fleet.open_now))

        async def run_wave(wave: Sequence[SimDevice]) -> None:
            nonlocal held_at_once
            lights = [
                LightDevice(
                    d.device_id,
                    tls_context(
                        TlsIdentity(d.identity.cert_path, d.identity.key),
                        d.state.cacerts_path.read_bytes(),
                    ),
                    f"{d.identity.serial:x}",
                )
                for d in wave
                if d.identity is not None
            ]
            try:
                await fleet.connect_all(lights, on_done)
                admitted = [x for x in lights if x.published_at is not None]
                errors.extend(f"{x.device_id}: {x.error}" for x in lights if x.error)
                seen = await asyncio.to_thread(
                    broker.serials_of_many, [x.device_id for x in admitted]
                )
                expected = {d.device_id: d.identity.serial for d in wave if d.identity}
                good = [x for x in admitted if seen.get(x.device_id) == {expected[x.device_id]}]
                held_at_once = max(held_at_once, min(len(good), fleet.still_open(admitted)))
                good_ids = {x.device_id for x in good}
                missing.extend(d.device_id for d in wave if d.device_id not in good_ids)
                timeline.append((time.monotonic() - started, fleet.open_now))
            finally:
                await fleet.close_all(lights)
                timeline.append((time.monotonic() - started, fleet.open_now))

        for wave in waves:
            asyncio.run(run_wave(wave))
        report.figures["connect_mode"] = "light asyncio MQTT client"
        report.figures["connect_waves"] = len(waves)
        report.figures["connected_at_once"] = held_at_once
        report.figures["connect_peak_open"] = fleet.peak_open
        report.series["connected_over_time"] = timeline
        if errors:
            self.progress.note(f"{len(errors)} light session(s) failed, e.g. {errors[0]}")
        return missing

    def broker_sees_issued_serials(self, devices: Sequence[SimDevice]) -> list[str]:
        broker = self.world.broker
        assert broker is not None
        return [
            d.device_id
            for d in devices
            if d.identity is None or broker.serials_of(d.device_id) != {d.identity.serial}
        ]

    def store(self, action: Callable[[Store], Any]) -> Any:
        return self.world.store(action)

    def teardown(self) -> None:
        for device in self.devices:
            with contextlib.suppress(Exception):
                device.disconnect(timeout=2)
        if self.proxy is not None:
            self.proxy.stop()
        if self.broker_proxy is not None:
            self.broker_proxy.stop()
        self.world.stop()


# -- scenarios ---------------------------------------------------------------------------------


def first_boot_storm(bench: Bench, report: Report) -> None:
    """Every device boots at once: concurrent enrollments, then every session connects."""
    started = time.monotonic()
    results = bench.enroll_all(bench.devices, "first boot (EST)")
    failures = _failures(results)
    latencies = [s for _, out, s in results if not isinstance(out, BaseException)]
    report.check(
        "all enrolled",
        not failures,
        f"{len(latencies)}/{bench.count} enrolled"
        + (f"; e.g. {failures[0][0].device_id}: {_describe(failures[0][1])}" if failures else ""),
    )
    report.figures["enroll_p50_s"] = _percentile(latencies, 0.5)
    report.figures["enroll_p95_s"] = _percentile(latencies, 0.95)
    report.figures["enroll_max_s"] = max(latencies, default=0.0)
    report.figures["enroll_wall_s"] = time.monotonic() - started
    report.series["enroll_latency_s"] = [(i, s) for i, s in enumerate(sorted(latencies))]
    enrolled = [d for d in bench.devices if d.identity is not None]
    connect_started = time.monotonic()
    if bench.light:
        # Light sessions: the broker's view of each wave is checked while it is held open.
        missing = bench.connect_all_light(enrolled, report)
        wrong = missing
        at_once = report.figures["connected_at_once"]
        waves = report.figures["connect_waves"]
        how = f" (light sessions; {at_once} held open at once, {waves} wave(s))"
    else:
        missing = bench.connect_all(enrolled)
        how = ""
    report.figures["connect_wall_s"] = time.monotonic() - connect_started
    report.check(
        "all connected over mTLS",
        not missing and len(enrolled) == bench.count,
        f"{len(enrolled) - len(missing)}/{bench.count} connected{how}",
    )
    if not bench.light:
        wrong = bench.broker_sees_issued_serials(enrolled)
    report.check("broker sees issued serials", not wrong, f"{len(wrong)} mismatches")
    states = bench.store(lambda s: _states(s, [d.device_id for d in bench.devices]))
    active = sum(1 for st in states.values() if st is DeviceState.ACTIVE)
    report.check("server lists all active", active == bench.count, f"{active} active")


def revoke_while_connected(bench: Bench, report: Report) -> None:
    """Revoke some connected devices: each is kicked live and cannot come back; others stay."""
    _enroll_and_connect(bench, report)
    broker = bench.world.broker
    assert broker is not None
    victims = bench.devices[: max(1, bench.count // 10)]
    survivors = bench.devices[len(victims) :]
    lags = []
    for index, device in enumerate(victims, start=1):
        session = device.session
        assert session is not None
        started = time.monotonic()
        bench.store(functools.partial(_revoke, device_id=device.device_id))
        if _wait_until(
            functools.partial(_kicked, broker, device.device_id, session),
            10,
        ):
            lags.append(time.monotonic() - started)
        bench.sample_connected()
        bench.progress.update("revoking", index, len(victims))
    report.check(
        "revoked devices kicked live", len(lags) == len(victims), f"{len(lags)}/{len(victims)}"
    )
    report.figures["revoke_to_disconnect_p50_ms"] = _percentile(lags, 0.5) * 1000
    report.figures["revoke_to_disconnect_max_ms"] = max(lags, default=0.0) * 1000
    report.series["revoke_to_disconnect_latency_s"] = list(enumerate(lags))
    # Their own MQTT code keeps trying with the revoked certificate: all refused.
    refused_before = broker.refused_revoked()
    report.check(
        "reconnects refused",
        _wait_until(lambda: broker.refused_revoked() >= refused_before + len(victims), 15)
        and all(d.session is not None and d.session.connections == 1 for d in victims),
        f"{broker.refused_revoked() - refused_before:.0f} refusals (revoked)",
    )
    renewals = [_outcome(functools.partial(d.renew, force=True)) for d in victims]
    report.check(
        "revoked devices cannot renew",
        all(isinstance(r, Refused) for r in renewals),
        ", ".join(sorted({type(r).__name__ for r in renewals})),
    )
    still = [d.device_id for d in survivors if d.session is None or not d.session.connected]
    report.check("other devices unaffected", not still, f"{len(survivors) - len(still)} connected")


def cloned_bootstrap(bench: Bench, report: Report) -> None:
    """Clones of enrolled devices (same bootstrap cert and key, new key) are held and flagged."""
    _enroll_and_connect(bench, report)
    originals = bench.devices[: max(1, bench.count // 5)]
    assert bench.factory is not None
    factory = {d.device_id: d for d in bench.factory.devices}

    def attempt(original: SimDevice) -> object:
        made = factory[original.device_id]
        clone = SimDevice(
            original.device_id,
            bench.work_dir / "clones" / original.device_id,
            server=bench.world.server.base,
            ca_fingerprint=bench.world.root_fingerprint,
            bootstrap_cert=made.cert,
            bootstrap_key=made.key,
        )
        return _outcome(lambda: clone.enroll(max_wait=0.0))

    outcomes = [attempt(d) for d in originals]
    stopped = [o for o in outcomes if isinstance(o, Pending | Refused)]
    report.check(
        "clones get no certificate",
        len(stopped) == len(originals),
        f"{len(stopped)}/{len(originals)} held or refused "
        f"({', '.join(sorted({type(o).__name__ for o in outcomes}))})",
    )
    flagged = bench.store(lambda s: _flagged(s, [d.device_id for d in originals]))
    report.check(
        "audit flags possible_clone",
        flagged == len(originals),
        f"{flagged}/{len(originals)} flagged",
    )


def manual_approval_queue(bench: Bench, report: Report) -> None:
    """Half the devices are not in the manifest: held (202) until an admin approves each."""
    known = bench.devices[: bench.registered]
    unknown = bench.devices[bench.registered :]
    results = bench.enroll_all(known, "manifest devices")
    report.check("manifest devices enroll", not _failures(results), f"{len(known)} enrolled")
    first = [_outcome(functools.partial(d.enroll, max_wait=0.0)) for d in unknown]
    report.check(
        "unknown devices held (202)",
        all(isinstance(o, Pending) for o in first),
        f"{sum(isinstance(o, Pending) for o in first)}/{len(unknown)} pending",
    )
    states = bench.store(lambda s: _states(s, [d.device_id for d in unknown]))
    queued = sum(1 for st in states.values() if st is DeviceState.PENDING)
    report.check("approval queue lists them", queued == len(unknown), f"{queued} pending")
    approved_at: dict[str, float] = {}

    def admin() -> None:  # approves one every 50 ms while the devices keep asking
        for device in unknown:
            time.sleep(0.05)
            bench.store(functools.partial(_approve, device_id=device.device_id))
            approved_at[device.device_id] = time.monotonic()

    thread = threading.Thread(target=admin, daemon=True)
    thread.start()
    results = bench.enroll_all(unknown, "waiting for approval", max_wait=30.0)
    thread.join(30)
    report.check(
        "approved devices enroll by themselves",
        not _failures(results),
        f"{len(unknown) - len(_failures(results))}/{len(unknown)} enrolled after approval",
    )
    done_at = time.monotonic()
    waits = [done_at - approved_at.get(d.device_id, done_at) for d in unknown]
    report.figures["approval_to_enrolled_max_s"] = max(waits, default=0.0)


def server_outage_and_recovery(bench: Bench, report: Report) -> None:
    """The EST server goes down: connected devices stay connected, enrollments wait it out."""
    half = max(1, bench.count // 2)
    early, late = bench.devices[:half], bench.devices[half:]
    results = bench.enroll_all(early, "before the outage")
    report.check("enrolled before the outage", not _failures(results), f"{len(early)}")
    missing = bench.connect_all(early)
    report.check("connected before the outage", not missing, f"{len(early) - len(missing)}")
    port = bench.world.server.port
    bench.world.server.stop()
    bench.progress.note(f"EST server stopped (port {port})")
    during = [_outcome(functools.partial(d.enroll, max_wait=0.0)) for d in late[:3]]
    report.check(
        "enrollment during the outage is transient",
        all(isinstance(o, Transient) for o in during),
        ", ".join(sorted({type(o).__name__ for o in during})) or "no device left to try",
    )
    renew = _outcome(lambda: early[0].renew(force=True))
    report.check("renewal during the outage is transient", isinstance(renew, Transient),
                 type(renew).__name__)  # fmt: skip
    still = [d.device_id for d in early if d.session is None or not d.session.connected]
    report.check(
        "MQTT sessions survive the outage", not still, f"{len(early) - len(still)} connected"
    )

    def restart() -> None:
        time.sleep(2.0)
        bench.world.server.start()
        bench.progress.note("EST server back")

    thread = threading.Thread(target=restart, daemon=True)
    outage_started = time.monotonic()
    thread.start()
    results = bench.enroll_all(late, "waiting out the outage", max_wait=60.0)
    thread.join(30)
    report.check(
        "everyone enrolled after recovery",
        not _failures(results),
        f"{len(late) - len(_failures(results))}/{len(late)}",
    )
    report.figures["outage_to_all_enrolled_s"] = time.monotonic() - outage_started
    renewed = _outcome(functools.partial(early[0].renew, force=True))
    report.check(
        "renewal works after recovery",
        isinstance(renewed, RenewResult) and renewed.renewed,
        renewed.message if isinstance(renewed, RenewResult) else _describe(renewed),
    )


def max_reconnect_attempts(seconds: float, minimum: float, maximum: float) -> int:
    """The most connection attempts one session's backoff allows in ``seconds``.

    The first attempt is at once; the n-th delay after it is at least half of
    ``min(maximum, minimum * 2**n)`` (``device_agent.mqtt.Backoff``).
    """
    attempts, elapsed, failures = 1, 0.0, 0
    while True:
        elapsed += min(maximum, minimum * 2.0**failures) / 2
        failures += 1
        if elapsed > seconds:
            return attempts
        attempts += 1


def broker_outage_and_recovery(bench: Bench, report: Report) -> None:
    """The broker is unreachable a while: sessions back off, then all return with their certs."""
    proxy = bench.broker_proxy
    assert proxy is not None
    _enroll_and_connect(bench, report)
    before = {d.device_id: d.session.connections for d in bench.devices if d.session}
    attempts_before = proxy.connections
    outage_started = time.monotonic()
    proxy.cut()
    bench.progress.note(f"broker unreachable for {BROKER_OUTAGE_S:.0f} s (connections dropped)")
    lost = _wait_until(
        lambda: all(d.session is not None and not d.session.connected for d in bench.devices),
        10,
    )
    bench.sample_connected()
    report.check("every session lost the broker", lost, f"{bench.count} dropped")
    while time.monotonic() - outage_started < BROKER_OUTAGE_S:
        bench.sample_connected()
        time.sleep(0.1)
    outage = time.monotonic() - outage_started
    attempts = proxy.connections - attempts_before
    per_device = max_reconnect_attempts(outage, MQTT_RECONNECT_MIN, MQTT_RECONNECT_MAX)
    bound = bench.count * per_device
    report.figures["broker_outage_s"] = round(outage, 3)
    report.figures["reconnect_attempts_during_outage"] = attempts
    report.check(
        "no reconnect tight loop",
        attempts <= bound,
        f"{attempts} attempts in {outage:.1f} s (backoff allows at most {bound}: "
        f"{per_device} per device)",
    )
    proxy.restore()
    bench.progress.note("broker reachable again")
    restored = time.monotonic()

    def back() -> bool:
        bench.sample_connected()
        return all(
            d.session is not None
            and d.session.connected
            and d.session.connections > before.get(d.device_id, 0)
            for d in bench.devices
        )

    # the next retry is at most one backoff delay away (the longest so far, doubled)
    returned = _wait_until(back, MQTT_RECONNECT_MAX + 5, step=0.05)
    report.figures["restore_to_all_reconnected_s"] = time.monotonic() - restored
    up = sum(1 for d in bench.devices if d.session is not None and d.session.connected)
    report.check("every device reconnected after the outage", returned, f"{up}/{bench.count}")
    wrong = bench.broker_sees_issued_serials(bench.devices)
    report.check(
        "broker admits them with their certificates", not wrong, f"{len(wrong)} mismatches"
    )


def renewal_wave(bench: Bench, report: Report) -> None:
    """The fleet's clock jumps 21 days ahead (past 2/3 of 30 days): every device renews once."""
    _enroll_and_connect(bench, report)
    early = [_outcome(d.renew) for d in bench.devices[:3]]
    report.check(
        "not due at first",
        all(getattr(r, "renewed", True) is False for r in early),
        "renew() without --force did nothing",
    )
    offset = dt.timedelta(days=21)
    assert bench.clock is not None
    bench.clock.offset = offset + dt.timedelta(seconds=bench.clock_skew)
    due = [
        d
        for d in bench.devices
        if d.identity is not None
        and assess(
            d.identity.not_after, d.agent.next_renewal(d.identity), bench.clock.now(),
            d.agent.policy,
        ) is not Phase.FRESH
    ]  # fmt: skip
    report.check("all due 21 days later", len(due) == bench.count, f"{len(due)} due")
    old = {d.device_id: d.serial for d in bench.devices}
    results = parallel(lambda d: d.renew(), bench.devices, bench.progress, "renewal wave")
    renewed = [d for d, out, _ in results if not isinstance(out, BaseException) and out.renewed]
    latencies = [s for _, out, s in results if not isinstance(out, BaseException)]
    report.figures["renew_p50_s"] = _percentile(latencies, 0.5)
    report.figures["renew_p95_s"] = _percentile(latencies, 0.95)
    report.series["renew_latency_s"] = list(enumerate(sorted(latencies)))
    report.check("every device renewed", len(renewed) == bench.count, f"{len(renewed)}")
    report.check(
        "new serials",
        all(d.serial != old[d.device_id] for d in renewed),
        "each certificate replaced",
    )
    swapped = parallel(
        lambda d: d.reconnect_with_current_identity(10), renewed, bench.progress, "reconnecting"
    )
    ok = [d for d, out, _ in swapped if out is True]
    report.check("reconnected with the new certificate", len(ok) == len(renewed), f"{len(ok)}")
    wrong = bench.broker_sees_issued_serials(renewed)
    report.check("broker sees the new serials", not wrong, f"{len(wrong)} mismatches")


def power_loss_during_renewal(bench: Bench, report: Report) -> None:
    """Power is cut at every step of a renewal (the agent killed like SIGKILL); each recovers."""
    _enroll_and_connect(bench, report, connect=False)
    crashes: list[tuple[SimDevice, str, int]] = []
    for index, device in enumerate(bench.devices):
        step = CRASH_STEPS[index % len(CRASH_STEPS)]
        proc = subprocess.run(
            [sys.executable, "-m", "device_agent", "renew", "--force",
             "--state-dir", str(device.state.path)],
            capture_output=True, timeout=60, check=False,
            env={**os.environ, CRASH_AT_ENV: step, CLOCK_OFFSET_ENV: str(bench.clock_skew)},
        )  # fmt: skip
        crashes.append((device, step, proc.returncode))
        bench.progress.update("power cuts", index + 1, bench.count)
    killed = [c for c in crashes if c[2] == 137]
    report.check(
        "agent killed at the named step",
        len(killed) == bench.count,
        f"{len(killed)}/{bench.count} (steps: {', '.join(CRASH_STEPS)})",
    )
    usable = [d for d in bench.devices if d.agent.identity() is not None]
    report.check(
        "an identity survives every cut", len(usable) == bench.count, f"{len(usable)} usable"
    )
    results = parallel(lambda d: d.renew(force=True), bench.devices, bench.progress, "recovery")
    failures = _failures(results)
    report.check(
        "next renewal recovers",
        not failures,
        f"{bench.count - len(failures)}/{bench.count}"
        + (f"; e.g. {_describe(failures[0][1])}" if failures else ""),
    )
    missing = bench.connect_all(bench.devices)
    report.check(
        "everyone connects afterwards", not missing, f"{bench.count - len(missing)} connected"
    )
    wrong = bench.broker_sees_issued_serials(bench.devices)
    report.check("broker sees current serials", not wrong, f"{len(wrong)} mismatches")


def _enroll_and_connect(bench: Bench, report: Report, *, connect: bool = True) -> None:
    results = bench.enroll_all(bench.devices)
    failures = _failures(results)
    latencies = [s for _, out, s in results if not isinstance(out, BaseException)]
    report.series.setdefault("enroll_latency_s", list(enumerate(sorted(latencies))))
    report.check("all enrolled", not failures, f"{bench.count - len(failures)}/{bench.count}")
    if connect:
        missing = bench.connect_all(bench.devices)
        report.check("all connected", not missing, f"{bench.count - len(missing)}/{bench.count}")


def _outcome(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as exc:
        return exc


async def _revoke(store: Store, device_id: str) -> object:
    now = dt.datetime.now(dt.UTC)
    return await revoke_device(
        store, device_id, RevocationReason.KEY_COMPROMISE, actor=ADMIN, now=now
    )


async def _approve(store: Store, device_id: str) -> object:
    return await approve_device(store, device_id, actor=ADMIN, now=dt.datetime.now(dt.UTC))


def _kicked(broker: BrokerThread, device_id: str, session: MqttSession) -> bool:
    return not broker.serials_of(device_id) and not session.connected


async def _states(store: Store, ids: list[str]) -> dict[str, DeviceState]:
    return {d: (await store.get_device(d)).state for d in ids}


async def _flagged(store: Store, ids: list[str]) -> int:
    count = 0
    for device_id in ids:
        records = await store.audit_records(device_id=device_id, after_seq=0, limit=1000)
        if any(r.event.detail.get("flag") == "possible_clone" for r in records):
            count += 1
    return count


# A scenario that builds its own bench (e.g. on the simulator's clock): (count, work dir,
# progress, options) -> its report.
OwnBench = Callable[[int, Path, Progress, "LifetimeOptions"], Report]


@dataclasses.dataclass(frozen=True)
class LifetimeOptions:
    """`fleet-sim run` options only the lifetime scenario reads."""

    years: int | None = None  # None: the scenario's own
    ca_events: bool = True  # False: one issuing CA and one root for the whole run


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Bench, Report], None]
    min_devices: int = 1
    registered_fraction: float = 1.0
    clock: bool = False
    broker_proxy: bool = False
    own_bench: OwnBench | None = None


def _unused(bench: Bench, report: Report) -> None:
    raise AssertionError("a scenario with its own bench is run by own_bench")


def _fifteen_years(
    count: int, work_dir: Path, progress: Progress, options: LifetimeOptions
) -> Report:
    from firmware_sim.lifetime import run_lifetime  # it builds on this module

    return run_lifetime(count, work_dir, progress, years=options.years,
                        ca_events=options.ca_events)  # fmt: skip


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("first-boot-storm", first_boot_storm),
        Scenario("revoke-while-connected", revoke_while_connected, min_devices=2),
        Scenario("cloned-bootstrap", cloned_bootstrap),
        Scenario("power-loss-during-renewal", power_loss_during_renewal),
        Scenario("server-outage-and-recovery", server_outage_and_recovery, min_devices=2),
        Scenario("broker-outage-and-recovery", broker_outage_and_recovery, broker_proxy=True),
        Scenario("manual-approval-queue", manual_approval_queue, 2, registered_fraction=0.5),
        Scenario("renewal-wave", renewal_wave, clock=True),
        Scenario("fifteen-years", _unused, min_devices=200, own_bench=_fifteen_years),
    )
}


def light_wave_size(count: int) -> int:
    """Sessions one wave may hold: each takes two descriptors here (client + embedded broker)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(1, min(count, (soft - FD_RESERVE) // 2))


def run_scenario(
    name: str,
    devices: int,
    work_dir: Path,
    progress: Progress | None = None,
    *,
    mqtt: str = "auto",
    latency_ms: int = 0,
    clock_skew: float = 0.0,
    lifetime: LifetimeOptions = LifetimeOptions(),
) -> Report:
    scenario = SCENARIOS[name]
    progress = progress or Progress()
    if scenario.own_bench is not None:
        started = time.monotonic()
        report = scenario.own_bench(devices, work_dir, progress, lifetime)
        report.figures["wall_s"] = time.monotonic() - started
        return report
    count = max(devices, scenario.min_devices)
    report = Report(name, count)
    bench = Bench(
        work_dir,
        count,
        progress,
        registered=max(1, int(count * scenario.registered_fraction)),
        clock=SystemClock(dt.timedelta(seconds=clock_skew))
        if scenario.clock or clock_skew
        else None,
        mqtt=mqtt,
        latency_ms=latency_ms,
        broker_proxy=scenario.broker_proxy,
        clock_skew=clock_skew,
    )
    if latency_ms:
        report.figures["added_latency_ms"] = latency_ms  # to the EST server, each direction
    if clock_skew:
        report.figures["device_clock_skew_s"] = clock_skew  # devices' clocks only, not the server's
    started = time.monotonic()
    try:
        bench.setup()
        scenario.run(bench, report)
        if bench.timeline and "connected_over_time" not in report.series:
            report.series["connected_over_time"] = bench.timeline
    except Exception as exc:
        report.check("scenario ran to the end", False, _describe(exc))
    finally:
        bench.teardown()
    report.figures["wall_s"] = time.monotonic() - started
    report.figures["peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    return report


def save_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
