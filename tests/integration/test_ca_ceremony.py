"""The offline root end to end, through the `fleet` CLI and a real SQLite store.

`fleet init --offline-root` keeps the root key out of the data directory; the
online side makes a CSR, the "offline machine" (another directory, no
fleet.toml) signs it, the online side installs and promotes it. `fleet ca
status` shows the CAs, where their keys are, and the 180/90/30-day warnings.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from fleet.datadir import init_data_dir
from fleet.kernel.fingerprint import sha256_fingerprint
from tests.support.fleet_server import run_store


def _fleet(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=env,
    )  # fmt: skip


def _status(config: Path, cwd: Path) -> list[dict[str, Any]]:
    shown = _fleet("ca", "status", "--json", "--config", config, cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    cas: list[dict[str, Any]] = json.loads(shown.stdout)["cas"]
    return cas


def test_offline_root_ceremony(tmp_path: Path) -> None:
    data, usb, offline = tmp_path / "data", tmp_path / "usb", tmp_path / "offline-machine"
    offline.mkdir()
    made = _fleet("init", "--dir", data, "--offline-root", usb, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    config = data / "fleet.toml"
    assert not (data / "ca/root.key").exists()
    assert (usb / "root.key").stat().st_mode & 0o777 == 0o600
    assert (usb / "root.pem").read_bytes() == (data / "ca/root.pem").read_bytes()
    roots = [r for r in _status(config, tmp_path) if r["role"] == "root"]
    assert [r["key"] for r in roots] == ["offline"]

    # Online rotation is refused without the root, and says what to do.
    refused = _fleet("ca", "rotate-issuing", "--config", config, cwd=tmp_path)
    assert refused.returncode == 1
    assert "root_key_missing" in refused.stderr
    assert "sign-issuing" in refused.stderr

    csr = tmp_path / "issuing.csr"
    asked = _fleet("ca", "rotate-issuing", "--csr-out", csr, "--config", config, cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert (data / "ca/issuing-next.key").stat().st_mode & 0o777 == 0o600

    # The offline machine: only the root directory and the CSR; no fleet.toml.
    signed = _fleet(
        "ca", "sign-issuing", "--root-dir", usb, "--csr", csr, "--out", "issuing.pem",
        cwd=offline,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    new = x509.load_pem_x509_certificate((offline / "issuing.pem").read_bytes())

    # A certificate for another key (a stale ceremony) is refused; the right one installs.
    other_csr = tmp_path / "other.csr"
    other_data = tmp_path / "other"
    assert _fleet("init", "--dir", other_data, cwd=tmp_path).returncode == 0
    other_config = other_data / "fleet.toml"
    assert (
        _fleet(
            "ca", "rotate-issuing", "--csr-out", other_csr, "--config", other_config, cwd=tmp_path
        ).returncode
        == 0
    )
    stale = _fleet(
        "ca", "sign-issuing", "--root-dir", usb, "--csr", other_csr, "--out", "stale.pem",
        cwd=offline,
    )  # fmt: skip
    assert stale.returncode == 0, stale.stderr
    wrong = _fleet("ca", "install-issuing", "--cert", offline / "stale.pem", "--config", config,
                   cwd=tmp_path)  # fmt: skip
    assert wrong.returncode == 1
    assert "not for the key this server made" in wrong.stderr
    installed = _fleet(
        "ca", "install-issuing", "--cert", offline / "issuing.pem", "--config", config,
        cwd=tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    states = {r["sha256"]: r["state"] for r in _status(config, tmp_path) if r["role"] == "issuing"}
    assert states[sha256_fingerprint(new)] == "next"

    promoted = _fleet("ca", "promote", "--config", config, cwd=tmp_path)
    assert promoted.returncode == 0, promoted.stderr
    states = {r["sha256"]: r["state"] for r in _status(config, tmp_path) if r["role"] == "issuing"}
    assert states[sha256_fingerprint(new)] == "current"
    assert sorted(states.values()) == ["current", "retiring"]
    # No device holds a certificate of the old CA: it may go at once.
    retired = _fleet("ca", "retire", "--config", config, cwd=tmp_path)
    assert retired.returncode == 0, retired.stderr
    assert [r["state"] for r in _status(config, tmp_path) if r["role"] == "issuing"] == ["current"]


def test_status_warns_under_180_90_30_days(tmp_path: Path) -> None:
    # A fleet made so long ago that its issuing CA (5 years) has 100 days left.
    made_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=5 * 365 - 100)
    result = init_data_dir(tmp_path / "data", now=made_at)
    run_store(result.config_path, lambda store: store.feed_head())
    cas = _status(result.config_path, tmp_path)
    issuing = next(r for r in cas if r["role"] == "issuing")
    assert 99 <= issuing["days_left"] <= 100
    assert issuing["warning"] == f"expires in {issuing['days_left']} days (warned from 180)"
    root = next(r for r in cas if r["role"] == "root")
    assert root["warning"] == ""
    text = _fleet("ca", "status", "--config", result.config_path, cwd=tmp_path)
    assert f"warning: issuing CA {issuing['sha256'][:16]} expires in" in text.stdout
