"""The simulated world: a fleet data directory, `fleet serve` and a broker, on loopback.

Everything lives under one work directory; processes are started by the world
and stopped by their own PID, so nothing else on the machine is touched.
The fleet side is set up exactly as an operator would: the `fleet` command
line (init, trust add-manufacturer, manifest import) and `fleet serve` in a
subprocess. The embedded amqtt broker runs in this process, on its own event
loop thread, following the same SQLite store's revocation feed — that lets the
simulator observe what the broker saw (admitted serials, refusals, kicks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker_plugins.amqtt.runner import EmbeddedBroker
from broker_plugins.amqtt.settings import AmqttSettings
from fleet.authorities import load_fleet_authorities
from fleet.config import load_config
from fleet.kernel.acl import TopicAcl, filter_contained, is_valid_filter, topic_matches
from fleet.kernel.clock import SIM_CLOCK_ENV, Clock, SimulatedClock
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.reasons import REVOKED
from fleet.kernel.tls_policy import X509_V_FLAG_NO_CHECK_TIME
from fleet.store.factory import open_store
from fleet.store.protocol import Store

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
# Held devices are told to come back after 1 s instead of 60: the simulator has no time to lose.
FAST_SERVER_ENV = {"FLEET_POLICY_RETRY_AFTER_SECONDS": "1"}


class WorldError(RuntimeError):
    """Setting up or running the world failed; the message says what and where the log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def sha256_hex(cert_pem: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    return sha256_fingerprint(cert)


# -- the `fleet` command line ------------------------------------------------------------------


def run_fleet(
    *args: str | Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``fleet ARGS`` (this interpreter's), output captured; WorldError if it fails."""
    command = [sys.executable, "-m", "fleet", *map(str, args)]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise WorldError(
            f"`fleet {' '.join(map(str, args))}` exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc


# -- `fleet serve` -----------------------------------------------------------------------------


class ServerProcess:
    """A real `fleet serve` on a free loopback port, stopped by its own PID."""

    def __init__(self, config_path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config_path = config_path
        self.data_dir = config_path.parent
        self.env = {**os.environ, **FAST_SERVER_ENV, **(env or {})}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "server.log"

    @property
    def base(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 30) -> ServerProcess:
        if self.port == 0:
            self.port = free_port()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "fleet", "serve",
                    "--config", str(self.config_path),
                    "--listen", f"{LOOPBACK}:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                raise WorldError(
                    f"fleet serve exited early ({self.proc.returncode}); see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise WorldError(f"fleet serve did not become healthy; see {self.log_path}")
            time.sleep(0.05)
        return self

    def healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.data_dir / "ca/root.pem"))
        # A liveness probe: on a simulated clock, the dates may be ahead of the wall clock.
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        # No proxy: the server is on loopback, whatever HTTPS_PROXY says.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        try:
            with opener.open(f"{self.base}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- the embedded broker -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ObserverAcl(TopicAcl):
    """The fleet ACL, plus one monitoring client that may READ chosen filters of every device.

    Devices stay confined to their own tree exactly as before; only the client
    whose certificate names ``observer_id`` may also subscribe to (and receive)
    ``observer_filters`` such as ``devices/+/status``. It never gains publish rights.
    """

    observer_id: str = ""
    observer_filters: tuple[str, ...] = ()

    def may_subscribe(self, device_id: str, topic_filter: str) -> bool:
        if (
            device_id
            and device_id == self.observer_id
            and is_valid_filter(topic_filter)
            and any(filter_contained(topic_filter, f) for f in self.observer_filters)
        ):
            return True
        return TopicAcl.may_subscribe(self, device_id, topic_filter)

    def may_receive(self, device_id: str, topic: str) -> bool:
        if (
            device_id
            and device_id == self.observer_id
            and any(topic_matches(topic, f) for f in self.observer_filters)
        ):
            return True
        return TopicAcl.may_receive(self, device_id, topic)


class BrokerThread:
    """An EmbeddedBroker served by a private event loop in a daemon thread."""

    def __init__(self, settings: AmqttSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="broker", daemon=True)
        self.broker = EmbeddedBroker(settings, clock=clock)

    def start(self) -> BrokerThread:
        self.thread.start()
        self.call(self.broker.start)
        return self

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.call(self.broker.stop, timeout=20)
        with contextlib.suppress(Exception):
            self.call(_cancel_leftovers, timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 15) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(_wrap(fn), self.loop)
        return future.result(timeout)

    def run(self, fn: Callable[[], T], timeout: float = 5) -> T:
        """Run ``fn`` on the broker's loop (its state is only touched there)."""

        async def body() -> T:
            return fn()

        return self.call(body, timeout)

    @property
    def port(self) -> int:
        return self.broker.port

    def allow_observer(self, observer_id: str, filters: tuple[str, ...]) -> None:
        """Let ``observer_id`` read ``filters`` of every device (see ObserverAcl)."""
        gate = self.broker.gate
        if gate is None:
            raise WorldError("the broker is not started")

        def install() -> None:
            assert gate is not None
            gate.acl = ObserverAcl(gate.acl.templates, observer_id, filters)

        self.run(install)

    def serials_of(self, device_id: str) -> set[int]:
        """Serials of the device's live, admitted connections, as the broker sees them."""
        gate = self.broker.gate
        if gate is None:
            return set()

        def look() -> set[int]:
            assert gate is not None
            return {c.serial for c in gate.connections_of(device_id) if c.serial is not None}

        return self.run(look)

    def serials_of_many(self, device_ids: list[str]) -> dict[str, set[int]]:
        """``serials_of`` for many devices in one trip to the broker's loop."""
        gate = self.broker.gate
        if gate is None:
            return {d: set() for d in device_ids}

        def look() -> dict[str, set[int]]:
            assert gate is not None
            return {
                d: {c.serial for c in gate.connections_of(d) if c.serial is not None}
                for d in device_ids
            }

        return self.run(look, timeout=60)

    def counter(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        value = self.broker.metrics.registry.get_sample_value(name, dict(labels or {}))
        return value or 0.0

    def refused(self, reason: str) -> float:
        return self.counter("fleet_broker_connects_refused_total", {"reason": reason})

    def refused_revoked(self) -> float:
        """Refusals of a revoked certificate or device."""
        return sum(self.refused(reason) for reason in REVOKED)

    def kicked(self, cause: str = "revoked") -> float:
        return self.counter("fleet_broker_sessions_closed_total", {"cause": cause})


async def _cancel_leftovers() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _wrap(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


# -- the world ---------------------------------------------------------------------------------


class World:
    """A fleet data directory with its server and broker under ``work_dir``."""

    def __init__(
        self,
        work_dir: Path,
        *,
        server_env: Mapping[str, str] | None = None,
        sim_clock: SimulatedClock | None = None,
    ) -> None:
        self.work_dir = work_dir.resolve()
        self.data_dir = self.work_dir / "fleet-data"
        self.config_path = self.data_dir / "fleet.toml"
        self.env = {"FLEET_CONFIG": str(self.config_path)}
        # On the simulator's clock, `fleet` commands, `fleet serve` and the broker all follow it.
        self.sim_clock = sim_clock
        if sim_clock is not None:
            self.env[SIM_CLOCK_ENV] = str(sim_clock.path)
            server_env = {**(server_env or {}), SIM_CLOCK_ENV: str(sim_clock.path)}
        self.server = ServerProcess(self.config_path, env=server_env)
        self.broker: BrokerThread | None = None

    # -- fleet side -------------------------------------------------------------
    @property
    def root_pem(self) -> Path:
        return self.data_dir / "ca/root.pem"

    @property
    def root_fingerprint(self) -> str:
        return sha256_hex(self.root_pem)

    def fleet(self, *args: str | Path) -> str:
        """Run a `fleet` command against this world's configuration; its stdout."""
        return run_fleet(*args, env=self.env).stdout

    def init(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.fleet("init", "--dir", self.data_dir)

    def store_url(self) -> str:
        return load_config(self.config_path, environ={}).store_url

    def store(self, action: Callable[[Store], Awaitable[T]]) -> T:
        """Run ``action`` against the fleet's store (from this process, like an admin tool)."""
        url = self.store_url()

        async def body() -> T:
            store = await open_store(url)
            try:
                return await action(store)
            finally:
                await store.close()

        return asyncio.run(body())

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) if self.sim_clock is None else self.sim_clock.now()

    # -- processes -----------------------------------------------------------------
    def start_server(self) -> ServerProcess:
        return self.server.start()

    def broker_settings(self, **overrides: object) -> AmqttSettings:
        bundle = self.work_dir / "broker" / "fleet-ca.pem"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        # Every trusted issuing CA and root (several during a rotation or a rollover).
        authorities = load_fleet_authorities(load_config(self.config_path, environ={}))
        bundle.write_bytes(
            b"".join(
                c.public_bytes(serialization.Encoding.PEM)
                for c in (*authorities.issuing, *authorities.roots)
            )
        )
        values: dict[str, object] = {
            "host": LOOPBACK,
            "port": free_port(),
            "tls_cert": self.data_dir / "tls/server.pem",
            "tls_key": self.data_dir / "tls/server.key",
            "fleet_ca": bundle,
            "store_url": self.store_url(),
            "max_staleness": 30.0,
        }
        values.update(overrides)
        return AmqttSettings(**values)  # type: ignore[arg-type]

    def start_broker(self, **overrides: object) -> BrokerThread:
        self.broker = BrokerThread(self.broker_settings(**overrides), clock=self.sim_clock).start()
        return self.broker

    def stop(self) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            broker.stop()
        self.server.stop()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
