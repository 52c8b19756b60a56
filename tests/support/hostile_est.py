"""A hostile EST server for the device agent: the real fleet's TLS identity and CAs, answers
of the test's choosing.

It holds what a compromised or broken fleet server holds (the server's TLS key,
the issuing CA's key), so the agent's pinned-root TLS check passes and every
answer reaches the agent's own checks. ``/cacerts`` is the real one; what
``simpleenroll``/``simplereenroll`` answer is ``HostileEst.answer``, a function
of the request body (the DER CSR, base64) returning (status, headers, body).
Runs an aiohttp server in a thread of its own on a free loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.wire import encode_base64_body
from fleet.pki.ca import CertifiedKey, load_certificates_pem
from fleet.pki.keys import load_private_key_pem
from fleet.pki.pkcs7 import encode_certs_only
from tests.support.ports import free_port

Answer = tuple[int, dict[str, str], bytes]


class HostileEst:
    def __init__(self, data_dir: Path, answer: Callable[[bytes], Answer]) -> None:
        self.data_dir = data_dir
        self.answer = answer
        self.port = free_port()
        self.requests: list[str] = []
        self.issuing = CertifiedKey(
            load_certificates_pem((data_dir / "ca/issuing.pem").read_bytes())[0],
            load_private_key_pem((data_dir / "ca/issuing.key").read_bytes()),
        )
        self.roots = load_certificates_pem((data_dir / "ca/root.pem").read_bytes())
        self._cacerts = self.pkcs7(self.issuing.certificate, *self.roots)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def certificate(
        self,
        device_id: str,
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        public_key: ec.EllipticCurvePublicKey | None = None,
        not_before: dt.datetime | None = None,
        days: float = 30,
        padding: int = 0,
    ) -> x509.Certificate:
        """A certificate the real issuing CA signs, for any device, key and dates
        (``padding`` bytes in a non-critical private extension make it longer)."""
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        subject_key = public_key or (key or ec.generate_private_key(ec.SECP256R1())).public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.issuing.certificate.subject)
            .public_key(subject_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if padding:
            oid = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
            builder = builder.add_extension(
                x509.UnrecognizedExtension(oid, b"\x04\x82" + padding.to_bytes(2) + bytes(padding)),
                critical=False,
            )
        return builder.sign(self.issuing.private_key, hashes.SHA256())  # type: ignore[arg-type]

    @staticmethod
    def pkcs7(*certs: x509.Certificate) -> bytes:
        """An EST answer body: base64 of a certs-only PKCS#7."""
        return encode_base64_body(encode_certs_only(list(certs)), 64)

    async def _cacerts_handler(self, request: web.Request) -> web.Response:
        self.requests.append("cacerts")
        return web.Response(body=self._cacerts, headers={"Content-Type": "application/pkcs7-mime"})

    async def _enroll(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.match_info["op"])
        csr = base64.b64decode(await request.read())
        status, headers, body = self.answer(csr)
        return web.Response(status=status, headers=headers, body=body)

    def __enter__(self) -> HostileEst:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("hostile EST server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        assert self._thread is not None
        self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/.well-known/est/cacerts", self._cacerts_handler)
        app.router.add_post("/.well-known/est/{op}", self._enroll)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(
            str(self.data_dir / "tls/server.pem"), str(self.data_dir / "tls/server.key")
        )
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=context).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
