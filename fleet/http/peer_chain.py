"""The intermediate CA certificates a TLS client sent after its leaf.

A device may send its manufacturer intermediate(s) in the handshake (IEEE
802.1AR). Python's ``ssl`` shows only the leaf before 3.13
(``get_unverified_chain``); OpenSSL keeps the whole chain the peer sent, so on
3.11/3.12 we read it with ``SSL_get_peer_cert_chain`` through ctypes, the way
fleet.server.tls reaches the context. The pointer is checked against the
connection's own SSL_CTX before use; anything unexpected yields no chain
(the admin's intermediate pool still applies), never a crash.

What a client sends is only a hint for building the path: the chain is
verified up to a trusted manufacturer root like any other. A reverse proxy
forwards only the leaf, so behind one this is always empty.
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import ssl
from typing import Any

# More than this is not a device certificate chain; ignore the rest.
MAX_PRESENTED = 8


def presented_intermediates(ssl_object: Any) -> tuple[bytes, ...]:
    """DER of the certificates the client sent after its leaf; () if unknown."""
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return ()
    unverified = getattr(ssl_object, "get_unverified_chain", None)
    if unverified is not None:  # Python >= 3.13: the leaf comes first
        chain = unverified() or []
        return tuple(c.public_bytes(_ssl.ENCODING_DER) for c in chain[1 : MAX_PRESENTED + 1])
    return _from_openssl(ssl_object)


def _from_openssl(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    lib = _lib()
    if lib is None:
        return ()
    inner = getattr(ssl_object, "_sslobj", None)
    context = ssl_object.context
    if inner is None or context is None:
        return ()
    # CPython's PySSLSocket: PyObject_HEAD, PyObject *Socket, SSL *ssl, ...
    # PySSLContext: PyObject_HEAD, SSL_CTX *ctx. Verified against each other.
    word = ctypes.sizeof(ctypes.c_void_p)
    ssl_ptr = ctypes.c_void_p.from_address(id(inner) + object.__basicsize__ + word).value
    ctx_ptr = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not ssl_ptr or not ctx_ptr or lib.SSL_get_SSL_CTX(ssl_ptr) != ctx_ptr:
        return ()
    # On the server side the stack holds what the client sent after its leaf.
    stack = lib.SSL_get_peer_cert_chain(ssl_ptr)
    if not stack:
        return ()
    count = min(lib.OPENSSL_sk_num(stack), MAX_PRESENTED)
    presented = []
    for index in range(max(count, 0)):
        cert = lib.OPENSSL_sk_value(stack, index)
        size = lib.i2d_X509(cert, None) if cert else -1
        if size <= 0:
            continue
        buffer = ctypes.create_string_buffer(size)
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))
        if lib.i2d_X509(cert, ctypes.byref(cursor)) == size:
            presented.append(buffer.raw)
    return tuple(presented)


@functools.cache
def _lib() -> ctypes.CDLL | None:
    try:
        # The _ssl extension's handle resolves libssl and libcrypto symbols
        # from the very libraries the interpreter's ssl module is linked against.
        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
        lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
        lib.SSL_get_peer_cert_chain.restype = ctypes.c_void_p
        lib.SSL_get_peer_cert_chain.argtypes = [ctypes.c_void_p]
        lib.OPENSSL_sk_num.restype = ctypes.c_int
        lib.OPENSSL_sk_num.argtypes = [ctypes.c_void_p]
        lib.OPENSSL_sk_value.restype = ctypes.c_void_p
        lib.OPENSSL_sk_value.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.i2d_X509.restype = ctypes.c_int
        lib.i2d_X509.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lib
