"""A real PostgreSQL 15 cluster in a temp dir, on a free loopback port (fsync on).

``initdb`` + ``pg_ctl`` from the Debian server package; as root they run as the
``postgres`` user (PostgreSQL refuses to run as root). Trust authentication on
127.0.0.1 only: the cluster lives as long as the test session and nothing but
this machine's loopback reaches it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.binaries import strict
from tests.support.ports import free_port

PG_BIN = Path(os.environ.get("FLEET_PG_BIN", "/usr/lib/postgresql/15/bin"))
INSTALL = "apt-get install -y postgresql"


def need_postgres() -> Path:
    """The server binaries' directory; skip (fail under FLEET_STRICT=1) when absent."""
    if (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists():
        return PG_BIN
    message = f"PostgreSQL server binaries not in {PG_BIN}; install them with: {INSTALL}"
    if strict():
        pytest.fail(f"FLEET_STRICT=1: {message}")
    pytest.skip(message)


class PostgresServer:
    """One cluster; ``url`` names its ``fleet`` database (superuser ``fleet``)."""

    def __init__(self, *, name: str = "primary") -> None:
        self.bin = need_postgres()
        self.name = name  # cluster_name: a standby's application_name on its primary
        self.port = 0
        # Not pytest's tmp_path: that is root-only (0700) and the server runs as postgres.
        self.directory = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        self.data = self.directory / "data"
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgresql://fleet@127.0.0.1:{self.port}/fleet"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            args, capture_output=True, text=True, cwd=self.directory, check=False, **self._as
        )
        if result.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text()[-4000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}\n{tail}")

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", "fleet",
                "--auth=trust", "--no-instructions", "-E", "UTF8", "--locale=C.UTF-8",
            )  # fmt: skip
        self.port = self.port or free_port()
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c synchronous_commit=on -c max_connections=200 "
            f"-c cluster_name={self.name}"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
            str(self.directory / "server.log"), "-w", "-t", "30", "-o", options, "start",
        )  # fmt: skip
        if (self.data / "standby.signal").exists():
            return  # read-only until promoted; its data came from the primary
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'fleet'").fetchone() is None:
                conn.execute("CREATE DATABASE fleet")

    def start_standby(self, name: str = "standby1") -> PostgresServer:
        """A streaming standby of this (running) server, made with pg_basebackup -R."""
        standby = PostgresServer(name=name)
        standby._run(
            str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", "fleet", "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast",
        )  # fmt: skip
        standby.start()
        return standby

    def make_standby_synchronous(self, name: str) -> None:
        """COMMIT on this primary waits until standby ``name`` has flushed the WAL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
            conn.execute("SELECT pg_reload_conf()")

    def promote(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    @property
    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    @property
    def admin_url(self) -> str:
        return f"postgresql://fleet@127.0.0.1:{self.port}/postgres"

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def fresh_schema() -> str:
    """A schema name for one test's data (tests share the session's cluster)."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the whole session; tests isolate by schema."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()
