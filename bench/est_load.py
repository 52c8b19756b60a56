"""The load and the accounting of bench/est_enroll.py: devices, TLS clients, server CPU.

Every request is a fresh TCP + TLS 1.3 connection presenting a device's
bootstrap certificate (no session resumption), then one request: a POST of a
CSR to simpleenroll, or (``Target.probe``) a GET of /healthz over the very
same kind of connection, which tells the cost of the connection from the cost
of the enrollment work. Server CPU is utime + stime from /proc of every
process of the server under test, read just before and after each batch.
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import _ssl
import argparse
import base64
import collections
import ctypes
import dataclasses
import datetime as dt
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support when run as bench/est_enroll.py

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import CertifiedKey
from fleet.records import ManifestEntry, ManufacturerCA
from tests.support.factory import make_bootstrap, write_pem
from tests.support.fleet_server import run_store
from tests.support.raw_http import read_response, request_bytes

ENROLL_PATH = "/.well-known/est/simpleenroll"
PROBE_PATH = "/healthz"  # the same connection, no enrollment: fleet's and the naive server's
CLK_TCK = os.sysconf("SC_CLK_TCK")
KERNEL_THREADS = ("kworker", "jbd2", "ksoftirqd")


# -- material (made before anything is measured) -------------------------------------


@dataclasses.dataclass
class Device:
    device_id: str
    cert: Path  # bootstrap certificate
    key: Path  # bootstrap key
    body: bytes  # base64 DER CSR for a fresh device key, as RFC 7030 sends it


def make_devices(
    work: Path, manufacturer: CertifiedKey, prefix: str, count: int
) -> tuple[list[Device], list[ManifestEntry]]:
    devices, entries = [], []
    for index in range(count):
        device_id = f"{prefix}-{index:05d}"
        bootstrap = make_bootstrap(manufacturer, device_id)
        cert, key = write_pem(work / device_id, bootstrap)
        device_key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        der = csr.sign(device_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        devices.append(Device(device_id, cert, key, base64.encodebytes(der)))
        entries.append(
            ManifestEntry(device_id, sha256_fingerprint(bootstrap.certificate), "bench", prefix)
        )
    return devices, entries


def trust_manufacturer(config: Path, manufacturer: CertifiedKey) -> None:
    pem = manufacturer.certificate.public_bytes(serialization.Encoding.PEM).decode()
    now = dt.datetime.now(dt.UTC)
    ca = ManufacturerCA(sha256_fingerprint(manufacturer.certificate), "Bench", pem, now)
    run_store(config, lambda store: store.add_manufacturer_ca(ca))


# -- client ----------------------------------------------------------------------------


def client_context(root: Path, device: Device, group: str) -> ssl.SSLContext:
    """TLS 1.3 only, verifying the server, presenting the device's bootstrap certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(root)
    context.load_cert_chain(device.cert, device.key)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    if group != "default":
        context.set_ecdh_curve(group)  # OpenSSL 3: the only group offered (key share too)
    return context


def one_request(port: int, context: ssl.SSLContext, body: bytes) -> int:
    """A new connection, a full handshake, one POST of ``body`` (a GET of the
    probe path when it is empty); returns the HTTP status."""
    if body:
        headers = {"Content-Type": "application/pkcs10", "Connection": "close"}
        request = request_bytes("POST", ENROLL_PATH, body=body, headers=headers)
    else:
        request = request_bytes("GET", PROBE_PATH, headers={"Connection": "close"})
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(request)
        status, _, _ = read_response(sock)
        return status


@dataclasses.dataclass
class Load:
    sent: int = 0
    ok: int = 0
    failures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    wall: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def drive(
    port: int,
    jobs: Sequence[tuple[ssl.SSLContext, bytes]],
    concurrency: int,
    max_seconds: float,
) -> Load:
    """Send every job with ``concurrency`` client threads; never raises."""
    load = Load()
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def run(job: tuple[ssl.SSLContext, bytes]) -> None:
        if time.monotonic() > deadline:
            outcome = "not sent (time limit)"
        else:
            try:
                status = one_request(port, *job)
                outcome = "" if status == 200 else f"HTTP {status}"
            except (OSError, ConnectionError) as exc:
                outcome = f"{type(exc).__name__}: {exc}"[:80]
        with lock:
            load.sent += 1
            if outcome:
                load.failures[outcome] += 1
            else:
                load.ok += 1

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(run, jobs))
    load.wall = time.monotonic() - started
    return load


def negotiated(port: int, context: ssl.SSLContext) -> str:
    """Version, cipher and key-exchange group of one handshake (no request sent)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        cipher = sock.cipher()
        return f"{sock.version()} {cipher[0] if cipher else '?'} {_group(sock)}"


def _group(sock: ssl.SSLSocket) -> str:
    """SSL_get_negotiated_group via ctypes (the ssl module has no API for it)."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)  # resolves libssl/libcrypto symbols
        lib.SSL_get_version.restype = ctypes.c_char_p
        lib.SSL_get_version.argtypes = [ctypes.c_void_p]
        lib.SSL_ctrl.restype = ctypes.c_long
        lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.OBJ_nid2sn.restype = ctypes.c_char_p
        lib.OBJ_nid2sn.argtypes = [ctypes.c_int]
        # CPython's _ssl._SSLSocket: PyObject_HEAD, PyObject *Socket, SSL *ssl.
        address = id(sock._sslobj) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
        pointer = ctypes.c_void_p.from_address(address).value
        if not pointer or lib.SSL_get_version(pointer).decode() != sock.version():
            return "group ?"
        nid = lib.SSL_ctrl(pointer, 134, 0, None)  # SSL_CTRL_GET_NEGOTIATED_GROUP
        name = lib.OBJ_nid2sn(nid) if nid > 0 else None
        return name.decode() if name else "group ?"
    except (OSError, AttributeError, ValueError):
        return "group ?"


# -- server CPU ------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, utime + stime ticks) of ``pid``, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (
        text[text.index("(") + 1 : text.rindex(")")],
        int(fields[1]),
        int(fields[11]) + int(fields[12]),
    )


def _all_stats() -> dict[int, tuple[str, int, int]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def cpu_ticks(roots: Sequence[int]) -> dict[int, int]:
    """CPU ticks of each process in the trees under ``roots`` (master + workers)."""
    stats = _all_stats()
    tree, frontier = set(), [pid for pid in roots if pid in stats]
    while frontier:
        pid = frontier.pop()
        tree.add(pid)
        frontier += [child for child, (_, ppid, _) in stats.items() if ppid == pid]
    return {pid: stats[pid][2] for pid in tree}


def kernel_thread_ticks() -> dict[int, int]:
    """CPU ticks of each kernel thread that does work for processes (fsync, I/O, softirq)."""
    stats = _all_stats()
    return {
        pid: ticks for pid, (name, _, ticks) in stats.items() if name.startswith(KERNEL_THREADS)
    }


def cpu_used(before: dict[int, int], after: dict[int, int]) -> float:
    """Seconds of CPU between two snapshots (processes started in between count in full)."""
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items()) / CLK_TCK


def wait_idle(roots: Sequence[int], timeout: float = 15.0) -> None:
    """Until the servers stop burning CPU (a worker still importing, a backlog)."""
    deadline = time.monotonic() + timeout
    previous = cpu_ticks(roots)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = cpu_ticks(roots)
        if cpu_used(previous, current) <= 0.01:
            return
        previous = current


# -- scenarios -------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    key: str
    title: str
    requests: int
    ok: int
    failures: dict[str, int]
    warmup_failures: dict[str, int]
    cpu_seconds: float
    cpu_parts: dict[str, float]
    kernel_threads_seconds: float  # kworker/jbd2/ksoftirqd during the run, any cause
    wall_seconds: float
    tls: str
    processes: int

    @property
    def failed(self) -> int:
        return sum(self.failures.values()) + sum(self.warmup_failures.values())

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.requests if self.requests else 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.wall_seconds if self.wall_seconds else 0.0


@dataclasses.dataclass(frozen=True)
class Target:
    """A running server under test: where to send requests, which processes to count."""

    key: str
    title: str
    port: int
    parts: dict[str, list[int]]  # component name -> root pids
    # The same connections with a GET of PROBE_PATH instead of an enrollment: what the
    # connection itself costs (TLS handshake with a client certificate, HTTP, close).
    probe: bool = False

    def probing(self) -> Target:
        title = f"{self.title.split(' ', 1)[0]}b {next(iter(self.parts))} connection only"
        return dataclasses.replace(self, key=self.key + ":probe", title=title, probe=True)


@dataclasses.dataclass
class Tally:
    """One target's measured batches, summed over the rounds."""

    target: Target
    requests: int = 0
    ok: int = 0
    failures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    warmup_failures: dict[str, int] = dataclasses.field(default_factory=dict)
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    kernel: float = 0.0
    wall: float = 0.0
    tls: str = ""
    processes: int = 0
    batches: list[float] = dataclasses.field(default_factory=list)  # CPU ms/request each

    def result(self) -> Result:
        return Result(
            key=self.target.key,
            title=self.target.title,
            requests=self.requests,
            ok=self.ok,
            failures=dict(self.failures),
            warmup_failures=self.warmup_failures,
            cpu_seconds=sum(self.cpu.values()),
            cpu_parts=dict(self.cpu),
            kernel_threads_seconds=self.kernel,
            wall_seconds=self.wall,
            tls=self.tls,
            processes=self.processes,
        )


@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    config: Path
    root: Path  # fleet root CA: the client verifies every server with it

    def measure(
        self, targets: Sequence[Target], devices: Mapping[str, Sequence[Device]], warmup: int
    ) -> list[Result]:
        """Every target's measured requests in ``--rounds`` batches, the targets taking
        turns (in a rotating order) within each round: on a shared, noisy machine each
        server sees the same spread of load, so their ratios hold where back-to-back
        runs did not."""
        group, rounds = self.args.group, self.args.rounds
        jobs: dict[str, list[tuple[ssl.SSLContext, bytes]]] = {}
        tallies = {t.key: Tally(t) for t in targets}
        for target in targets:
            own = devices[target.key]
            jobs[target.key] = [
                (client_context(self.root, d, group), b"" if target.probe else d.body) for d in own
            ]
            warm = drive(
                target.port, jobs[target.key][:warmup], self.args.concurrency, self.args.max_seconds
            )
            tallies[target.key].warmup_failures = dict(warm.failures)
            tallies[target.key].tls = negotiated(target.port, jobs[target.key][0][0])
        for turn in range(rounds):
            order = [*targets[turn % len(targets) :], *targets[: turn % len(targets)]]
            for target in order:
                measured = jobs[target.key][warmup:]
                size = -(-len(measured) // rounds)  # ceiling: the last batch may be short
                batch = measured[turn * size : (turn + 1) * size]
                if batch:
                    self._batch(tallies[target.key], batch)
        if rounds > 1:
            for tally in tallies.values():
                spread = " ".join(f"{ms:.2f}" for ms in tally.batches)
                print(f"  {tally.target.title:<28} ms CPU/req by round: {spread}")
        return [tallies[t.key].result() for t in targets]

    def _batch(self, tally: Tally, batch: Sequence[tuple[ssl.SSLContext, bytes]]) -> None:
        parts = tally.target.parts
        wait_idle([pid for pids in parts.values() for pid in pids])
        kernel_before = kernel_thread_ticks()
        before = {name: cpu_ticks(pids) for name, pids in parts.items()}
        load = drive(tally.target.port, batch, self.args.concurrency, self.args.max_seconds)
        after = {name: cpu_ticks(pids) for name, pids in parts.items()}
        kernel_after = kernel_thread_ticks()
        used = {name: cpu_used(before[name], after[name]) for name in parts}
        for name, seconds in used.items():
            tally.cpu[name] = tally.cpu.get(name, 0.0) + seconds
        tally.batches.append(1000 * sum(used.values()) / len(batch))
        lost = [pid for name in parts for pid in before[name] if pid not in after[name]]
        if lost:
            load.failures[f"server processes exited during the run: {lost}"] += 1
        tally.requests += len(batch)
        tally.ok += load.ok
        tally.failures.update(load.failures)
        tally.kernel += cpu_used(kernel_before, kernel_after)
        tally.wall += load.wall
        tally.processes = sum(len(after[name]) for name in parts)
