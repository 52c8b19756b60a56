"""Memory and idle CPU of `fleet-agent run`, against baselines measured in the same run.

Starts a real `fleet serve` and a real Mosquitto (mTLS listener, as in the
tests), enrolls a device with `fleet-agent enroll`, starts `fleet-agent run`,
waits until the broker has accepted it, lets it settle, then samples over the
same window (``--seconds``, default 20):

  1. fleet-agent run        the agent (MQTT session + renewal loop), heartbeat 60 s
  2. python + paho idle     ``python -c "import ssl, paho.mqtt.client; sleep"``: the
                            interpreter and the libraries the agent cannot do without
  3. mosquitto_sub          the C client, same device certificate and TLS, subscribed
                            to the device's tree (a floor for "an idle mTLS MQTT client")

RSS is VmRSS (and VmHWM, the peak) from /proc/PID/status; idle CPU is the
utime + stime delta from /proc/PID/stat over the window's wall time.
Target printed beside the figures: agent RSS <= 40 MB.

    .venv/bin/python bench/agent_footprint.py [--seconds 20] [--json FILE]

It prints figures and asserts nothing; it exits 1 if the agent never connected.
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support when run as bench/agent_footprint.py

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.integration.est.conftest import running_fleet
from tests.support.binaries import need_binary
from tests.support.mosquitto import Mosquitto

TARGET_RSS_MB = 40.0
TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Sample:
    name: str
    pid: int
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def _cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _agent(*args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "device_agent", *args], stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        if log and not isinstance(out, int):
            out.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after connecting")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    options = parser.parse_args()
    need_binary("mosquitto")
    mosquitto_sub = need_binary("mosquitto_sub")

    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-footprint-") as tmp:
        base = Path(tmp)
        with running_fleet(base) as fleet:
            broker = Mosquitto(base / "mosquitto", fleet.server.data_dir).start()
            try:
                device = fleet.new_device()
                state = base / "agent-state"
                root = x509.load_pem_x509_certificate(fleet.server.root_pem.read_bytes())
                enroll = subprocess.run(
                    [
                        sys.executable, "-m", "device_agent", "enroll",
                        "--server", fleet.server.base,
                        "--ca-fingerprint", root.fingerprint(hashes.SHA256()).hex(),
                        "--bootstrap-cert", str(device.cert),
                        "--bootstrap-key", str(device.key),
                        "--state-dir", str(state),
                    ],
                    capture_output=True, text=True, timeout=120, check=False,
                )  # fmt: skip
                if enroll.returncode != 0:
                    print(f"enrollment failed: {enroll.stderr}", file=sys.stderr)
                    return 1
                log = base / "agent.log"
                agent = _agent(
                    "run", "--state-dir", str(state),
                    "--mqtt", f"127.0.0.1:{broker.port}", "--heartbeat", "60",
                    log=log,
                )  # fmt: skip
                started.append(agent)
                deadline = time.monotonic() + 30
                while not broker.connections_of(device.device_id):
                    if agent.poll() is not None or time.monotonic() > deadline:
                        print(f"the agent did not connect:\n{log.read_text()}", file=sys.stderr)
                        return 1
                    time.sleep(0.1)

                generation = (state / "current").read_text().strip()
                baseline = subprocess.Popen(
                    [
                        sys.executable, "-c",
                        "import ssl, time, paho.mqtt.client; time.sleep(1e6)",
                    ]
                )  # fmt: skip
                started.append(baseline)
                sub = subprocess.Popen(
                    [
                        mosquitto_sub, "-h", "127.0.0.1", "-p", str(broker.port),
                        "--cafile", str(fleet.server.root_pem),
                        "--cert", str(state / f"op{generation}.pem"),
                        "--key", str(state / f"op{generation}.key"),
                        "-t", f"devices/{device.device_id}/#", "-k", "60", "-q", "1",
                    ],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                started.append(sub)
                time.sleep(options.settle)

                samples = [
                    Sample("fleet-agent run", agent.pid),
                    Sample("python + paho idle", baseline.pid),
                    Sample("mosquitto_sub (C)", sub.pid),
                ]
                before = {s.pid: _cpu_ticks(s.pid) for s in samples}
                t0 = time.monotonic()
                time.sleep(options.seconds)
                wall = time.monotonic() - t0
                for s in samples:
                    s.cpu_s = (_cpu_ticks(s.pid) - before[s.pid]) / TICK
                    s.wall_s = wall
                    s.rss_mb = _status_kb(s.pid, "VmRSS") / 1024
                    s.hwm_mb = _status_kb(s.pid, "VmHWM") / 1024
                connected = bool(broker.connections_of(device.device_id))
            finally:
                for proc in reversed(started):
                    proc.terminate()  # our own children, by PID
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=5)
                broker.stop()
        agent_exit = started[0].returncode if started else None

    agent_sample, python_sample, sub_sample = samples
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
    )
    print(f"window: {wall:.1f} s idle after connecting (heartbeat 60 s, keepalive 60 s)\n")
    print(f"{'process':<22}{'RSS MB':>9}{'peak MB':>9}{'CPU s':>8}{'CPU %':>8}")
    for s in samples:
        print(f"{s.name:<22}{s.rss_mb:>9.1f}{s.hwm_mb:>9.1f}{s.cpu_s:>8.2f}{s.cpu_percent:>8.3f}")
    print()
    print(
        f"agent RSS / python+paho: {agent_sample.rss_mb / python_sample.rss_mb:.2f}x;"
        f" agent RSS / mosquitto_sub: {agent_sample.rss_mb / sub_sample.rss_mb:.1f}x"
    )
    verdict = "OK" if agent_sample.rss_mb <= TARGET_RSS_MB else "OVER TARGET"
    print(
        f"target: agent RSS <= {TARGET_RSS_MB:.0f} MB -> {agent_sample.rss_mb:.1f} MB ({verdict})"
    )
    print(f"agent exit code on SIGTERM: {agent_exit}")
    if options.json:
        options.json.write_text(
            json.dumps(
                {
                    "samples": [dataclasses.asdict(s) for s in samples],
                    "target_rss_mb": TARGET_RSS_MB,
                    "agent_exit_code": agent_exit,
                },
                indent=2,
            )
        )
    return 0 if connected else 1


if __name__ == "__main__":
    sys.exit(main())
