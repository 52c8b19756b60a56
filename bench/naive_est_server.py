"""A naive aiohttp EST enroll server: the "naive prototype" reference, run here.

The issue quotes "a naive aiohttp prototype" measured elsewhere; this is one,
so that est_enroll.py compares fleet with it on the same machine, in the same
run. It does the least an enrollment needs and nothing fleet adds:

- TLS by Python's ssl defaults (CERT_OPTIONAL against the manufacturer CA, so
  OpenSSL checks the chain in the handshake; default session tickets);
- GET /healthz: "ok" (the benchmark's probe of what a connection alone costs);
- POST simpleenroll: base64 CSR, its signature checked, a certificate for the
  client certificate's CN signed by fleet's issuing CA, one SQLite row
  (WAL, synchronous=FULL: durable, like fleet), a PKCS#7 certs-only answer.

No manifest, policy, audit log, access log, metrics, overload limits or error
handling: a bad request raises. Never use it for anything but this benchmark.

    python bench/naive_est_server.py FLEET_TOML PORT MANUFACTURER_CA_PEM DB_PATH
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import sqlite3
import ssl
import sys
from pathlib import Path

import uvloop
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.config import load_config
from fleet.pki.pkcs7 import encode_certs_only
from fleet.server.app import load_issuer


def main() -> None:
    config_path, port, manufacturer_pem, db_path = sys.argv[1:5]
    config = load_config(Path(config_path))
    issuer = load_issuer(config, None)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS certs (serial TEXT PRIMARY KEY, device TEXT, pem TEXT)")

    async def enroll(request: web.Request) -> web.Response:
        csr = x509.load_der_x509_csr(base64.b64decode(await request.read()))
        if not csr.is_signature_valid:
            raise web.HTTPBadRequest()
        ssl_object = request.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        leaf = x509.load_der_x509_certificate(ssl_object.getpeercert(True))
        device = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(device))]))
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
        return web.Response(
            body=base64.encodebytes(encode_certs_only([cert])),
            headers={"Content-Type": "application/pkcs7-mime; smime-type=certs-only"},
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def serve() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
        context.load_verify_locations(manufacturer_pem)
        context.verify_mode = ssl.CERT_OPTIONAL
        app = web.Application()
        app.router.add_post("/.well-known/est/simpleenroll", enroll)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        loop = asyncio.get_running_loop()
        await loop.create_server(runner.server, "127.0.0.1", int(port), ssl=context, backlog=1024)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
