"""Server TLS contexts that request a client certificate without judging it.

EST needs nginx's ``ssl_verify_client optional_no_ca``: the TLS layer asks
for a client certificate, and the application verifies it against the trust
domain of the operation (manufacturer CAs for bootstrap, the fleet issuing CA
for re-enrollment). Python's ``ssl`` cannot express that: CERT_OPTIONAL makes
OpenSSL abort the handshake when the presented certificate does not verify
against one global CA list, and a device would get a TLS alert instead of a
403 that says why.

So we install OpenSSL's certificate-verify callback on the context through
ctypes: it accepts every presented chain at the TLS layer, and
:mod:`fleet.kernel.chain` does the real verification per operation. The
SSL_CTX pointer is read from the SSLContext object and checked against the
context's own verify mode and options before anything is installed; if the
interpreter's layout differs, we refuse to start rather than guess.
"""

from __future__ import annotations

import _ssl
import asyncio
import contextlib
import ctypes
import socket
import ssl
from pathlib import Path

from fleet.kernel.errors import ConfigError
from fleet.kernel.tls_policy import TLS12_CIPHERS

_CERT_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _accept_presented_chain(_store_ctx: int | None, _arg: int | None) -> int:
    # 1 = "verified" for OpenSSL. The application verifies per trust domain.
    return 1


_ACCEPT = _CERT_VERIFY_CALLBACK(_accept_presented_chain)


def server_context(cert: Path, key: Path, *, request_client_certificate: bool) -> ssl.SSLContext:
    """A TLS 1.2/1.3 server context for ``cert``/``key``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)  # forward-secret AEAD only
    # No set_ecdh_curve(): on OpenSSL 3 it also narrows the TLS 1.3 groups,
    # and a client offering X25519 first would pay a HelloRetryRequest.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_TICKET
    # No session tickets: devices reconnect to EST weeks later and never
    # resume, and a TLS 1.3 ticket (the session re-encoded with the client
    # certificate, encrypted) costs ~0.15 ms of CPU per handshake. Without one,
    # the server sends nothing after the client's Finished, so its ACK would
    # be delayed and Nagle clients would wait 40 ms: AckAfterHandshake fixes that.
    ctx.num_tickets = 0
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the server TLS certificate {cert} / key {key}: {exc}",
            hint="Check [server] tls_cert and tls_key in fleet.toml (written by `fleet init`).",
        ) from exc
    if request_client_certificate:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        _accept_any_client_certificate(ctx)
    return ctx


def _libssl() -> ctypes.CDLL:
    # The _ssl extension's handle resolves libssl symbols from the very
    # library the interpreter's ssl module is linked against.
    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_set_cert_verify_callback.restype = None
    lib.SSL_CTX_set_cert_verify_callback.argtypes = [
        ctypes.c_void_p,
        _CERT_VERIFY_CALLBACK,
        ctypes.c_void_p,
    ]
    return lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int:
    # CPython's PySSLContext starts with PyObject_HEAD followed by SSL_CTX *ctx.
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if (
        pointer is None
        or lib.SSL_CTX_get_verify_mode(pointer) != int(ctx.verify_mode)
        or lib.SSL_CTX_get_options(pointer) != int(ctx.options)
    ):
        raise ConfigError(
            "this Python's ssl module does not expose OpenSSL's context as expected; "
            "cannot request client certificates without a TLS-level CA check",
            reason="tls_unsupported",
            hint="Run behind nginx (reverse-proxy mode) or use CPython 3.11-3.13.",
        )
    return pointer


def _accept_any_client_certificate(ctx: ssl.SSLContext) -> None:
    lib = _libssl()
    lib.SSL_CTX_set_cert_verify_callback(_ssl_ctx_pointer(ctx, lib), _ACCEPT, None)


# Linux only; elsewhere the ACK is merely delayed.
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class AckAfterHandshake(asyncio.Protocol):
    """Wraps the HTTP protocol of a TLS connection; ACKs the handshake at once.

    With no session ticket to send, nothing leaves the server after the
    client's Finished, so Linux delays that segment's ACK (up to 40 ms) and a
    client with Nagle's algorithm on (Python's ssl, many embedded stacks)
    holds its request back until the ACK comes: 40 ms per enrollment. When
    the handshake completes (that is when the HTTP protocol's
    connection_made runs), TCP_QUICKACK sends the pending ACK right away.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and _TCP_QUICKACK is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
