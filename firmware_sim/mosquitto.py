"""A real Mosquitto 2.0 with the fleet plugin and its sidecar, for the simulated world.

Set up exactly as an operator would, with the product's own commands:
``fleet-broker mosquitto build`` (the plugin), ``sidecar-cert`` (the sidecar's
identity), ``config`` (mosquitto.conf from broker.toml), ``sync --once`` (cafile
and revocation snapshot before the broker starts), then mosquitto and the
running sidecar. Both processes are ours and are stopped by their own PID.

What the simulator can observe on Mosquitto: the sidecar's Prometheus
``/metrics`` (the plugin's accepted / refused-by-reason / kicked counters) and
the broker's log (``log_type all``: connections, and each PUBLISH that passed
the plugin's topic ACL). The plugin confines every client to
``devices/<its id>/#``, so unlike the embedded broker there is no monitoring
subscriber that may read other devices' topics.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from broker_plugins.mosquitto.build import APT_PACKAGES, missing_headers
from firmware_sim.world import LOOPBACK, WorldError, free_port
from fleet.kernel.reasons import REVOKED

MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin")
INSTALL_COMMAND = f"apt-get install -y mosquitto {' '.join(APT_PACKAGES)}"


def mosquitto_binary() -> str | None:
    import os

    search = os.pathsep.join([os.environ.get("PATH", ""), *MOSQUITTO_DIRS])
    return shutil.which("mosquitto", path=search)


def missing_requirements() -> list[str]:
    """What is missing to run Mosquitto with the plugin (empty: all there)."""
    missing = []
    if mosquitto_binary() is None:
        missing.append("the mosquitto binary")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        missing.append("a C compiler (gcc)")
    missing.extend(f"the headers of {h}" for h in missing_headers())
    return missing


def fleet_broker_command() -> list[str]:
    script = Path(sys.executable).with_name("fleet-broker")
    if script.is_file():
        return [str(script)]
    found = shutil.which("fleet-broker")
    if found is None:
        raise WorldError("the fleet-broker command is not installed (pip install .)")
    return [found]


def run_fleet_broker(*args: str | Path, timeout: float = 120) -> str:
    command = [*fleet_broker_command(), "mosquitto", *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise WorldError(
            f"`fleet-broker mosquitto {' '.join(map(str, args))}` exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """Prometheus text format -> {(name, labels as written): value}."""
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match:
            try:
                samples[(match[1], match[2] or "")] = float(match[3])
            except ValueError:
                continue
    return samples


class MosquittoNode:
    """broker.toml, mosquitto.conf, the plugin, mosquitto and the sidecar under ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        data_dir: Path,
        store_url: str,
        heartbeat_seconds: float = 0.5,
        debug_log: bool = True,
    ) -> None:
        self.directory = directory
        self.data_dir = data_dir
        self.store_url = store_url
        self.heartbeat_seconds = heartbeat_seconds
        self.debug_log = debug_log
        self.port = 0
        self.metrics_port = 0
        self.settings = directory / "broker.toml"
        self.conf = directory / "mosquitto.conf"
        self.broker_log = directory / "mosquitto.log"
        self.sidecar_log = directory / "sidecar.log"
        self.broker: subprocess.Popen[bytes] | None = None
        self.sidecar: subprocess.Popen[bytes] | None = None

    @property
    def broker_pid(self) -> int | None:
        return None if self.broker is None else self.broker.pid

    @property
    def sidecar_pid(self) -> int | None:
        return None if self.sidecar is None else self.sidecar.pid

    # -- setup ----------------------------------------------------------------------
    def build(self) -> Path:
        """Compile the plugin into the work directory; its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        out = run_fleet_broker("build", "--out", self.directory).strip().splitlines()
        plugin = Path(out[-1]) if out else self.directory / "fleet_plugin.so"
        if not plugin.is_file():
            raise WorldError(f"fleet-broker mosquitto build wrote no plugin at {plugin}")
        return plugin

    def sidecar_cert(self) -> tuple[Path, Path]:
        cert, key = self.directory / "sidecar.pem", self.directory / "sidecar.key"
        ca = self.data_dir / "ca"
        run_fleet_broker(
            "sidecar-cert",
            "--issuing-cert", ca / "issuing.pem", "--issuing-key", ca / "issuing.key",
            "--out-cert", cert, "--out-key", key, "--days", "1",
        )  # fmt: skip
        return cert, key

    def configure(self, plugin: Path, sidecar_cert: Path, sidecar_key: Path) -> str:
        """Write broker.toml and the generated mosquitto.conf; the conf text."""
        self.port, self.metrics_port = free_port(), free_port()
        log_types = '["all"]' if self.debug_log else '["error", "warning", "notice"]'
        self.settings.write_text(
            f'''[store]
url = "{self.store_url}"

[mosquitto]
listen = "{LOOPBACK}:{self.port}"
server_cert = "{self.data_dir / "tls/server.pem"}"
server_key = "{self.data_dir / "tls/server.key"}"
root_ca = "{self.data_dir / "ca/root.pem"}"
issuing_ca = "{self.data_dir / "ca/issuing.pem"}"
plugin = "{plugin}"
sidecar_cert = "{sidecar_cert}"
sidecar_key = "{sidecar_key}"
crl_url = ""
user = "{getpass.getuser()}"
heartbeat_seconds = {self.heartbeat_seconds}
metrics_address = "{LOOPBACK}:{self.metrics_port}"
log_type = {log_types}
'''
        )
        text = run_fleet_broker("config", "--config", self.settings)
        self.conf.write_text(text)
        return text

    def sync_once(self) -> None:
        with self.sidecar_log.open("ab") as log:
            proc = subprocess.run(
                [*fleet_broker_command(), "mosquitto", "sync", "--once",
                 "--config", str(self.settings)],
                stdout=log, stderr=subprocess.STDOUT, timeout=60, check=False,
            )  # fmt: skip
        if proc.returncode != 0:
            raise WorldError(f"`fleet-broker mosquitto sync --once` failed; see {self.sidecar_log}")

    # -- processes --------------------------------------------------------------------
    def start_broker(self, timeout: float = 10) -> None:
        exe = mosquitto_binary()
        if exe is None:
            raise WorldError(f"mosquitto is not installed ({INSTALL_COMMAND})")
        with self.broker_log.open("ab") as log:
            self.broker = subprocess.Popen(
                [exe, "-c", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while "fleet: plugin ready" not in self.log_text() or not _listening(self.port):
            if self.broker.poll() is not None:
                raise WorldError(f"mosquitto exited early; see {self.broker_log}")
            if time.monotonic() > deadline:
                raise WorldError(f"mosquitto is not listening; see {self.broker_log}")
            time.sleep(0.02)

    def start_sidecar(self, timeout: float = 20) -> None:
        with self.sidecar_log.open("ab") as log:
            self.sidecar = subprocess.Popen(
                [*fleet_broker_command(), "mosquitto", "sync", "--config", str(self.settings)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.metric("fleet_mosquitto_connects_accepted_total") is None:
            if self.sidecar.poll() is not None:
                raise WorldError(f"the sidecar exited early; see {self.sidecar_log}")
            if time.monotonic() > deadline:
                raise WorldError(
                    f"the sidecar's /metrics shows no plugin counters; see {self.sidecar_log}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        for attr in ("sidecar", "broker"):
            proc = getattr(self, attr)
            setattr(self, attr, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()  # our own child, by its PID
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # -- observation --------------------------------------------------------------------
    def metrics(self) -> dict[tuple[str, str], float]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
            with opener.open(url, timeout=2) as response:
                return parse_metrics(response.read().decode())
        except OSError:
            return {}

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        written = ""
        if labels:
            written = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        return self.metrics().get((name, written))

    def accepted(self) -> float:
        return self.metric("fleet_mosquitto_connects_accepted_total") or 0.0

    def refused(self, reason: str) -> float:
        return self.metric("fleet_mosquitto_connects_refused_total", {"reason": reason}) or 0.0

    def refused_revoked(self) -> float:
        """Refusals of a revoked certificate or device."""
        return sum(self.refused(reason) for reason in REVOKED)

    def kicked(self) -> float:
        return self.metric("fleet_mosquitto_sessions_kicked_total") or 0.0

    def wait_metric(self, read: str, above: float, timeout: float = 10) -> float:
        """Wait until accepted/kicked (``read``) exceeds ``above``; the last value read."""
        deadline = time.monotonic() + timeout
        value = 0.0
        while True:
            value = self.accepted() if read == "accepted" else self.kicked()
            if value > above or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def log_text(self, after: int = 0) -> str:
        if not self.broker_log.exists():
            return ""
        return self.broker_log.read_bytes()[after:].decode(errors="replace")

    def log_mark(self) -> int:
        return self.broker_log.stat().st_size if self.broker_log.exists() else 0

    def published(self, after: int = 0) -> set[tuple[str, str]]:
        """(client id, topic) of each PUBLISH the broker received past the ACL."""
        found = re.findall(r"Received PUBLISH from (\S+) \([^']*'([^']+)'", self.log_text(after))
        return {(client, topic) for client, topic in found}

    def connected_clients(self, after: int = 0) -> set[str]:
        return set(re.findall(r"New client connected from \S+ as (\S+) ", self.log_text(after)))


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False
