"""EST over HTTP (RFC 7030 §3.2, RFC 8951): aiohttp handlers.

Handlers only translate: HTTP in, a use-case call, HTTP out. Errors are
FleetErrors raised from below; fleet.server.errors maps them to statuses in
one place. Every response is HTTP/1.1 with Content-Length (no chunking), which
strongSwan needs.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hmac
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AttributeOID, NameOID

from fleet.authority.credentials import Credentials
from fleet.authority.enrollment import Authority, Issued
from fleet.authority.issuers import LiveIssuers
from fleet.config import FleetConfig
from fleet.http.body import read_body
from fleet.http.peer import PeerCertificates
from fleet.kernel.errors import (
    AuthError,
    CredentialsRequired,
    EncodingInvalid,
    EnrollmentRefused,
    NotFound,
    UnsupportedMediaType,
)
from fleet.kernel.wire import (
    CT_CACERTS,
    CT_CERTS_ONLY,
    CT_CSRATTRS,
    CT_PKCS8,
    CT_PKCS10,
    decode_base64_body,
    encode_base64_body,
)
from fleet.pki.csr import load_csr
from fleet.pki.csrattrs import encode_csr_attributes
from fleet.pki.keys import PublicKey, generate_private_key
from fleet.pki.pkcs7 import encode_certs_only
from fleet.pki.profile import DeviceProfile
from fleet.policy.enrollment import Credential

EST_PREFIX = "/.well-known/est"
MAX_CSR_BODY_BYTES = 64 * 1024  # base64 of the largest CSR a device sends, many times over
REALM = 'Basic realm="fleet"'

Handler = Callable[[web.Request, DeviceProfile], Awaitable[web.Response]]


@dataclasses.dataclass
class EstService:
    config: FleetConfig
    authority: Authority
    credentials: Credentials
    peers: PeerCertificates
    issuers: LiveIssuers  # current, next, retiring: devices and brokers learn a next CA here
    # Trusted roots (signing root first) and root-rollover links (fleet.authorities.PublishedCas).
    roots_and_links: Callable[[], tuple[x509.Certificate, ...]]
    # (issuing-set generation, roots_and_links() result, DER): encoded once per change
    _cacerts: tuple[int, tuple[x509.Certificate, ...], bytes] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", EST_PREFIX + "/{operation}", self.dispatch),
            web.route("*", EST_PREFIX + "/{label}/{operation}", self.dispatch),
            # strongSwan's `pki --est` appends /.well-known/est/OPERATION to the
            # path of its --url, so https://HOST/LABEL is how it reaches a label.
            web.route("*", "/{label}" + EST_PREFIX + "/{operation}", self.dispatch),
        ]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        operation = request.match_info["operation"]
        methods = self._operations.get(operation)
        if methods is None:
            raise NotFound(f"no EST operation {operation!r}", reason="unknown_operation")
        handler = methods.get(request.method)
        if handler is None:
            raise web.HTTPMethodNotAllowed(request.method, list(methods))
        label = request.match_info.get("label")
        profile = self.config.profile_for(label)
        if profile is None:
            raise NotFound(f"no EST label {label!r}", reason="unknown_label")
        request["operation"] = operation
        request["base64_line_length"] = self.config.base64_line_length_for(label)
        return await handler(request, profile)

    @functools.cached_property  # built once: dispatch runs on every request
    def _operations(self) -> dict[str, dict[str, Handler]]:
        return {
            "cacerts": {"GET": self.cacerts},
            "csrattrs": {"GET": self.csrattrs},
            "simpleenroll": {"POST": self.simpleenroll},
            "simplereenroll": {"POST": self.simplereenroll},
            "serverkeygen": {"POST": self.serverkeygen},
        }

    # -- operations ------------------------------------------------------------
    async def cacerts(self, request: web.Request, profile: DeviceProfile) -> web.Response:
        issuers = self.issuers.now
        roots = self.roots_and_links()
        cached = self._cacerts
        if cached is None or cached[0] != issuers.generation or cached[1] is not roots:
            # Current issuer first (what signs now), then next and retiring, then roots
            # and, during a root rollover, the links.
            cached = (issuers.generation, roots, encode_certs_only((*issuers.trusted, *roots)))
            self._cacerts = cached
        return _base64_response(request, cached[2], CT_CACERTS)

    async def csrattrs(self, request: web.Request, profile: DeviceProfile) -> web.Response:
        der = encode_csr_attributes(
            profile.preferred_key_type, require_pop=self.config.est.require_pop
        )
        return _base64_response(request, der, CT_CSRATTRS)

    async def simpleenroll(self, request: web.Request, profile: DeviceProfile) -> web.Response:
        self._require_some_credential(request)
        csr = await self._read_csr(request)
        issued = await self._enroll(request, csr, profile)
        return _issued_response(request, issued)

    async def simplereenroll(self, request: web.Request, profile: DeviceProfile) -> web.Response:
        self._require_some_credential(request)
        csr = await self._read_csr(request)
        if self._is_bootstrap_reenroll(request):
            issued = await self._enroll(request, csr, profile)
        else:
            issued = await self._reenroll(request, csr, profile)
        return _issued_response(request, issued)

    async def serverkeygen(self, request: web.Request, profile: DeviceProfile) -> web.Response:
        if not self.config.est.serverkeygen:
            raise NotFound(
                "serverkeygen is disabled on this server",
                reason="serverkeygen_disabled",
                hint="Generate the key on the device, or enable [est] serverkeygen.",
            )
        self._require_some_credential(request)
        csr = await self._read_csr(request)
        key = generate_private_key(profile.preferred_key_type)
        # The CSR authenticates the request and names the identity; the key
        # it carries is replaced by the one generated here (RFC 7030 §4.4).
        issued = await self._enroll(request, csr, profile, replace_key=key.public_key())
        pkcs8 = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return _multipart_keygen(request, pkcs8, encode_certs_only([issued.certificate]))

    # -- steps -----------------------------------------------------------------
    def _is_bootstrap_reenroll(self, request: web.Request) -> bool:
        """A simplereenroll that is really a first enrollment ([est] bootstrap_on_reenroll).

        strongSwan's `pki --est` sends simplereenroll whenever it is given a
        certificate, so a device enrolling with its factory certificate asks
        to *re*-enroll. A certificate that does not claim the fleet issuing
        CA is then handled exactly as on simpleenroll: verified against the
        manufacturer CAs, under the manifest and bootstrap-reuse policy. An
        operational certificate stays a renewal.
        """
        if not self.config.est.bootstrap_on_reenroll or "Authorization" in request.headers:
            return False
        peer = self.peers.leaf(request)
        return peer is not None and not self.credentials.is_fleet_issued(peer)

    def _require_some_credential(self, request: web.Request) -> None:
        """401 before reading the body: libest sends Basic only after a 401."""
        if self.peers.leaf(request) is None and "Authorization" not in request.headers:
            raise CredentialsRequired("no client certificate and no HTTP Basic credentials")

    async def _read_csr(self, request: web.Request) -> x509.CertificateSigningRequest:
        if request.content_type != CT_PKCS10:
            raise UnsupportedMediaType(
                f"expected Content-Type {CT_PKCS10}, got {request.content_type or 'none'}"
            )
        return load_csr(decode_base64_body(await read_body(request, MAX_CSR_BODY_BYTES)))

    async def _enroll(
        self,
        request: web.Request,
        csr: x509.CertificateSigningRequest,
        profile: DeviceProfile,
        *,
        replace_key: PublicKey | None = None,
    ) -> Issued:
        peer = self.peers.leaf(request)
        basic = _basic_auth(request)
        if peer is not None and self.credentials.is_fleet_issued(peer) and basic is None:
            # A device that already holds an operational certificate renews.
            return await self._reenroll(request, csr, profile)
        credential: Credential
        try:
            if basic is not None:
                credential = await self.credentials.token(*basic)
            elif peer is not None:
                presented = self.peers.intermediates(request)
                credential = await self.credentials.bootstrap(peer, presented)
            else:
                raise CredentialsRequired("no client certificate and no HTTP Basic credentials")
        except AuthError as exc:
            claimed = basic[0] if basic is not None else _claimed_id(peer)
            await self.authority.record_refusal(
                "enroll", claimed, exc.reason, remote=request.remote or ""
            )
            raise
        request["device_id"] = credential.device_id
        self._check_pop(request, csr)
        return await self.authority.enroll(
            credential, csr, profile, replace_key=replace_key, source=request.remote or ""
        )

    async def _reenroll(
        self, request: web.Request, csr: x509.CertificateSigningRequest, profile: DeviceProfile
    ) -> Issued:
        peer = self.peers.leaf(request)
        if peer is None:
            raise CredentialsRequired(
                "simplereenroll needs the current operational certificate as client certificate",
                hint="Present the certificate being renewed (TLS client authentication).",
            )
        try:
            identity = self.credentials.operational(peer)
        except AuthError as exc:
            await self.authority.record_refusal(
                "renew", _claimed_id(peer), exc.reason, remote=request.remote or ""
            )
            raise
        request["device_id"] = identity.device_id
        self._check_pop(request, csr)
        return await self.authority.reenroll(peer, identity.device_id, csr, profile)

    def _check_pop(self, request: web.Request, csr: x509.CertificateSigningRequest) -> None:
        """RFC 7030 §3.5: challengePassword = base64(tls-unique) links CSR and TLS session."""
        if not self.config.est.require_pop:
            return
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        # tls-unique is undefined in TLS 1.3 (RFC 8446 §C.5), though Python
        # returns a value there (CPython #95341): refuse rather than trust it.
        if ssl_object is None or ssl_object.version() not in ("TLSv1.2",):
            raise EnrollmentRefused(
                "proof-of-possession linking (tls-unique) needs TLS 1.2",
                reason="pop_requires_tls12",
                hint="Connect with TLS 1.2 to send tls-unique (or an admin drops require_pop).",
            )
        expected = ssl_object.get_channel_binding("tls-unique") or b""
        try:
            attribute = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
            sent = base64.b64decode(attribute.value, validate=True)
        except (x509.AttributeNotFound, binascii.Error, ValueError, TypeError):
            sent = b""
        if not expected or not hmac.compare_digest(sent, expected):
            raise EnrollmentRefused(
                "the CSR's challengePassword does not carry this TLS session's tls-unique",
                reason="pop_mismatch",
            )


# -- responses ---------------------------------------------------------------
def _base64_response(request: web.Request, der: bytes, content_type: str) -> web.Response:
    body = encode_base64_body(der, request["base64_line_length"])
    return web.Response(
        body=body,
        headers={"Content-Type": content_type, "Content-Transfer-Encoding": "base64"},
    )


def _issued_response(request: web.Request, issued: Issued) -> web.Response:
    return _base64_response(request, encode_certs_only([issued.certificate]), CT_CERTS_ONLY)


def _multipart_keygen(request: web.Request, pkcs8: bytes, certs_only: bytes) -> web.Response:
    boundary = "fleet-" + secrets.token_hex(12)
    line = request["base64_line_length"]
    parts = [
        (CT_PKCS8, encode_base64_body(pkcs8, line)),
        (CT_CERTS_ONLY, encode_base64_body(certs_only, line)),
    ]
    body = b""
    for content_type, payload in parts:
        body += (
            f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode() + payload
    body += f"--{boundary}--\r\n".encode()
    return web.Response(
        body=body,
        # The answer carries a private key: no cache on the way (nginx, a corporate
        # proxy) or on the device may keep a copy (as for admin tokens).
        headers={
            "Content-Type": f"multipart/mixed; boundary={boundary}",
            "Cache-Control": "no-store",
        },
    )


def _claimed_id(cert: x509.Certificate | None) -> str | None:
    """The CN a refused certificate claims, for the audit log only."""
    if cert is None:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


def _basic_auth(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise CredentialsRequired(f"unsupported authorization scheme {scheme!r}; use Basic")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise EncodingInvalid("malformed HTTP Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password:
        raise EncodingInvalid("HTTP Basic credentials must be device-id:token")
    return user, password
