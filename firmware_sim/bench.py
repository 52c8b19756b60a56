"""The scenarios' test bench: a fresh world with a factory's devices, and the tools to drive them.

A :class:`Bench` builds a world (data directory, `fleet serve`, embedded
broker) and ``count`` factory devices; :func:`parallel` runs device work on a
thread pool with per-item timings; :class:`Progress` shows how far it got.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from device_agent.errors import AgentError
from device_agent.mqtt_tls import TlsIdentity, tls_context
from device_agent.renewal import RenewalPolicy
from firmware_sim.device import BrokerAddress, SimDevice
from firmware_sim.factory import FactoryOutput, manifest_text, run_factory
from firmware_sim.lightmqtt import LightDevice, LightFleet
from firmware_sim.netfault import LatencyProxy
from firmware_sim.report import Report
from firmware_sim.world import LOOPBACK, World
from fleet.kernel.clock import SimulatedClock, SystemClock
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
# The MQTT reconnect backoff the sessions use (SimDevice.connect's defaults: 1 s minimum,
# doubling, capped at 30 s).
MQTT_RECONNECT_MIN = 1.0
MQTT_RECONNECT_MAX = 30.0


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


def failures_in(results: Iterable[tuple[T, object, float]]) -> list[tuple[T, BaseException]]:
    return [(item, out) for item, out, _ in results if isinstance(out, BaseException)]


def describe(exc: object) -> str:
    if isinstance(exc, AgentError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
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


def light_wave_size(count: int) -> int:
    """Sessions one wave may hold: each takes two descriptors here (client + embedded broker)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(1, min(count, (soft - FD_RESERVE) // 2))
