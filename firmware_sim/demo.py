"""`fleet-sim demo`: the whole system, end to end, in one command on embedded defaults.

Each step says in plain words what happens, does it with the real pieces (the
`fleet` command line, `fleet serve`, the embedded broker, the device agent's
own enrollment, renewal and MQTT code), and then checks the outcome by
observation: the broker's view of live connections, what a subscriber
received, the server's audit log. The demo exits 0 only if every step was
verified; the first failing step ends it (the later ones are reported as not run).

``--broker mosquitto`` runs the same steps on a real Mosquitto 2.0 with the fleet
plugin and its sidecar (firmware_sim.mosquitto). The plugin lets no client read
other devices' topics, so there the steps observe the sidecar's /metrics (the
plugin's counters), the broker's log and each device's own MQTT session instead
of a monitoring subscriber.

This module runs the steps and reports them; the steps are in
``firmware_sim.demo_fleet`` (the fleet's side), ``demo_amqtt`` and
``demo_mosquitto`` (each broker's), sharing a ``demo_context.DemoContext``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Protocol, TextIO

from device_agent.errors import AgentError
from firmware_sim.demo_amqtt import EmbeddedBrokerSteps
from firmware_sim.demo_context import DemoContext, StepFailed, Verified
from firmware_sim.demo_fleet import FleetSteps
from firmware_sim.demo_mosquitto import MosquittoSteps
from firmware_sim.mosquitto import INSTALL_COMMAND, missing_requirements
from firmware_sim.world import LOOPBACK, World, WorldError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_AVAILABLE = 3


@dataclasses.dataclass
class StepResult:
    number: int
    name: str
    verified: bool | None  # None: not run
    detail: str
    seconds: float = 0.0


@dataclasses.dataclass
class DemoOptions:
    devices: int = 20
    broker: str = "amqtt"
    keep: bool = False
    work_dir: Path | None = None
    out: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)


class BrokerSteps(Protocol):
    """The steps that depend on the broker: one class per broker implements them."""

    start_text: str

    def broker(self) -> Verified: ...
    def connect(self) -> Verified: ...
    def telemetry(self) -> Verified: ...
    def renew(self) -> Verified: ...
    def revoke(self) -> Verified: ...
    def stop(self) -> None: ...


Step = tuple[str, str, Callable[[], Verified]]


class Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.results: list[StepResult] = []
        self.work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="fleet-demo-"))
        self.context = DemoContext(
            work_dir=self.work_dir,
            world=World(self.work_dir),
            out=options.out,
            device_count=options.devices,
        )
        self.fleet = FleetSteps(self.context)
        self.brokers: BrokerSteps = (
            EmbeddedBrokerSteps(self.context)
            if options.broker == "amqtt"
            else MosquittoSteps(self.context)
        )
        self.failed = False

    def say(self, text: str = "") -> None:
        self.context.say(text)

    def steps(self) -> list[Step]:
        n = self.options.devices
        fleet, brokers = self.fleet, self.brokers
        return [
            ("init", "Create the fleet: `fleet init` makes a CA hierarchy, a server TLS "
             "certificate and a SQLite database in a temporary directory.", fleet.init),
            ("factory", f"The factory makes a manufacturer CA and {n} devices, each with a "
             "bootstrap key and certificate (IDevID-like), and a manifest.", fleet.factory),
            ("trust", "The fleet admin trusts the manufacturer CA "
             "(`fleet trust add-manufacturer`).", fleet.trust),
            ("manifest", "…and imports the factory manifest, which pins each device's "
             "bootstrap certificate (`fleet manifest import`).", fleet.manifest),
            ("server", "Start the EST server (`fleet serve`) on a free loopback port.",
             fleet.server),
            ("broker", brokers.start_text, brokers.broker),
            ("enroll", "Every device enrolls over EST with its bootstrap certificate: it "
             "makes its own key, and gets a short-lived operational certificate.",
             fleet.enroll),
            ("connect", "Every device connects to the broker over mutual TLS with its new "
             "certificate.", brokers.connect),
            ("telemetry", "Every device publishes a telemetry reading on "
             "devices/<id>/telemetry.", brokers.telemetry),
            ("renew", "One device renews its certificate (EST simplereenroll, new key) and "
             "reconnects with it.", brokers.renew),
            ("revoke", "An admin revokes one device (reason keyCompromise) while it is "
             "connected.", brokers.revoke),
            ("clone", "A clone shows up: a second device with an enrolled device's bootstrap "
             "certificate and key, asking for a certificate for a new key.", fleet.clone),
        ]  # fmt: skip

    def run(self) -> int:
        options = self.options
        broker = (
            "embedded amqtt broker" if options.broker == "amqtt" else "Mosquitto + fleet plugin"
        )
        self.say(
            f"fleet demo: {options.devices} simulated devices on embedded defaults "
            f"(SQLite, {broker}), all on {LOOPBACK}"
        )
        self.say(f"work directory: {self.work_dir}")
        self.say()
        try:
            for number, (name, text, action) in enumerate(self.steps(), start=1):
                if self.failed:
                    self.results.append(StepResult(number, name, None, "not run"))
                    continue
                self.say(f"{number:2d}. {text}")
                started = time.monotonic()
                try:
                    verified = action()
                except Exception as exc:  # any failure is reported, and ends the demo
                    message = _failure(exc)
                    self.failed = True
                    self.results.append(
                        StepResult(number, name, False, message, time.monotonic() - started)
                    )
                    self.say(f"    ✗ {message}")
                    continue
                self.results.append(
                    StepResult(number, name, True, verified.short, time.monotonic() - started)
                )
                self.say(f"    ✓ {verified.detail}")
        finally:
            self.cleanup()
        self.summary()
        return EXIT_OK if all(r.verified for r in self.results) else EXIT_FAILED

    def cleanup(self) -> None:
        for device in self.context.devices:
            with contextlib.suppress(Exception):
                device.disconnect(timeout=3)
        self.brokers.stop()
        self.context.world.stop()
        logging.shutdown()
        if self.options.keep:
            self.say()
            self.say(f"kept: {self.work_dir} (server.log in fleet-data/, demo.log)")
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def summary(self) -> None:
        self.say()
        width = max(len(r.name) for r in self.results)
        self.say(f"  {'step':<{width}}  result     time    what was verified")
        self.say(f"  {'-' * width}  ---------  ------  {'-' * 40}")
        for r in self.results:
            mark = {True: "✓ ok", False: "✗ FAILED", None: "- not run"}[r.verified]
            seconds = f"{r.seconds:5.1f}s" if r.verified is not None else "     -"
            detail = r.detail if len(r.detail) <= 90 else r.detail[:89] + "…"
            self.say(f"  {r.name:<{width}}  {mark:<9}  {seconds}  {detail}")
        self.say()
        ok = sum(1 for r in self.results if r.verified)
        if ok == len(self.results):
            self.say(f"demo OK: all {ok} steps verified")
        else:
            self.say(f"demo FAILED: {ok} of {len(self.results)} steps verified")


def _failure(exc: Exception) -> str:
    if isinstance(exc, AgentError):
        return exc.message
    if isinstance(exc, StepFailed | WorldError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C: cleanup runs, processes are stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(options: DemoOptions) -> int:
    if options.broker == "mosquitto":
        missing = missing_requirements()
        if missing:
            print(
                f"fleet-sim demo --broker mosquitto: not available here: {', '.join(missing)} "
                f"missing. Install with: {INSTALL_COMMAND} (or use --broker amqtt).",
                file=sys.stderr,
            )
            return EXIT_NOT_AVAILABLE
    elif options.broker != "amqtt":
        print(f"fleet-sim demo --broker {options.broker}: unknown broker", file=sys.stderr)
        return EXIT_NOT_AVAILABLE
    demo = Demo(options)
    log_path = demo.work_dir / "demo.log"
    logging.basicConfig(
        filename=log_path,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    with _terminate_as_exit():
        return demo.run()
