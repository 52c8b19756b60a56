"""Header values that are not UTF-8 get a 400 on every route, never a 500 or a traceback.

Found from outside: ``Authorization: Bearer \\xe9`` on the admin API and
``Expect: \\xff`` anywhere answered 500 with a traceback (aiohttp passes such
bytes on as lone surrogates, which fail when first encoded). HTTP allows
bytes 0x80-0xFF in a header value; no header fleet reads carries them.
Generated: any header fleet or aiohttp looks at, on any route, with a
value holding such bytes.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.admin.conftest import make_admin
from tests.integration.est.conftest import Fleet
from tests.support.raw_http import connect, read_response, tls_client_context

ROUTES = [
    ("GET", "/api/v1/devices"),
    ("POST", "/api/v1/devices/dev-1/suspend"),
    ("POST", "/.well-known/est/simpleenroll"),
    ("GET", "/.well-known/est/cacerts"),
    ("GET", "/ui/devices"),
    ("POST", "/ui/login"),
    ("GET", "/crl"),
    ("POST", "/ocsp"),
    ("GET", "/metrics"),
]
HEADERS = [
    "Authorization", "Cookie", "Origin", "Expect", "Content-Type", "Host", "X-Request-Id",
    "X-SSL-Client-Cert", "Accept", "Content-Encoding", "Content-Transfer-Encoding", "Referer",
]  # fmt: skip
# Printable ASCII around at least one byte that is not UTF-8 on its own or in sequence.
text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8).map(str.encode)
value = (
    st.tuples(text, st.binary(min_size=1, max_size=4), text)
    .map(lambda p: p[0] + bytes(b | 0x80 for b in p[1]) + p[2])
    .filter(lambda v: not _utf8(v))
)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_a_header_that_is_not_utf8_is_refused(fleet: Fleet) -> None:
    token = make_admin(fleet).tokens["admin"]
    context = tls_client_context(fleet.server.root_pem)

    @settings(
        max_examples=80, derandomize=True, database=None, deadline=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(route=st.sampled_from(ROUTES), name=st.sampled_from(HEADERS), raw=value)
    def one(route: tuple[str, str], name: str, raw: bytes) -> None:
        method, path = route
        headers = {"Host": b"localhost", "Authorization": f"Bearer {token}".encode()}
        headers[name] = raw
        request = f"{method} {path} HTTP/1.1\r\n".encode()
        request += b"".join(k.encode() + b": " + v + b"\r\n" for k, v in headers.items())
        request += b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        with connect(fleet.server.port, context) as sock:
            sock.sendall(request)
            status, _, reply = read_response(sock)
        assert 400 <= status < 500, (name, raw, status, reply[:200])

    one()
    log = fleet.server.log()
    assert "Traceback" not in log
    assert '"level": "error"' not in log
