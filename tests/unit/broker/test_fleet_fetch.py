"""Fetching /crl and /cacerts: every way an answer can fail is a FetchFailed (a FleetError)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from broker_plugins.fleet_fetch import FetchFailed, fetch
from fleet.kernel.errors import FleetError

Answer = Callable[[socket.socket], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], str]]:
    """A loopback HTTP server that answers every request with ``answer``; its URL."""
    listeners: list[socket.socket] = []

    def start(answer: Answer) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def run() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    try:
                        conn.recv(65536)
                        answer(conn)
                    except OSError:
                        pass

        threading.Thread(target=run, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/crl"

    yield start
    for listener in listeners:
        listener.close()


def _send(data: bytes) -> Answer:
    return lambda conn: conn.sendall(data)


def _trickle(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(200):  # a byte every 50 ms: each read succeeds, the whole never ends
        conn.sendall(b"x")
        time.sleep(0.05)


CONTEXT = ssl.create_default_context()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: y\r\n" * 200 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
        b"",
    ],
    ids=["status-line", "chunking", "many-headers", "long-header", "503", "closed"],
)
def test_a_garbled_answer_is_a_failed_fetch(serve: Callable[[Answer], str], answer: bytes) -> None:
    url = serve(_send(answer))
    with pytest.raises(FetchFailed) as failed:
        fetch(url, CONTEXT, what="the CRL", limit=1024)
    assert isinstance(failed.value, FleetError)
    assert "the CRL" in failed.value.message


def test_an_answer_over_the_limit_is_refused(serve: Callable[[Answer], str]) -> None:
    body = b"x" * 5000
    url = serve(_send(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + body))
    assert fetch(url, CONTEXT, what="the CRL", limit=5000) == body
    with pytest.raises(FetchFailed, match="larger than 4999 bytes"):
        fetch(url, CONTEXT, what="the CRL", limit=4999)


def test_a_trickled_answer_gives_up_at_the_deadline(serve: Callable[[Answer], str]) -> None:
    url = serve(_trickle)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"took more than 0\.5 s"):
        fetch(url, CONTEXT, what="the CRL", limit=1 << 20, timeout=2, deadline=0.5)
    assert time.monotonic() - started < 3
