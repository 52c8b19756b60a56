"""Where an enrollment's CPU goes, in one process: fleet's enrollment work against the naive
prototype's, step by step, and what TLS handshakes around it do to it.

bench/est_enroll.py measures whole servers and splits fleet against the naive prototype
into the connection and the enrollment work; this script looks inside the work:

1. **handshake**: server-side CPU of one TLS 1.3 handshake with a client certificate
   (memory BIOs, no sockets), with fleet's server context (no session tickets, the chain
   left to the kernel) and with Python's defaults as the naive server uses them (two
   session tickets);
2. **work**: N first enrollments through the server's own Credentials and Authority on a
   real SQLite store (fdatasync and all; 6 at a time, as the load of est_enroll.py), and
   the naive server's work (CSR check, a minimal certificate, one durable SQLite row),
   with fleet's time per step (wrapped with process_time; a step that awaits the store
   counts only its synchronous part);
3. **cold caches**: the same fleet work, each enrollment after two handshakes (as in a
   live server), minus the handshakes alone: how much more it costs there.

    .venv/bin/python bench/est_work.py [--devices N]

It prints figures and asserts no timing (see bench/README.md).
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime as dt
import functools
import shutil
import sqlite3
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import fleet.authority.credentials as credentials_module
import fleet.authority.enrollment as enrollment_module
import fleet.store._sqlite_engine as engine_module
from fleet.config import load_config
from fleet.est.routes import EstService
from fleet.kernel.clock import SystemClock
from fleet.kernel.decoding import load_certificate
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.pkcs7 import encode_certs_only
from fleet.records import ManifestEntry, ManufacturerCA
from fleet.server.app import build_app, load_issuer
from fleet.server.tls import server_context
from fleet.store.factory import open_store
from tests.support.factory import make_bootstrap, make_manufacturer, write_pem
from tests.support.fleet_server import make_data_dir

CONCURRENCY = 6
STEPS = (  # (module, attribute, label): fleet's steps, timed where they are defined
    (credentials_module, "verify_client_chain", "chain check (manufacturer trust domain)"),
    (enrollment_module, "validate_request", "CSR policy"),
    (enrollment_module.Authority, "_sign", "certificate built and signed"),
    (engine_module, "_commit", "store write: statements + COMMIT"),
)


class Material:
    """A data directory, a trusted manufacturer, devices with bootstrap certificates and CSRs."""

    def __init__(self, work: Path, count: int) -> None:
        self.config_path = make_data_dir(work / "data")
        self.config = load_config(self.config_path)
        self.maker = make_manufacturer("Bench")
        self.boots = [make_bootstrap(self.maker, f"d-{i:05d}") for i in range(count)]
        self.ders = [b.certificate.public_bytes(serialization.Encoding.DER) for b in self.boots]
        self.csrs = []
        for _ in range(count):
            key = ec.generate_private_key(ec.SECP256R1())
            csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            self.csrs.append(
                csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
            )
        self.device_pem = write_pem(work / "device", self.boots[0])


# -- 1. handshakes ---------------------------------------------------------------------


def handshake_cpu(material: Material, count: int) -> dict[str, float]:
    """Server-side µs of CPU per handshake: fleet's context, and Python's default one."""
    data = material.config_path.parent
    cert, key = material.device_pem
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(data / "ca/root.pem")
    client.load_cert_chain(cert, key)
    client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_3
    client.set_ecdh_curve("prime256v1")
    fleet = server_context(
        data / "tls/server.pem", data / "tls/server.key", request_client_certificate=True
    )
    naive = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    naive.load_cert_chain(data / "tls/server.pem", data / "tls/server.key")
    naive.load_verify_locations(cadata=material.maker.certificate.public_bytes(
        serialization.Encoding.PEM).decode())  # fmt: skip
    naive.verify_mode = ssl.CERT_OPTIONAL
    return {
        "fleet (no tickets)": 1e6 * sum(handshake(client, fleet) for _ in range(count)) / count,
        "naive (Python defaults)": 1e6
        * sum(handshake(client, naive) for _ in range(count))
        / count,
    }


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> float:
    """One handshake and the first application bytes; the server side's CPU seconds."""
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    to_server, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(to_client, from_client, server_hostname="localhost")
    spent = 0.0
    started = time.process_time()
    s = server.wrap_bio(to_server, from_server, server_side=True)
    spent += time.process_time() - started
    client_done = server_done = False
    while not (client_done and server_done):
        if not client_done:
            with contextlib.suppress(ssl.SSLWantReadError):
                c.do_handshake()
                client_done = True
        to_server.write(from_client.read())
        started = time.process_time()
        if not server_done:
            with contextlib.suppress(ssl.SSLWantReadError):
                s.do_handshake()
                server_done = True
        spent += time.process_time() - started
        to_client.write(from_server.read())
    c.write(b"x")
    to_server.write(from_client.read())
    started = time.process_time()
    s.read(1)
    to_client.write(from_server.read())  # TLS 1.3 session tickets, if the server sends any
    return spent + time.process_time() - started


# -- 2. and 3. the enrollment work -------------------------------------------------------


@contextlib.contextmanager
def timed_steps() -> Iterator[collections.Counter[str]]:
    """Wrap each of STEPS to add its process_time to a counter, for the block."""
    spent: collections.Counter[str] = collections.Counter()
    saved = []
    for owner, name, label in STEPS:
        original = owner.__dict__[name]
        function = original.__func__ if isinstance(original, staticmethod) else original

        def wrapper(*args: Any, _f: Any = function, _l: str = label, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_l] += time.process_time() - started

        wrapped = functools.wraps(function)(wrapper)
        setattr(owner, name, staticmethod(wrapped) if isinstance(original, staticmethod)
                else wrapped)  # fmt: skip
        saved.append((owner, name, original))
    try:
        yield spent
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


async def fleet_work(material: Material, count: int, interleave: int) -> dict[str, float]:
    """µs per enrollment: all of it, each step, and (``interleave``) with handshakes between."""
    config = material.config
    store = await open_store(config.store_url, feed_poll_seconds=1.0)
    try:
        now = dt.datetime.now(dt.UTC)
        pem = material.maker.certificate.public_bytes(serialization.Encoding.PEM).decode()
        fingerprint = sha256_fingerprint(material.maker.certificate)
        await store.add_manufacturer_ca(ManufacturerCA(fingerprint, "Bench", pem, now))
        entries = [
            ManifestEntry(f"d-{i:05d}", sha256_fingerprint(b.certificate), "m", "b")
            for i, b in enumerate(material.boots)
        ]
        await store.import_manifest(entries, now)
        app = build_app(config, store=store, issuer=load_issuer(config, None), clock=SystemClock())
        est = next(r.handler.__self__ for r in app.router.routes()  # type: ignore[union-attr]
                   if isinstance(getattr(r.handler, "__self__", None), EstService))  # fmt: skip
        profile = config.profile_for(None)
        assert profile is not None

        async def enroll(i: int) -> None:
            leaf = load_certificate(material.ders[i], pem=False)
            csr = x509.load_der_x509_csr(material.csrs[i])
            credential = await est.credentials.bootstrap(leaf, ())
            issued = await est.authority.enroll(credential, csr, profile)
            base64.encodebytes(encode_certs_only([issued.certificate]))

        await enroll(0)  # warm-up
        half = (count - 1) // 2
        figures: dict[str, float] = {}
        with timed_steps() as spent:
            figures["all"] = await _per_item(range(1, 1 + half), enroll, concurrent=True)
        figures |= {label: 1e6 * seconds / half for label, seconds in spent.items()}
        # Cold caches: the rest, alternating in blocks between enrollments alone and
        # enrollments each after two handshakes, and handshakes alone.
        data = material.config_path.parent
        cert, key = material.device_pem
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(data / "ca/root.pem")
        client.load_cert_chain(cert, key)
        server = server_context(
            data / "tls/server.pem", data / "tls/server.key", request_client_certificate=True
        )
        alone = between = shakes = 0.0
        rest = list(range(1 + half, count))
        block = max(1, len(rest) // (2 * interleave)) if interleave else 0
        for start in range(0, len(rest) - 1, 2 * block) if block else ():
            first, second = rest[start : start + block], rest[start + block : start + 2 * block]
            alone += await _per_item(first, enroll) * len(first)

            async def after_handshakes(i: int) -> None:
                handshake(client, server)
                handshake(client, server)
                await enroll(i)

            between += await _per_item(second, after_handshakes) * len(second)
            started = time.process_time()
            for _ in second:
                handshake(client, server)
                handshake(client, server)
            shakes += 1e6 * (time.process_time() - started)
        if block:
            done = len(rest) // (2 * block) * block
            figures["cold: alone"] = alone / done
            figures["cold: after two handshakes"] = (between - shakes) / done
        return figures
    finally:
        await store.close()


async def _per_item(
    items: range | list[int], work: Callable[[int], Awaitable[None]], *, concurrent: bool = False
) -> float:
    """µs of this process's CPU per item."""
    started = time.process_time()
    if concurrent:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                await work(i)

        await asyncio.gather(*(one(i) for i in items))
    else:
        for i in items:
            await work(i)
    return 1e6 * (time.process_time() - started) / max(1, len(items))


def naive_work(material: Material, work: Path) -> float:
    """µs per enrollment of the naive prototype's work (bench/naive_est_server.py's)."""
    issuer = load_issuer(material.config, None)
    db = sqlite3.connect(work / "naive.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE certs (serial TEXT PRIMARY KEY, device TEXT, pem TEXT)")
    started = time.process_time()
    for der, csr_der in zip(material.ders, material.csrs, strict=True):
        csr = x509.load_der_x509_csr(csr_der)
        assert csr.is_signature_valid
        leaf = x509.load_der_x509_certificate(der)
        device = str(leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
            .issuer_name(issuer.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(issuer.private_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        db.execute("INSERT INTO certs VALUES (?, ?, ?)", (f"{cert.serial_number:x}", device, pem))
        base64.encodebytes(encode_certs_only([cert]))
    spent = time.process_time() - started
    db.close()
    return 1e6 * spent / len(material.ders)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="enrollments of each kind")
    parser.add_argument("--rounds", type=int, default=6, help="blocks of the cold-cache part")
    args = parser.parse_args(argv)
    if args.devices < 8:
        parser.error("--devices must be at least 8")
    work = Path(tempfile.mkdtemp(prefix="fleet-est-work-"))
    try:
        material = Material(work, args.devices)
        print(f"{args.devices} devices; server-side CPU, µs (process_time)")
        print("\n1. one TLS 1.3 handshake with a client certificate (memory BIOs):")
        for name, us in handshake_cpu(material, min(args.devices, 500)).items():
            print(f"  {name:<42} {us:8.0f}")
        naive = naive_work(material, work)
        figures = uvloop.run(fleet_work(material, args.devices, args.rounds))
        print(f"\n2. one enrollment's work ({CONCURRENCY} at a time for fleet):")
        print(f"  {'fleet, all of it':<42} {figures.pop('all'):8.0f}")
        cold = {k: figures.pop(k) for k in list(figures) if k.startswith("cold")}
        for label, us in sorted(figures.items(), key=lambda item: -item[1]):
            print(f"    {label:<40} {us:8.0f}")
        print(f"  {'naive prototype, all of it':<42} {naive:8.0f}")
        if cold:
            alone, between = cold["cold: alone"], cold["cold: after two handshakes"]
            print("\n3. fleet's work after two handshakes each (their own CPU subtracted):")
            print(f"  {'alone':<42} {alone:8.0f}")
            print(f"  {'after two handshakes':<42} {between:8.0f}   ({between / alone:.2f}x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
