"""The client certificate of a request: from our own TLS, or from a trusted proxy.

In proxy mode nginx or Apache terminates TLS (``ssl_verify_client
optional_no_ca`` / ``SSLVerifyClient optional_no_ca``) and forwards the client
certificate URL-escaped in a header; an empty header, or Apache's ``(null)``
(mod_headers' rendering of an unset variable), means no certificate. Anyone can send that
header, so it is believed only from the configured proxy addresses; from any
other address its presence is an attack and the request is refused.

Either way the certificate is the client's input: one that cannot be decoded
(an X.509 v2 certificate, a malformed name) is a 400 ``certificate_invalid``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import urllib.parse
from collections.abc import Sequence

from aiohttp import web
from cryptography import x509

from fleet.http.peer_chain import presented_intermediates
from fleet.kernel.decoding import load_certificate
from fleet.kernel.errors import AuthError, FleetError
from fleet.kernel.reasons import Reason

_CACHE_KEY = "fleet.peer_certificate"


class UntrustedProxyHeader(AuthError):
    reason = Reason.UNTRUSTED_PROXY_HEADER
    hint = "Only the configured reverse proxies may forward client certificates."


class PeerCertificates:
    """Finds the leaf client certificate of a request (None when none was presented)."""

    def __init__(
        self,
        *,
        proxy_mode: bool,
        trusted_proxies: Sequence[str] = (),
        header: str = "X-SSL-Client-Cert",
    ) -> None:
        self._proxy_mode = proxy_mode
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self._header = header
        self._trusted: dict[str, bool] = {}  # remote address -> trusted (a handful of proxies)

    def leaf(self, request: web.Request) -> x509.Certificate | None:
        if _CACHE_KEY not in request:
            request[_CACHE_KEY] = self._find(request)
        cert: x509.Certificate | None = request[_CACHE_KEY]
        return cert

    def intermediates(self, request: web.Request) -> tuple[x509.Certificate, ...]:
        """The CA certificates the client sent after its leaf in our own TLS
        handshake (path hints only). Behind a proxy none: it forwards the leaf."""
        if self._proxy_mode or request.transport is None:
            return ()
        ssl_object = request.transport.get_extra_info("ssl_object")
        presented = []
        for der in presented_intermediates(ssl_object):
            with contextlib.suppress(FleetError):  # an undecodable hint is no hint
                presented.append(load_certificate(der, pem=False))
        return tuple(presented)

    def _find(self, request: web.Request) -> x509.Certificate | None:
        forwarded = request.headers.get(self._header)
        if forwarded is not None:
            if not self._proxy_mode or not self._from_trusted_proxy(request):
                raise UntrustedProxyHeader(
                    f"{self._header} header from {request.remote or 'an unknown address'}, "
                    "which is not a trusted proxy"
                )
            return _parse_forwarded(forwarded)
        if self._proxy_mode:
            return None
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return load_certificate(der, pem=False) if der else None

    def _from_trusted_proxy(self, request: web.Request) -> bool:
        remote = request.remote or ""
        trusted = self._trusted.get(remote)
        if trusted is None:
            try:
                address = ipaddress.ip_address(remote)
            except ValueError:
                return False
            trusted = any(address in network for network in self._proxies)
            if len(self._trusted) < 1024:  # the proxies, and a few refused others
                self._trusted[remote] = trusted
        return trusted


# What nginx's $ssl_client_escaped_cert escapes in a PEM certificate.
_PEM_ESCAPES = (("%0A", "\n"), ("%20", " "), ("%2B", "+"), ("%2F", "/"), ("%3D", "="))


def _unescape(value: str) -> str:
    """URL-unescape a forwarded PEM certificate.

    Plain str.replace of the five escapes a PEM can need is a fraction of the
    cost of urllib's general unquote (this runs on every proxied request);
    with %25 (which could build a new escape) or anything else left, unquote does it.
    """
    if "%25" not in value:
        text = value
        for escape, char in _PEM_ESCAPES:
            text = text.replace(escape, char)
        if "%" not in text:
            return text
    return urllib.parse.unquote(value)


# Apache's mod_headers writes an unset SSL_CLIENT_CERT as "(null)", escaped or not.
_NO_CERTIFICATE = ("", "(null)")


def _parse_forwarded(value: str) -> x509.Certificate | None:
    text = _unescape(value).strip()
    if text in _NO_CERTIFICATE:
        return None  # the proxy saw no client certificate
    return load_certificate(
        text.encode(), pem=True, what="the client certificate the proxy forwarded"
    )
