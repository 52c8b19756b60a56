"""Drive `fleet-agent` as a device would: a real process, a state directory, a real server.

Also a counting TCP gate to put in front of a server: closed, it accepts and
drops connections (server down) and counts them, so a test can assert that an
agent backs off instead of hammering; open, it forwards to the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

from cryptography import x509

from tests.support.ports import free_port


@dataclasses.dataclass
class AgentRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def fleet_agent(
    *args: str | Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> AgentRun:
    """Run `python -m device_agent ARGS` (the `fleet-agent` console script)."""
    full_env = {**os.environ, "FLEET_AGENT_BACKOFF_FLOOR": "0.2", "FLEET_AGENT_BACKOFF_BASE": "0.5"}
    full_env.pop("FLEET_AGENT_CRASH_AT", None)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "device_agent", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
    return AgentRun(proc.returncode, proc.stdout, proc.stderr)


def root_fingerprint(root_pem: Path) -> str:
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(root_pem.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


class _LoopbackProxy:
    """A loopback TCP listener that forwards accepted connections to ``target_port``
    unless a subclass's ``_accepted`` decides otherwise; a context manager."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # close() does not wake a thread blocked in accept(); a connection does.
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._stop.is_set():
                client.close()
                return
            self._accepted(client)

    def _accepted(self, client: socket.socket) -> None:
        raise NotImplementedError

    def _forward(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            upstream = stack.enter_context(
                socket.create_connection(("127.0.0.1", self.target_port))
            )
            pump = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            pump.start()
            _pump(client, upstream)
            pump.join(timeout=30)


class CountingGate(_LoopbackProxy):
    """A TCP port that is 'down' (accept, count, close) or forwards to ``target``."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.open = False
        self.refused = 0  # connections dropped while closed
        self.forwarded = 0

    def _accepted(self, client: socket.socket) -> None:
        if not self.open:
            self.refused += 1
            client.close()
            return
        self.forwarded += 1
        threading.Thread(target=self._forward, args=(client,), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def state_files(state_dir: Path) -> Iterator[Path]:
    yield from sorted(p for p in state_dir.iterdir() if p.is_file())


def verify_identity(state_dir: Path) -> dict[str, Any]:
    """`status` reports a usable identity whose certificate `openssl verify` accepts
    against the stored chain, and whose key matches it. Returns the status."""
    from tests.support.openssl import openssl

    run = fleet_agent("status", "--state-dir", state_dir)
    assert run.returncode == 0, run
    report: dict[str, Any] = run.json()
    assert report["state"] in ("ok", "renewal_due"), report
    cert = Path(report["cert_file"])
    openssl("verify", "-CAfile", report["cacerts_file"], cert)
    key = cert.with_suffix(".key")
    assert key.stat().st_mode & 0o777 == 0o600
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    private = load_pem_private_key(key.read_bytes(), password=None)
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    assert private.public_key() == certificate.public_key(), "key and certificate do not match"
    return report


class StormProxy(_LoopbackProxy):
    """A loopback stand-in for an overloaded server in front of a real one.

    It terminates TLS with the server's own certificate and key (so a client
    that pins the fleet root still verifies it). While a storm is on, each of
    the next ``storm`` connections gets one ``503 Service Unavailable`` with
    ``Retry-After`` after its request is read, and its time is recorded in
    ``refused_at`` (monotonic seconds); every other connection is forwarded
    (its time in ``forwarded_at``),
    still encrypted, to ``target_port``.
    """

    def __init__(
        self, target_port: int, tls_cert: Path, tls_key: Path, *, retry_after: str = "1"
    ) -> None:
        import ssl

        super().__init__(target_port)
        self.retry_after = retry_after
        self.storm = 0
        self.refused_at: list[float] = []
        self.forwarded = 0
        self.forwarded_at: list[float] = []
        self._lock = threading.Lock()
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(tls_cert, tls_key)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start_storm(self, connections: int) -> None:
        with self._lock:
            self.storm = connections
            self.refused_at = []

    def _accepted(self, client: socket.socket) -> None:
        with self._lock:
            refuse = self.storm > 0
            if refuse:
                self.storm -= 1
                self.refused_at.append(time.monotonic())
            else:
                self.forwarded += 1
                self.forwarded_at.append(time.monotonic())
        target = self._unavailable if refuse else self._forward
        threading.Thread(target=target, args=(client,), daemon=True).start()

    def _unavailable(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            with self._tls.wrap_socket(client, server_side=True) as tls:
                _read_request(tls)
                tls.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\n"
                    b"Retry-After: " + self.retry_after.encode() + b"\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                with contextlib.suppress(OSError):
                    tls.unwrap()
        except OSError:
            pass
        finally:
            client.close()


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request (head and Content-Length body) so that closing does not reset."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk
