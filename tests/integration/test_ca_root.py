"""`fleet ca rotate-root` / `retire-root` in local mode on a data directory (no server needed)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.keys import load_private_key_pem
from tests.support.fleet_server import make_data_dir


def _fleet(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", "ca", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_offline_root_stays_off_the_data_directory(tmp_path: Path) -> None:
    config = make_data_dir(tmp_path / "data")
    ca = config.parent / "ca"
    offline = tmp_path / "usb"
    offline.mkdir(mode=0o700)
    os.replace(ca / "root.key", offline / "root.key")  # what `fleet init --offline-root` leaves
    old = x509.load_pem_x509_certificate((ca / "root.pem").read_bytes())

    missing = _fleet(config, "rotate-root")
    assert missing.returncode == 1
    assert "--root-dir" in missing.stderr  # says where the key is expected

    rotated = _fleet(config, "rotate-root", "--root-dir", str(offline))
    assert rotated.returncode == 0, rotated.stderr
    assert not list(ca.glob("root*.key"))  # no root key ever lands in the data directory
    new = x509.load_pem_x509_certificates((ca / "root.pem").read_bytes())[0]
    assert new.public_key() != old.public_key()
    for key in offline.glob("root*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    kept = offline / f"root-{sha256_fingerprint(old)[:16]}.key"
    assert kept.exists()  # the old key is archived, not destroyed
    assert (offline / "root.pem").read_bytes() == (ca / "root.pem").read_bytes()

    # A power cut after root.pem named the new root but before root.key followed:
    # the next run finishes the key swap (and still refuses a second rollover).
    (offline / "root.key").write_bytes(kept.read_bytes())
    again = _fleet(config, "rotate-root", "--root-dir", str(offline))
    assert again.returncode == 1
    assert "already in progress" in again.stderr
    repaired = load_private_key_pem((offline / "root.key").read_bytes())
    assert repaired.public_key() == new.public_key()


def test_retire_root_without_a_rollover_is_refused(tmp_path: Path) -> None:
    config = make_data_dir(tmp_path / "data")
    refused = _fleet(config, "retire-root")
    assert refused.returncode == 1
    assert "no old fleet root" in refused.stderr


def test_a_garbage_root_bundle_is_a_clear_error(tmp_path: Path) -> None:
    config = make_data_dir(tmp_path / "data")
    (config.parent / "ca/root.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    refused = _fleet(config, "rotate-root")
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
