"""Mosquitto (plugin + sidecar) against what arrives from outside before any trust.

* The sidecar fetches ``crl_url`` (plain HTTP is allowed: a CRL is signed) and
  ``cacerts_url``. A garbled answer - a bad status line, broken chunking, too
  many headers, a CRL or PKCS#7 that is not one - is a failed fetch: logged and
  retried. It used to escape as an exception that ended the sidecar, so the
  plugin, without heartbeats, refused every device after max_staleness_seconds
  (and the sidecar, restarted, fetched the same answer again).
* Mosquitto reads a whole packet, allocating its announced length (up to
  256 MiB), before the plugin sees the CONNECT: any client whose certificate
  chains to the root - a revoked device included - held that much memory per
  connection. The generated mosquitto.conf sets ``max_packet_size``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.pki.crl import build_crl
from tests.support.binaries import need_binary
from tests.support.fleet_server import make_data_dir
from tests.support.mosquitto_broker import (
    BrokerNode,
    BrokerNodes,
    Session,
    broker_server_cert,
    fleet_broker,
    load_ca,
    mint_client_cert,
)
from tests.support.mqtt_raw import client_context

pytestmark = [pytest.mark.needs_binary("mosquitto"), pytest.mark.needs_binary("gcc")]

MAX_STALENESS = 2  # heartbeats must go on while the fetches fail, or devices are refused


def _garbled_crl(data_dir: Path) -> bytes:
    """A CRL whose issuer name does not decode (cryptography raises TypeError on it)."""
    issuer = load_ca(data_dir, "issuing")
    crl = build_crl(
        issuer, [], now=dt.datetime.now(dt.UTC), next_update_in=dt.timedelta(days=1), crl_number=1
    )
    der = bytearray(crl.public_bytes(Encoding.DER))
    # The issuer CN's UTF8String tag (0x0c) becomes a BIT STRING (0x03).
    cn = der.index(bytes.fromhex("0603550403")) + 5
    der[cn] = 0x03
    return bytes(der)


def _answers(body: bytes) -> list[bytes]:
    return [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: y\r\n" * 200 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    ]


@dataclasses.dataclass
class HostileServer:
    """Answers each request with the next of ``answers`` (in turn), over TLS if given a context."""

    answers: list[bytes]
    context: ssl.SSLContext | None = None
    served: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._next = itertools.cycle(self.answers)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            try:
                if self.context is not None:
                    conn = self.context.wrap_socket(conn, server_side=True)
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(next(self._next))
                self.served += 1
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._listener.close()


@dataclasses.dataclass
class Env:
    node: BrokerNode
    root: Path
    device: tuple[str, Path, Path]
    crl: HostileServer
    cacerts: HostileServer


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    need_binary("mosquitto")
    need_binary("gcc")
    base = tmp_path_factory.mktemp("hostile")
    plugin = Path(fleet_broker("mosquitto", "build", "--out", base).stdout.strip())
    data = make_data_dir(base / "data").parent
    # The /cacerts server's TLS certificate chains to the fleet root: the sidecar trusts it.
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(*broker_server_cert(data, base / "cacerts-tls"))
    crl = HostileServer(_answers(_garbled_crl(data)))
    cacerts = HostileServer(_answers(b"not base64 PKCS#7 at all"), tls)
    node = BrokerNodes.issue(data, base, plugin).node(
        base / "node",
        crl_url=f"http://127.0.0.1:{crl.port}/crl",
        extra=(
            f'cacerts_url = "https://127.0.0.1:{cacerts.port}/.well-known/est/cacerts"\n'
            f"ca_refresh_seconds = 0.2\nmax_staleness_seconds = {MAX_STALENESS}"
        ),
    )
    device_id = "hostile-dev"
    cert, key = mint_client_cert(
        base, device_id, common_name=device_id, issuer=load_ca(data, "issuing")
    )
    try:
        once = fleet_broker("mosquitto", "sync", "--config", node.settings, "--once", check=False)
        # The CRL cannot be fetched: --once says so and fails, without a traceback.
        assert "Traceback" not in once.stderr, once.stderr
        assert once.returncode == 1
        assert "error: " in once.stderr
        node.start_broker()
        node.start_sidecar()
        yield Env(node, data / "ca/root.pem", (device_id, cert, key), crl, cacerts)
    finally:
        node.stop()
        crl.close()
        cacerts.close()


def _wait_served(server: HostileServer, count: int, env: Env, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while server.served < count:
        sidecar = env.node.sidecar
        assert sidecar is not None
        assert sidecar.poll() is None, "the sidecar died:\n" + env.node.sidecar_log.read_text()
        assert time.monotonic() < deadline, f"only {server.served} answers fetched"
        time.sleep(0.05)


def test_garbled_crl_and_cacerts_answers_leave_the_sidecar_running(env: Env) -> None:
    # Every kind of answer, twice over; the CRL is retried once a second, so this
    # outlasts max_staleness_seconds: a sidecar that stopped heartbeating shows.
    _wait_served(env.cacerts, 2 * len(env.cacerts.answers), env)
    _wait_served(env.crl, 2 * len(env.crl.answers), env)
    assert env.node.sidecar is not None
    assert env.node.sidecar.poll() is None
    log = env.node.sidecar_log.read_text()
    assert "cannot decode the CRL" in log
    assert "BadStatusLine" in log
    device_id, cert, key = env.device
    session = Session(env.node.port, ca=env.root, cert=cert, key=key, client_id=device_id)
    try:
        assert session.open(), f"refused: {session.connack}"
    finally:
        session.close()


def test_an_oversized_packet_is_refused_before_the_broker_reads_it(env: Env) -> None:
    # A CONNECT announcing 8 MiB: the broker closes at once instead of waiting for
    # (and allocating) the body; the plugin has not seen this client yet.
    _, cert, key = env.device
    context = client_context(env.root, cert, key)
    with (
        socket.create_connection(("127.0.0.1", env.node.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(bytes([0x10, 0x80, 0x80, 0x80, 0x04]))  # remaining length 8 MiB
        try:
            closed = tls.recv(1) == b""
        except TimeoutError:
            closed = False
        except OSError:
            closed = True
    assert closed, "the broker waited for an 8 MiB CONNECT"
