"""A real Mosquitto 2.0 with an mTLS listener for fleet devices, stopped by its own PID.

The listener is configured the way ../shared/notes/mosquitto-2.0.11.md says a
fleet broker must be: the fleet server certificate (``tls/server.pem``, SAN
localhost and 127.0.0.1), ``cafile`` = fleet root + issuing CA, a client
certificate required and its CN used as the username, and each device
confined to ``devices/<id>/#`` by an ACL pattern.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.binaries import need_binary
from tests.support.ports import free_port
from tests.support.process import stop_process

DEVICE_ACL = "pattern readwrite devices/%u/#"


class Mosquitto:
    """One mosquitto process; ``restart()`` keeps its port (and its sessions with ``persistence``).

    ``extra_acl`` lines are appended to the ACL file, e.g. ``("user observer",
    "topic read devices/#")`` for a test client that watches every device.
    ``crlfile`` is passed through; send ``reload()`` (SIGHUP) after rewriting it.
    """

    def __init__(
        self,
        directory: Path,
        data_dir: Path,
        *,
        extra_acl: Sequence[str] = (),
        crlfile: Path | None = None,
        persistence: bool = False,
    ) -> None:
        self.directory = directory
        self.data_dir = data_dir
        self.extra_acl = tuple(extra_acl)
        self.crlfile = crlfile
        self.persistence = persistence
        self.port = 0
        self.log_path = directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        cafile = self.directory / "fleet-ca.pem"
        cafile.write_bytes(
            (self.data_dir / "ca/root.pem").read_bytes()
            + (self.data_dir / "ca/issuing.pem").read_bytes()
        )
        acl = self.directory / "acl"
        acl.write_text("\n".join([DEVICE_ACL, *self.extra_acl]) + "\n")
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"acl_file {acl}",
            "set_tcp_nodelay true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.log_path}",
            "log_type all",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            f"listener {self.port} 127.0.0.1",
            f"cafile {cafile}",
            f"certfile {self.data_dir / 'tls/server.pem'}",
            f"keyfile {self.data_dir / 'tls/server.key'}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
        if self.crlfile is not None:
            lines.append(f"crlfile {self.crlfile}")
        if os.geteuid() == 0:
            # As root mosquitto would drop to `mosquitto`, who cannot read the test keys.
            lines.insert(0, f"user {getpass.getuser()}")
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, port: int | None = None) -> Mosquitto:
        exe = need_binary("mosquitto")
        self.port = port or self.port or free_port()
        conf = self._write_config()
        self._proc = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while not self.listening():
            if self._proc.poll() is not None:
                error = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited early: {error}\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log()}")
            time.sleep(0.02)
        return self

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def reload(self) -> None:
        """SIGHUP: re-read the CRL (new connections only) and the ACL file."""
        assert self._proc is not None
        self._proc.send_signal(1)

    def restart(self) -> None:
        self.stop()
        self.start(self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connections_of(self, client_id: str) -> list[str]:
        """Log lines of accepted connections with client id ``client_id``."""
        pattern = re.compile(rf"New client connected from \S+ as {re.escape(client_id)} ")
        return [line for line in self.log().splitlines() if pattern.search(line)]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)


@contextlib.contextmanager
def running_mosquitto(
    directory: Path,
    data_dir: Path,
    *,
    extra_acl: Sequence[str] = (),
    crlfile: Path | None = None,
    persistence: bool = False,
) -> Iterator[Mosquitto]:
    broker = Mosquitto(
        directory, data_dir, extra_acl=extra_acl, crlfile=crlfile, persistence=persistence
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Observer:
    """A paho client that watches ``devices/#`` (needs ``observer_acl(id)`` on the broker).

    Its session is persistent (clean session off, QoS 1), so with a broker
    started with ``persistence`` it misses nothing across a broker restart.
    """

    def __init__(self, broker: Mosquitto, device_id: str, cert: Path, key: Path, ca: Path) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(cert, key)
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.tls_set_context(context)
        client.reconnect_delay_set(1, 1)

        def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                c.subscribe("devices/#", qos=1)
                self.connected.set()

        def on_disconnect(*_args: Any) -> None:
            self.connected.clear()

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            self.messages.put((message.topic, message.payload))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.connect("127.0.0.1", broker.port, keepalive=30)
        client.loop_start()
        self._client = client
        if not self.connected.wait(10):
            self.close()
            raise RuntimeError(f"observer could not connect:\n{broker.log()}")
        time.sleep(0.2)  # let the SUBACK land before anything is published

    def wait_for(
        self, predicate: Callable[[str, bytes], bool], timeout: float = 15.0
    ) -> tuple[str, bytes]:
        """The first message (kept in order, others are dropped) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching MQTT message arrived in time")
            try:
                topic, payload = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(topic, payload):
                return topic, payload

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def observer_acl(device_id: str) -> tuple[str, ...]:
    """ACL lines letting ``device_id`` read every device's topics (a test observer)."""
    return (f"user {device_id}", "topic read devices/#")
