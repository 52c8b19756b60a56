"""A real `redis-server` on a free loopback port, started and stopped by its own PID."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.binaries import need_binary
from tests.support.ports import free_port
from tests.support.process import stop_process


class RedisServer:
    """One redis-server process, durable as fleet requires of a system of record:
    every write fsynced to the append-only file before Redis answers
    (``--appendonly yes --appendfsync always``); ``durable=False`` starts the
    default, volatile Redis that fleet refuses (for the tests of that refusal)."""

    def __init__(
        self, directory: Path, *, durable: bool = True, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.directory = directory
        self.durable = durable
        self.extra_args = extra_args
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> None:
        exe = need_binary("redis-server")
        self.port = port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        self._proc = subprocess.Popen(
            [
                exe,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "yes" if self.durable else "no",
                "--appendfsync", "always",
                "--dir", str(self.directory),
                "--logfile", str(log),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.ping():
            if self._proc.poll() is not None:
                stderr = self._proc.stderr.read().decode() if self._proc.stderr else ""
                log_text = log.read_text() if log.exists() else ""
                raise RuntimeError(f"redis-server exited early:\n{stderr}\n{log_text}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests isolate by namespace."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
