"""The README's "Enforce it on the broker" commands, run verbatim against a real Mosquitto.

From a fleet data directory (`fleet init`, as the README's "Run it for real"
does) and a device the store knows, the README's ```sh block is run as is
(the documented port 8883 swapped for a free one) by bash in a fresh
directory; then the device is admitted over mutual TLS, revoked with the
README's `fleet device revoke`, and its session is closed. The time from
nothing (no broker directory) to that first kick is measured and printed.
Processes the block started are ours: stopped through their process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from fleet.records import CertificateRecord, DeviceState, ManifestEntry
from fleet.store.factory import open_store
from tests.integration.test_readme import sh_blocks
from tests.support.binaries import need_binary
from tests.support.mosquitto_broker import Session, load_ca, mint_client_cert
from tests.support.ports import free_port

pytestmark = [pytest.mark.needs_binary("mosquitto"), pytest.mark.needs_binary("gcc")]

README = Path(__file__).resolve().parents[3] / "README.md"
BIN = Path(sys.executable).parent
KICK_DEADLINE = 2.0


def record_device(store_url: str, device_id: str, cert: Path) -> None:
    """The store knows ``device_id`` with this certificate (as after an enrollment)."""
    issued = x509.load_pem_x509_certificate(cert.read_bytes())
    now = dt.datetime.now(dt.UTC)
    pin = hashlib.sha256(device_id.encode()).hexdigest()
    record = CertificateRecord(
        serial=issued.serial_number, device_id=device_id,
        not_before=issued.not_valid_before_utc, not_after=issued.not_valid_after_utc,
        issued_at=now, pem=cert.read_text(),
    )  # fmt: skip

    async def run() -> None:
        store = await open_store(store_url)
        try:
            await store.import_manifest([ManifestEntry(device_id, pin)], now)
            await store.record_certificate(
                record, expected={DeviceState.REGISTERED}, now=now, bootstrap_sha256=pin
            )
        finally:
            await store.close()

    asyncio.run(run())


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Like an operator's directory: others may traverse it, so Mosquitto started as
    # root can drop to the `mosquitto` user (pytest's tmp_path is 0700).
    path = Path(tempfile.mkdtemp(prefix="fleet-readme-broker-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stop_group(pgid: int) -> None:
    """SIGTERM the block's process group (ours), then SIGKILL what is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def test_readme_block_enforces_a_device_from_nothing(workdir: Path) -> None:
    need_binary("mosquitto")
    section = sh_blocks(README.read_text())["Enforce it on the broker"]
    # The section also runs the embedded broker; this is the Mosquitto block.
    blocks = [text for text in ("\n".join(b.lines) for b in section) if "mosquitto init" in text]
    assert len(blocks) == 1, blocks
    block = blocks[0]
    assert len([line for line in block.splitlines() if line.strip()]) <= 3, block
    assert "systemctl" not in block
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        [BIN / "fleet", "init", "--dir", "fleet-data"], cwd=workdir, env=env, check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip
    env["FLEET_CONFIG"] = str(workdir / "fleet-data/fleet.toml")  # as the README exports it
    data = workdir / "fleet-data"
    device_id = "sensor-0001"
    cert, key = mint_client_cert(
        workdir / "device", "op", common_name=device_id, issuer=load_ca(data, "issuing")
    )
    record_device(f"sqlite:///{data / 'fleet.db'}", device_id, cert)

    port = free_port()
    script = block.replace(":8883", f":{port}")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script], cwd=workdir, env=env, start_new_session=True
    )
    try:
        assert proc.wait(timeout=120) == 0
        broker = workdir / "broker"
        root = broker / "ca/root.pem"
        session = None
        deadline = time.monotonic() + 30
        while session is None:
            candidate = Session(port, ca=root, cert=cert, key=key, client_id=device_id)
            if candidate.open(timeout=2):
                session = candidate
                break
            candidate.close()
            assert time.monotonic() < deadline, (broker / "mosquitto.log").read_text()
            time.sleep(0.1)
        admitted = time.monotonic() - started
        assert session.subscribe(f"devices/{device_id}/#")
        # The sidecar follows the feed before the revocation is made.
        sidecar_log = broker / "sidecar.log"
        while "resynced the plugin" not in sidecar_log.read_text():
            assert time.monotonic() < deadline, sidecar_log.read_text()
            time.sleep(0.05)
        revoke = subprocess.run(
            [BIN / "fleet", "device", "revoke", device_id, "--reason", "keyCompromise"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert revoke.returncode == 0, revoke.stdout + revoke.stderr
        assert session.disconnected.wait(KICK_DEADLINE), (broker / "mosquitto.log").read_text()
        kicked = time.monotonic() - started
        session.close()
        print(
            f"\nREADME block: device admitted {admitted:.2f} s and kicked {kicked:.2f} s "
            "after the first command (init compiles the plugin)"
        )
        # And it stays out, refused once per attempt with its identity, in JSON.
        again = Session(port, ca=root, cert=cert, key=key, client_id=device_id)
        assert not again.open()
        again.close()
        serial = f"{x509.load_pem_x509_certificate(cert.read_bytes()).serial_number:x}"
        mosquitto_log = broker / "mosquitto.log"
        deadline = time.monotonic() + 5
        while True:
            plugin_lines = [
                json.loads(line)
                for line in mosquitto_log.read_text().splitlines()
                if line.startswith("{")
            ]
            refusals = [e for e in plugin_lines if e.get("event") == "connection_refused"]
            if refusals or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        kicks = [e for e in plugin_lines if e.get("event") == "session_kicked"]
        assert kicks, plugin_lines
        assert kicks[0]["device_id"] == device_id, kicks
        assert refusals, mosquitto_log.read_text()
        assert all(e["device_id"] == device_id and e["serial"] == serial for e in refusals)
        assert {e["reason"] for e in refusals} <= {"certificate_revoked", "device_revoked"}
        text = mosquitto_log.read_text()
        assert "Unable to write pid file" not in text
        assert 'user = "mosquitto"' in (broker / "broker.toml").read_text()
        assert (broker / "state/mosquitto.pid").is_file()
    finally:
        _stop_group(proc.pid)
