"""`fleet init` end to end: the real command, checked by the real openssl and sqlite."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from fleet.config import load_config
from tests.support.openssl import openssl


def fleet(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_a_working_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = fleet(
        "init", "--dir", data, "--server-name", "est.example.com", "--server-name", "10.1.2.3"
    )
    assert result.returncode == 0, result.stderr

    # The printed fingerprint is the SHA-256 of the root certificate's DER.
    der = openssl("x509", "-in", data / "ca/root.pem", "-outform", "DER").stdout
    fingerprint = hashlib.sha256(der).hexdigest()
    assert re.search(rf"^\s+{fingerprint}$", result.stdout, re.MULTILINE), result.stdout

    # Private material is private.
    assert mode(data) == 0o700
    for directory in ("ca", "tls"):
        assert mode(data / directory) == 0o700
    for key in ("ca/root.key", "ca/issuing.key", "tls/server.key"):
        assert mode(data / key) == 0o600

    # Chain: root -> issuing (pathlen 0) for devices; root -> server cert for TLS.
    openssl("verify", "-CAfile", data / "ca/root.pem", data / "ca/issuing.pem")
    openssl(
        "verify", "-purpose", "sslserver", "-CAfile", data / "ca/root.pem", data / "tls/server.pem"
    )
    issuing_text = openssl(
        "x509", "-in", data / "ca/issuing.pem", "-noout", "-text"
    ).stdout.decode()
    assert "pathlen:0" in issuing_text
    server_text = openssl("x509", "-in", data / "tls/server.pem", "-noout", "-text").stdout.decode()
    for name in (
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "DNS:est.example.com",
        "IP Address:10.1.2.3",
    ):
        assert name in server_text
    assert "CRL Distribution Points" not in server_text  # strongSwan would fetch it
    root_text = openssl("x509", "-in", data / "ca/root.pem", "-noout", "-dates").stdout.decode()
    not_before, not_after = (line.split("=", 1)[1] for line in root_text.strip().splitlines())
    assert int(not_after.split()[-2]) - int(not_before.split()[-2]) == 20  # 20-year root

    # Keys match their certificates.
    for stem in ("ca/root", "ca/issuing", "tls/server"):
        from_key = openssl("pkey", "-in", data / f"{stem}.key", "-pubout").stdout
        from_cert = openssl("x509", "-in", data / f"{stem}.pem", "-noout", "-pubkey").stdout
        assert from_key == from_cert

    # The config loads and points at what was written; the database is a real SQLite store.
    config = load_config(data / "fleet.toml", environ={})
    assert config.ca.issuing_cert == (data / "ca/issuing.pem").resolve()
    assert config.store_url == f"sqlite:///{(data / 'fleet.db').resolve()}"
    with sqlite3.connect(data / "fleet.db") as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
    assert {"devices", "certificates"} <= tables


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert fleet("init", "--dir", data).returncode == 0
    before = (data / "ca/root.pem").read_bytes()

    again = fleet("init", "--dir", data)
    assert again.returncode == 1
    assert "already holds a fleet data directory" in again.stderr
    assert "--force" in again.stderr
    assert (data / "ca/root.pem").read_bytes() == before

    forced = fleet("init", "--dir", data, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (data / "ca/root.pem").read_bytes() != before


def test_passphrase_from_a_private_file_encrypts_the_ca_keys(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    secret.chmod(0o600)
    data = tmp_path / "data"
    result = fleet("init", "--dir", data, "--passphrase-file", secret)
    assert result.returncode == 0, result.stderr
    assert "correct horse" not in result.stdout + result.stderr
    assert b"ENCRYPTED PRIVATE KEY" in (data / "ca/issuing.key").read_bytes()
    refused = openssl("pkey", "-in", data / "ca/issuing.key", "-passin", "pass:wrong", check=False)
    assert refused.returncode != 0
    openssl("pkey", "-in", data / "ca/issuing.key", "-passin", f"file:{secret}", "-noout")
    # The server key stays unencrypted so the server starts unattended.
    assert b"ENCRYPTED" not in (data / "tls/server.key").read_bytes()


def test_a_world_readable_passphrase_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("hunter2")
    secret.chmod(0o644)
    result = fleet("init", "--dir", tmp_path / "data", "--passphrase-file", secret)
    assert result.returncode == 1
    assert "chmod 600" in result.stderr
    assert not (tmp_path / "data").exists()


def test_bad_server_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    result = fleet("init", "--dir", tmp_path / "data", "--server-name", "bad name/x")
    assert result.returncode == 1
    assert "neither an IP address nor a DNS name" in result.stderr
    assert not (tmp_path / "data").exists()
