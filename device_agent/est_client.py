"""EST client (RFC 7030 / RFC 8951) over HTTPS, with ``ssl.SSLContext`` and http.client.

Synchronous on purpose: an enrollment is a handful of requests a month, and a
blocking client is small and easy to reason about; the long-running agent
calls it in a worker thread (``asyncio.to_thread``).

Outcomes are typed: a certificate, or Pending (202 + Retry-After), Refused
(401/403, reason from ``X-Fleet-Reason``), Transient (503, network, garbage;
``retry_after`` when the server said), ConfigError/PinMismatch (trust problems
that retrying cannot fix).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import http.client
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from device_agent.errors import (
    REVOKED_REASONS,
    AgentError,
    ConfigError,
    Pending,
    PinMismatch,
    Refused,
    Revoked,
    Transient,
)
from device_agent.keystore import KeyHandle, KeyStoreError
from device_agent.trust import CLOCK_SKEW, CaCerts, certificate_for, chain_from
from fleet.kernel.certs import server_certificate_problem
from fleet.kernel.clock import Clock, SystemClock
from fleet.kernel.errors import EncodingInvalid
from fleet.kernel.tls_policy import X509_V_FLAG_NO_CHECK_TIME
from fleet.kernel.wire import CT_PKCS10, csr_body, decode_certs_only

log = logging.getLogger("device_agent.est")

EST_PATH = "/.well-known/est"
MAX_BODY = 1 << 20
EXCHANGE_TIMEOUTS = 4  # a whole exchange may take this many per-operation timeouts
DEFAULT_PENDING_RETRY = 60.0
_WALL_CLOCK = SystemClock()
_REASON_CODE = re.compile(r"[a-z0-9_]{1,64}", re.ASCII)


@dataclasses.dataclass(frozen=True)
class ClientCertificate:
    """TLS client authentication: a certificate file and its key (bootstrap or operational)."""

    cert_file: Path
    key: KeyHandle


@dataclasses.dataclass(frozen=True)
class TokenAuth:
    """HTTP Basic with a one-time enrollment token (user = device id)."""

    device_id: str
    token: str = dataclasses.field(repr=False)


Auth = ClientCertificate | TokenAuth


def client_context(
    root: x509.Certificate | Sequence[x509.Certificate] | None,
    credential: ClientCertificate | None = None,
) -> ssl.SSLContext:
    """TLS 1.2+ client context; verifies the server against ``root`` (None: no verification).

    Several roots during a root rollover: the server's certificate may still
    come from the old root after the agent pinned the new one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if root is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        roots = [root] if isinstance(root, x509.Certificate) else list(root)
        pem = b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots)
        context.load_verify_locations(cadata=pem.decode())
        # request() judges the dates, with the agent's clock.
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    if credential is not None:
        try:
            credential.key.load_into(context, credential.cert_file)
        except (ssl.SSLError, OSError) as exc:
            raise KeyStoreError(
                f"cannot use {credential.cert_file} with key {credential.key.name} for TLS: {exc}"
            ) from exc
    return context


def est_base(server: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an EST server URL; the prefix ends with /.well-known/est."""
    parts = urlsplit(server if "://" in server else f"https://{server}")
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"--server {server!r}: expected https://HOST[:PORT][/.well-known/est]")
    path = parts.path.rstrip("/")
    if EST_PATH not in path:
        path += EST_PATH
    return parts.hostname, parts.port or 443, path


@dataclasses.dataclass(frozen=True)
class _Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class EstClient:
    """One EST server, trusted through ``root`` (the pinned fleet root, or all trusted roots)."""

    def __init__(
        self,
        server: str,
        root: x509.Certificate | Sequence[x509.Certificate],
        *,
        timeout: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self.server = server
        self.root = root
        self.timeout = timeout
        self.clock: Clock = clock or SystemClock()  # judges the server certificate's dates
        self.host, self.port, self.prefix = est_base(server)

    # -- operations ------------------------------------------------------------
    def cacerts(
        self,
        pinned_sha256: str,
        credential: ClientCertificate | None = None,
        *,
        kept: Sequence[x509.Certificate] = (),
        now: dt.datetime | None = None,
        skew: dt.timedelta = CLOCK_SKEW,
    ) -> CaCerts:
        """/cacerts over a verified connection. With ``credential`` this doubles as the
        proof that a new key and certificate work in a TLS handshake with the server.
        With ``now`` a root rollover in the answer is followed (``trust.chain_from``)."""
        response = self._request("GET", "cacerts", context=client_context(self.root, credential))
        return _expect_cacerts(response, pinned_sha256, kept=kept, now=now, skew=skew)

    def simpleenroll(
        self,
        csr: x509.CertificateSigningRequest,
        auth: Auth,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> x509.Certificate:
        headers = {"Content-Type": CT_PKCS10}
        credential = None
        if isinstance(auth, TokenAuth):
            pair = f"{auth.device_id}:{auth.token}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:
            credential = auth
        response = self._request(
            "POST",
            "simpleenroll",
            context=client_context(self.root, credential),
            body=csr_body(csr),
            headers=headers,
            on_sent=on_sent,
        )
        return _expect_certificate(response, "simpleenroll", csr)

    def simplereenroll(
        self,
        csr: x509.CertificateSigningRequest,
        current: ClientCertificate,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> x509.Certificate:
        response = self._request(
            "POST",
            "simplereenroll",
            context=client_context(self.root, current),
            body=csr_body(csr),
            headers={"Content-Type": CT_PKCS10},
            on_sent=on_sent,
        )
        return _expect_certificate(response, "simplereenroll", csr)

    # -- transport ---------------------------------------------------------------
    def _request(
        self,
        method: str,
        operation: str,
        *,
        context: ssl.SSLContext,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> _Response:
        return request(
            self.host,
            self.port,
            f"{self.prefix}/{operation}",
            method=method,
            context=context,
            timeout=self.timeout,
            body=body,
            headers=headers,
            on_sent=on_sent,
            now=self.clock.now,
        )


def request(
    host: str,
    port: int,
    path: str,
    *,
    method: str,
    context: ssl.SSLContext,
    timeout: float,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    on_sent: Callable[[], None] | None = None,
    now: Callable[[], dt.datetime] = _WALL_CLOCK.now,
) -> _Response:
    """One request; a verifying ``context`` leaves dates to the kernel, judged with ``now``.

    ``timeout`` bounds each socket operation, and the whole exchange gets
    EXCHANGE_TIMEOUTS times it: a server (or whatever answers before the pin is
    checked) that sends a byte now and then would otherwise hold the agent, and
    with it every later renewal, for as long as it likes.
    """
    where = f"https://{host}:{port}{path}"
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    watchdog = _Watchdog(conn, timeout * EXCHANGE_TIMEOUTS)
    try:
        conn.connect()
        if context.verify_mode != ssl.CERT_NONE:
            _check_server_dates(conn, where, now())
        conn.request(method, path, body=body, headers=headers or {})
        if on_sent is not None:
            on_sent()
        response = conn.getresponse()
        data = response.read(MAX_BODY + 1)
        if watchdog.fired:  # the cut looks like an end of data: the answer is incomplete
            raise TimeoutError("the exchange's deadline passed")
        if len(data) > MAX_BODY:
            raise Transient(f"{where}: response larger than {MAX_BODY} bytes")
        return _Response(response.status, response.headers, data)
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"{where}: the server's TLS certificate does not verify against the pinned fleet "
            f"root: {exc.verify_message}",
            hint="Check --server and --ca-fingerprint; a mismatch can also mean an "
            "interception proxy. Nothing was sent.",
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        # ssl.SSLError, timeouts, refused and reset connections are all OSErrors.
        if watchdog.fired:
            raise Transient(
                f"{where}: no complete answer within {timeout * EXCHANGE_TIMEOUTS:.0f} s"
            ) from exc
        raise Transient(f"{where}: {_describe(exc)}") from exc
    finally:
        watchdog.cancel()
        conn.close()


class _Watchdog:
    """Cuts a connection's socket when the exchange's deadline passes (from a timer
    thread): the blocked read or write then fails at once, as on a reset."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self._conn = conn
        self.fired = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        self.fired = True
        sock = self._conn.sock
        if sock is not None:
            # The plain socket's shutdown: SSLSocket.shutdown would tear down the TLS
            # object under the reading thread; this only makes its next recv see EOF.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _check_server_dates(conn: http.client.HTTPSConnection, where: str, now: dt.datetime) -> None:
    """The server's certificate, by this device's clock (OpenSSL was told not to look)."""
    sock = conn.sock
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    problem = server_certificate_problem(der, now, CLOCK_SKEW)
    if problem is not None:
        # Either clock may be wrong, or the operator must renew the server's certificate:
        # nothing was sent; retrying later is right.
        raise Transient(f"{where}: the server's TLS certificate is refused: {problem.detail}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (server down?)"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _retry_after(response: _Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    return None  # an HTTP date, or absent: let the backoff decide


def _reason(response: _Response, default: str) -> str:
    """The server's reason code, if it looks like one: it lands in status.json, the exit
    decision (revoked or not) and log lines, so nothing but the code alphabet."""
    reason = response.headers.get("X-Fleet-Reason", "").strip()
    return reason if _REASON_CODE.fullmatch(reason) else default


def _text(response: _Response) -> str:
    """The start of the server's answer, for a message: what the server sends ends up
    in a terminal (stderr, `fleet-agent status`), so escape sequences become ``?``."""
    text = response.body[:300].decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


def _expect_certificate(
    response: _Response, operation: str, csr: x509.CertificateSigningRequest
) -> x509.Certificate:
    if response.status == 200:
        try:
            certs = decode_certs_only(response.body)
        except EncodingInvalid as exc:
            raise Transient(f"{operation}: the server's answer is malformed: {exc}") from exc
        return certificate_for(certs, csr.public_key())
    _raise_for_status(response, operation)
    raise AssertionError("unreachable")  # pragma: no cover


def _expect_cacerts(
    response: _Response,
    pinned_sha256: str,
    *,
    kept: Sequence[x509.Certificate] = (),
    now: dt.datetime | None = None,
    skew: dt.timedelta = CLOCK_SKEW,
) -> CaCerts:
    if response.status != 200:
        _raise_for_status(response, "cacerts")
    try:
        certs = decode_certs_only(response.body)
    except EncodingInvalid as exc:
        raise Transient(f"cacerts: the server's answer is malformed: {exc}") from exc
    try:
        return chain_from(certs, pinned_sha256, kept=kept, now=now, skew=skew)
    except ValueError as exc:
        raise PinMismatch(
            f"/cacerts does not contain the pinned fleet root: {exc}",
            hint="Check --ca-fingerprint (sha256 of the fleet root, `fleet init` prints it) "
            "and --server. Nothing was enrolled.",
        ) from exc


def _raise_for_status(response: _Response, operation: str) -> None:
    status = response.status
    text = _text(response)
    if status == 202:
        after = _retry_after(response) or DEFAULT_PENDING_RETRY
        raise Pending(
            f"{operation}: the server holds this device for approval ({text or 'pending'})",
            retry_after=after,
            hint=f"ask again in {after:.0f} s; an admin approves with `fleet device approve ID`",
        )
    if status in (401, 403):
        reason = _reason(response, "unauthorized" if status == 401 else "forbidden")
        refused = Revoked if reason in REVOKED_REASONS else Refused
        raise refused(
            f"{operation}: refused by the server ({status} {reason}): {text}",
            reason=reason,
            status=status,
            hint=_REFUSAL_HINTS.get(
                reason, "ask a fleet admin; the reason code says what was refused"
            ),
        )
    if status in (429, 500, 502, 503, 504):
        raise Transient(
            f"{operation}: server unavailable ({status} {_reason(response, '')}) {text}".rstrip(),
            retry_after=_retry_after(response),
        )
    raise AgentError(f"{operation}: unexpected answer {status}: {text}")


_REFUSAL_HINTS = {
    "token_invalid": "the token is unknown, used or expired: ask for a new one "
    "(`fleet device token ID`)",
    "credentials_required": "give --bootstrap-cert/--bootstrap-key or --token-file",
    "certificate_expired": "the certificate expired: re-enroll with the bootstrap "
    "certificate (fleet-agent renew does it when one is configured)",
    "device_revoked": "this device was revoked; the agent stops (exit 6). A fleet admin "
    "decides whether it may enroll again (`fleet device token ID`, then "
    "`fleet-agent enroll --force --token-file F`)",
    "certificate_revoked": "this certificate was revoked; the agent stops (exit 6). A fleet "
    "admin decides whether the device may enroll again (`fleet device token ID`, then "
    "`fleet-agent enroll --force --token-file F`)",
    "device_suspended": "this device is suspended; a fleet admin can resume it "
    "(`fleet device resume ID`)",
}


def fetch_cacerts(
    server: str,
    pinned_root_sha256: str,
    *,
    timeout: float = 30.0,
    now: dt.datetime | None = None,
    skew: dt.timedelta = CLOCK_SKEW,
    clock: Clock | None = None,
) -> CaCerts:
    """RFC 7030 §4.1.1 bootstrap: learn the fleet CA chain with only a root fingerprint.

    1. Connect WITHOUT verifying the server, GET /cacerts, and find the
       certificate whose SHA-256 is the pinned fingerprint (else PinMismatch).
    2. Reconnect verifying the server's TLS certificate (and its name) against
       that root, and GET /cacerts again: only this second answer is used, so
       everything the agent keeps came over a channel authenticated by the pin.
       With ``now``, a root rollover in that answer is followed (``trust.chain_from``).
    """
    host, port, prefix = est_base(server)
    unverified = request(
        host, port, f"{prefix}/cacerts", method="GET", context=client_context(None), timeout=timeout
    )
    # A root rollover in the unverified answer is followed by the same rule (a
    # link signed by the pinned key), so no root can be slipped in here either.
    candidate = _expect_cacerts(unverified, pinned_root_sha256, now=now, skew=skew)
    return EstClient(server, candidate.roots, timeout=timeout, clock=clock).cacerts(
        pinned_root_sha256, kept=candidate.roots, now=now, skew=skew
    )
