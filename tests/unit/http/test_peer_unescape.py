"""The forwarded certificate header: the fast unescape equals urllib's unquote."""

from __future__ import annotations

import urllib.parse

from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from fleet.http.peer import _parse_forwarded, _unescape
from tests.support.factory import make_bootstrap, make_manufacturer

# What nginx's $ssl_client_escaped_cert leaves unescaped (ngx_escape_uri, URI component).
_NGINX_SAFE = "-_.!~*'()"


def test_an_nginx_escaped_certificate_parses() -> None:
    cert = make_bootstrap(make_manufacturer("M"), "dev-1").certificate
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    escaped = urllib.parse.quote(pem, safe=_NGINX_SAFE)
    assert "%0A" in escaped
    assert _unescape(escaped) == pem
    assert _parse_forwarded(escaped) == cert


def test_no_certificate_as_nginx_and_apache_say_it() -> None:
    # nginx: an empty header; Apache's mod_headers: "(null)", plain or escaped.
    for value in ("", "  ", "(null)", urllib.parse.quote("(null)"), "%28null%29"):
        assert _parse_forwarded(value) is None, value


@given(st.text(alphabet="%0123456789AaBbCcDdEeFf=+/ \n-xyz", max_size=40))
def test_equals_unquote_on_escape_soup(text: str) -> None:
    assert _unescape(text) == urllib.parse.unquote(text)


@given(st.text(max_size=200))
def test_equals_unquote_on_quoted_text(text: str) -> None:
    quoted = urllib.parse.quote(text, safe=_NGINX_SAFE)
    assert _unescape(quoted) == urllib.parse.unquote(quoted) == text
