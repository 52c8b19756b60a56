"""A PostgreSQL 15 primary and a synchronous streaming standby, each on its own host.

The store role for PostgreSQL (see cluster.py's ``STORE_ENGINES``): the
primary commits only once the standby has the WAL (``synchronous_commit =
on`` with the standby named in ``synchronous_standby_names``), so a commit a
client saw succeed survives losing the primary's machine. Clients list both
hosts with ``target_session_attrs=read-write`` and so find the new primary
after a promotion without being reconfigured.

Servers run as the ``postgres`` account when the tests run as root (initdb
refuses root), through ``setpriv``, which execs (no fork): the PID we hold
is the postmaster's, so a SIGKILL really kills the server. Authentication
is ``trust`` for the private test subnet only; nothing listens elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.binaries import need_binary
from tests.support.netns import Host, Network

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PORT = 5432
STANDBY_NAME = "standby"


def _pg(program: str) -> str:
    path = PG_BIN / program
    return str(path) if path.exists() else need_binary(program)


def _as_postgres(args: Sequence[str | Path]) -> list[str]:
    """``args`` run as the postgres account when we are root (exec, no fork)."""
    if os.geteuid() != 0:
        return [str(a) for a in args]
    return [
        need_binary("setpriv"),
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
        *map(str, args),
    ]


@dataclasses.dataclass
class PostgresPair:
    net: Network
    primary: Host
    standby: Host
    base: Path

    @property
    def url(self) -> str:
        """The store URL: both hosts, whichever accepts writes."""
        return (
            f"postgresql://postgres@{self.primary.address}:{PORT},{self.standby.address}:{PORT}"
            "/postgres?target_session_attrs=read-write"
        )

    @property
    def dsn(self) -> str:
        """Both hosts; libpq connects to whichever accepts writes."""
        return (
            f"host={self.primary.address},{self.standby.address} port={PORT},{PORT} "
            "dbname=postgres user=postgres target_session_attrs=read-write connect_timeout=2 "
            # A server that vanished mid-commit is noticed in seconds, not minutes.
            "tcp_user_timeout=2000 keepalives_idle=1 keepalives_interval=1 keepalives_count=2"
        )

    def dsn_of(self, host: Host) -> str:
        return f"host={host.address} port={PORT} dbname=postgres user=postgres connect_timeout=2"

    def standby_in_sync(self, client: Host) -> bool:
        import psycopg

        def ask() -> bool:
            with psycopg.connect(self.dsn_of(self.primary), autocommit=True) as conn:
                row = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (STANDBY_NAME,),
                ).fetchone()
            return row is not None and row[0] == "sync"

        return client.call(ask)

    def lose_primary(self) -> None:
        """The primary's machine is gone: unplugged, then the postmaster killed (-9)."""
        self.net.cut(self.primary.name)
        for proc in self.primary.procs:
            proc.kill()
            proc.wait(10)

    def kill_primary(self) -> int:
        """kill -9 the primary's postmaster by its PID (its host stays up: clients are
        refused at once, and its backends exit on their own when they see the
        postmaster gone); the PID killed."""
        postmaster = self.primary.procs[0]
        postmaster.kill()
        postmaster.wait(10)
        return postmaster.pid

    def promote(self) -> None:
        self.standby.run(
            _as_postgres([_pg("pg_ctl"), "promote", "-w", "-D", self.base / "standby"])
        )


def _start(host: Host, data: Path, log: Path) -> None:
    proc = host.popen(_as_postgres([_pg("postgres"), "-D", data]), log=log)
    host.wait_listening(PORT, proc, log, timeout=60)
    ready = host.command([_pg("pg_isready"), "-q", "-h", host.address, "-p", str(PORT)])
    deadline = time.monotonic() + 60
    while subprocess.run(ready, check=False).returncode != 0:  # listening is not accepting
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"postgres on {host.name} not ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def start_postgres_pair(net: Network, first_octet: int = 31) -> PostgresPair:
    """Primary at ``<subnet>.first_octet``, standby at the next address; stopped with ``net``.

    The data directories live in a fresh directory under the system temp dir
    owned by postgres (a pytest tmp_path of root is not reachable by it),
    removed when ``net`` closes.
    """
    primary = net.add_host("store", first_octet)
    standby = net.add_host("store-standby", first_octet + 1)
    base = Path(tempfile.mkdtemp(prefix="fleet-netns-pg-"))
    net.on_close(lambda: shutil.rmtree(base, ignore_errors=True))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(base, account.pw_uid, account.pw_gid)
    subnet = f"{net.subnet}.0/24"
    primary_dir = base / "primary"
    primary.run(
        _as_postgres(
            [_pg("initdb"), "-D", primary_dir, "-U", "postgres", "-A", "trust", "--no-sync"]
        )
    )
    settings = {
        "listen_addresses": f"'{primary.address}'",
        "port": str(PORT),
        "unix_socket_directories": "''",  # TCP only: both servers share one filesystem
        "wal_level": "replica",
        "max_wal_senders": "4",
        "synchronous_commit": "on",
        "synchronous_standby_names": f"'{STANDBY_NAME}'",
        "wal_sender_timeout": "2s",
    }
    with (primary_dir / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    with (primary_dir / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {subnet} trust\nhost replication all {subnet} trust\n")
    _start(primary, primary_dir, base / "primary.log")

    standby_dir = base / "standby"
    standby.run(
        _as_postgres(
            [
                _pg("pg_basebackup"),
                "-D", standby_dir,
                "-d", f"host={primary.address} port={PORT} user=postgres "
                f"application_name={STANDBY_NAME}",
                "-R", "-X", "stream", "--no-sync",
            ]
        )
    )  # fmt: skip
    with (standby_dir / "postgresql.conf").open("a") as conf:
        conf.write(f"listen_addresses = '{standby.address}'\n")
        # Promoted, it commits alone until an operator attaches a new standby.
        conf.write("synchronous_standby_names = ''\n")
    _start(standby, standby_dir, base / "standby.log")
    pair = PostgresPair(net, primary, standby, base)
    deadline = time.monotonic() + 30
    while not pair.standby_in_sync(standby):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the standby never became synchronous:\n{_tail(base)}")
        time.sleep(0.1)
    return pair


def _tail(base: Path) -> str:
    return "".join(
        p.read_text(errors="replace")[-2000:] for p in (base / "standby.log", base / "primary.log")
    )
