"""Seeded fuzz targets against a live `fleet serve`: CSRs, client certificates, OCSP, admin JSON.

Each target derives its inputs from one :class:`~tests.support.hostile.Mutator`
(so a seed reproduces a run) and returns how often each answer came back:
an HTTP status, or a word for what happened before HTTP (``tls_refused``: the
handshake failed; ``unusable``: the client's own TLS stack would not load the
mutated certificate, so nothing was sent). Used by the fuzz tests with a few
hundred inputs and by ``bench/fuzz_est.py`` with many more.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import json
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from fleet.pki.ca import CertifiedKey
from fleet.pki.keys import sign_data
from tests.support import hostile
from tests.support.factory import manifest_entry
from tests.support.raw_http import read_response, request_bytes

if TYPE_CHECKING:
    from tests.integration.est.conftest import Fleet

Counts = collections.Counter[int | str]


@dataclasses.dataclass
class Target:
    """Where and with what to fuzz: one server in TLS mode, optionally one in proxy mode."""

    port: int
    root_pem: Path
    issuer: x509.Certificate
    manufacturer: CertifiedKey
    bootstrap: CertifiedKey  # a device in the manifest: CSRs reach the policy
    bootstrap_files: tuple[Path, Path]
    admin_token: str | None = None
    proxy_port: int | None = None  # a server in proxy mode that trusts 127.0.0.1
    work: Path = dataclasses.field(default_factory=lambda: Path(tempfile.gettempdir()))


class Connection:
    """A keep-alive HTTP/1.1 connection (TLS, or plain TCP) that reconnects when closed."""

    def __init__(self, port: int, context: ssl.SSLContext | None) -> None:
        self.port = port
        self.context = context
        self.sock: socket.socket | None = None

    def send(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            if self.sock is None:
                raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                context = self.context
                self.sock = (
                    context.wrap_socket(raw, server_hostname="localhost") if context else raw
                )
            try:
                self.sock.sendall(request)
                status, headers, body = read_response(self.sock)
            except (ConnectionError, OSError):
                self.close()
                if attempt:
                    raise
                continue
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, headers, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _client_context(
    target: Target, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(target.root_pem))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def _record(counts: Counts, status: int, failures: list[str], what: bytes) -> None:
    counts[status] += 1
    if status >= 500:
        failures.append(what[:300].hex())


# -- DER helpers: edit the signed part and sign again, so mutations reach past the signature --


def _split_signed(der: bytes) -> tuple[bytes, bytes]:
    """(to-be-signed TLV, signature algorithm TLV) of a SEQUENCE { tbs, algorithm, signature }."""
    contents = _contents(der)
    tbs = contents[: _tlv_length(contents)]
    rest = contents[len(tbs) :]
    return tbs, rest[: _tlv_length(rest)]


def _contents(tlv: bytes) -> bytes:
    header, length = _header(tlv)
    return tlv[header : header + length]


def _tlv_length(tlv: bytes) -> int:
    header, length = _header(tlv)
    return header + length


def _header(tlv: bytes) -> tuple[int, int]:
    first = tlv[1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    return 2 + count, int.from_bytes(tlv[2 : 2 + count], "big")


def resigned(der: bytes, key: Any, mutator: hostile.Mutator, rounds: int | None = None) -> bytes:
    """``der`` (a certificate or CSR) with its signed part mutated and signed again by ``key``."""
    tbs, algorithm = _split_signed(der)
    edited = mutator.mutate(tbs, rounds)
    body = edited + algorithm + hostile.bit_string(sign_data(key, edited))
    return b"\x30" + _der_length(len(body)) + body


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


# -- targets --------------------------------------------------------------------------------


def fuzz_csr(target: Target, mutator: hostile.Mutator, n: int, failures: list[str]) -> Counts:
    """Mutated CSRs (half re-signed, so they pass the signature check) to simpleenroll."""
    counts: Counts = collections.Counter()
    key = ec.generate_private_key(ec.SECP256R1())
    seeds = [
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    ]
    cert, cert_key = target.bootstrap_files
    connection = Connection(target.port, _client_context(target, cert, cert_key))
    try:
        for _ in range(n):
            der = mutator.rng.choice(seeds)
            body = (
                resigned(der, key, mutator) if mutator.rng.random() < 0.5 else mutator.mutate(der)
            )
            encoded = base64.encodebytes(body) if mutator.rng.random() < 0.9 else body
            request = request_bytes(
                "POST",
                "/.well-known/est/simpleenroll",
                body=encoded,
                headers={"Content-Type": "application/pkcs10"},
            )
            status, _, _ = connection.send(request)
            _record(counts, status, failures, body)
    finally:
        connection.close()
    return counts


def _mutated_certificates(
    target: Target, mutator: hostile.Mutator, n: int, rounds: int | None = None
) -> Iterator[bytes]:
    der = target.bootstrap.certificate.public_bytes(serialization.Encoding.DER)
    for _ in range(n):
        if mutator.rng.random() < 0.6:
            yield resigned(der, target.manufacturer.private_key, mutator, rounds)
        else:
            yield mutator.mutate(der, rounds)


def fuzz_client_certificate(
    target: Target, mutator: hostile.Mutator, n: int, failures: list[str]
) -> Counts:
    """Mutated bootstrap certificates presented in the TLS handshake (direct mTLS)."""
    counts: Counts = collections.Counter()
    _, key = target.bootstrap_files
    cert_path = target.work / f"fuzz-client-{mutator.seed}.pem"
    request = request_bytes(
        "POST",
        "/.well-known/est/simpleenroll",
        body=base64.encodebytes(hostile.csr_der()),
        headers={"Content-Type": "application/pkcs10"},
    )
    admin = request_bytes("GET", "/api/v1/devices")
    # One mutation each: the client's own OpenSSL refuses most certificates with more.
    for der in _mutated_certificates(target, mutator, n, rounds=1):
        cert_path.write_bytes(hostile.pem(der))
        try:
            context = _client_context(target, cert_path, key)
        except (ssl.SSLError, ValueError):
            counts["unusable"] += 1  # the client's OpenSSL refuses it: nothing to send
            continue
        connection = Connection(target.port, context)
        try:
            status, _, _ = connection.send(request if mutator.rng.random() < 0.7 else admin)
        except (ssl.SSLError, ConnectionError, OSError):
            counts["tls_refused"] += 1
            continue
        finally:
            connection.close()
        _record(counts, status, failures, der)
    return counts


def fuzz_proxy_header(
    target: Target, mutator: hostile.Mutator, n: int, failures: list[str]
) -> Counts:
    """Mutated certificates forwarded by the (trusted) proxy in X-SSL-Client-Cert."""
    assert target.proxy_port is not None
    counts: Counts = collections.Counter()
    connection = Connection(target.proxy_port, None)
    body = base64.encodebytes(hostile.csr_der())
    try:
        for der in _mutated_certificates(target, mutator, n):
            text = hostile.pem(der).decode()
            if mutator.rng.random() < 0.2:  # the PEM text itself, not only the DER inside
                text = mutator.mutate(text.encode()).decode("latin-1")
            header = urllib.parse.quote(text, safe="")
            if mutator.rng.random() < 0.7:
                request = request_bytes(
                    "POST",
                    "/.well-known/est/simpleenroll",
                    body=body,
                    headers={"Content-Type": "application/pkcs10", "X-SSL-Client-Cert": header},
                )
            else:
                request = request_bytes(
                    "GET", "/api/v1/devices", headers={"X-SSL-Client-Cert": header}
                )
            status, _, _ = connection.send(request)
            _record(counts, status, failures, der)
    finally:
        connection.close()
    return counts


def _ocsp_seeds(target: Target) -> list[bytes]:
    # The bootstrap certificate's serial under the fleet issuer: a well-formed question.
    cert = target.bootstrap.certificate
    seeds = []
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384()):  # noqa: S303
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, target.issuer, algorithm)
        seeds.append(builder.build().public_bytes(serialization.Encoding.DER))
        nonce = builder.add_extension(x509.OCSPNonce(b"n" * 16), critical=False)
        seeds.append(nonce.build().public_bytes(serialization.Encoding.DER))
    seeds.append(hostile.ocsp_request(target.issuer, cert.serial_number))
    seeds.append(hostile.ocsp_request(target.issuer, -cert.serial_number))
    return seeds


def fuzz_ocsp(
    target: Target, mutator: hostile.Mutator, n: int, failures: list[str], *, method: str
) -> Counts:
    """Mutated OCSP requests, POSTed as DER or sent as the base64 path of a GET."""
    counts: Counts = collections.Counter()
    seeds = _ocsp_seeds(target)
    connection = Connection(target.port, _client_context(target))
    try:
        for _ in range(n):
            der = mutator.mutate(mutator.rng.choice(seeds))
            if method == "POST":
                request = request_bytes(
                    "POST", "/ocsp", body=der, headers={"Content-Type": "application/ocsp-request"}
                )
            else:
                encoded = base64.b64encode(der)
                if mutator.rng.random() < 0.2:
                    encoded = mutator.mutate(encoded)
                path = urllib.parse.quote(encoded.decode("latin-1"), safe="/+=")
                request = request_bytes("GET", "/ocsp/" + path)
            status, _, _ = connection.send(request)
            _record(counts, status, failures, der)
    finally:
        connection.close()
    return counts


# -- admin JSON bodies ----------------------------------------------------------------------

_FIELDS = ("reason", "note", "batch", "model", "issued_before", "dry_run", "confirm",
           "expires_in_hours", "x", "")  # fmt: skip
_REASONS = ("key_compromise", "superseded", "unspecified", "cessation_of_operation", "nope")
_TIMES = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "2026-01-01T00:00:00Z",
          "2026-01-01T00:00:00", "2026-13-01T00:00:00Z", "0000-01-01T00:00:00Z")  # fmt: skip


def _json_value(rng: Any, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 6 else 6)
    if kind == 0:
        return rng.choice(_REASONS)
    if kind == 1:
        return rng.choice(_TIMES)
    if kind == 2:
        return rng.choice([0, 1, -1, 2**63, -(2**70), 24, 2160, 2161])
    if kind == 3:
        return rng.choice([True, False, None, 1.5, float("inf"), float("nan")])
    if kind == 4:
        return "".join(chr(rng.choice([0x41, 0x0, 0x7F, 0xE9, 0x2028, 0xD800, 0x1F600]))
                       for _ in range(rng.randrange(0, 300)))  # fmt: skip
    if kind == 5:
        return "a" * rng.choice([0, 1, 256, 257, 5000])
    if kind == 6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(_FIELDS): _json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def admin_bodies(mutator: hostile.Mutator) -> Callable[[], bytes]:
    rng = mutator.rng

    def body() -> bytes:
        document = {rng.choice(_FIELDS): _json_value(rng, 0) for _ in range(rng.randrange(6))}
        raw = json.dumps(document).encode()
        choice = rng.random()
        if choice < 0.15:
            return mutator.mutate(raw)
        if choice < 0.2:
            depth = rng.choice([31, 32, 33, 100, 5000])
            return b"[" * depth + b"]" * depth
        return raw

    return body


_ADMIN_PATHS = (
    "/api/v1/revocations/bulk",
    "/api/v1/devices/{d}/revoke",
    "/api/v1/devices/{d}/suspend",
    "/api/v1/devices/{d}/resume",
    "/api/v1/devices/{d}/token",
    "/api/v1/certificates/{s}/revoke",
    "/api/v1/devices/{d}/approve",
)


def fuzz_admin_json(
    target: Target, mutator: hostile.Mutator, n: int, failures: list[str]
) -> Counts:
    """Generated and mutated JSON bodies POSTed to the admin API's JSON endpoints."""
    assert target.admin_token is not None
    counts: Counts = collections.Counter()
    make_body = admin_bodies(mutator)
    device = target.bootstrap.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    device_id = str(device[0].value)
    serial = f"{target.bootstrap.certificate.serial_number:x}"
    connection = Connection(target.port, _client_context(target))
    try:
        for _ in range(n):
            path = mutator.rng.choice(_ADMIN_PATHS).format(d=device_id, s=serial)
            body = make_body()
            content_type = "application/json" if mutator.rng.random() < 0.9 else "text/plain"
            request = request_bytes(
                "POST",
                path,
                body=body,
                headers={
                    "Authorization": f"Bearer {target.admin_token}",
                    "Content-Type": content_type,
                },
            )
            status, headers, answer = connection.send(request)
            _record(counts, status, failures, body)
            if status >= 400 and not headers.get("content-type", "").startswith("application/json"):
                failures.append(f"{status} without JSON for {path}: {answer[:100]!r}")
    finally:
        connection.close()
    return counts


TARGETS: dict[str, Callable[[Target, hostile.Mutator, int, list[str]], Counts]] = {
    "csr": fuzz_csr,
    "client_cert_mtls": fuzz_client_certificate,
    "client_cert_proxy": fuzz_proxy_header,
    "ocsp_post": lambda t, m, n, f: fuzz_ocsp(t, m, n, f, method="POST"),
    "ocsp_get": lambda t, m, n, f: fuzz_ocsp(t, m, n, f, method="GET"),
    "admin_json": fuzz_admin_json,
}


def make_target(
    fleet: Fleet, *, proxied: Fleet | None = None, admin_token: str | None = None
) -> Target:
    """A target on ``fleet`` (TLS mode) with one device in its manifest."""
    device = fleet.new_device()
    if proxied is not None:
        # The same bootstrap certificate is known to the proxied server too.
        entry = manifest_entry(device.bootstrap)
        proxied.server.store(lambda s: s.import_manifest([entry], dt.datetime.now(dt.UTC)))
    return Target(
        port=fleet.server.port,
        root_pem=fleet.server.root_pem,
        issuer=x509.load_pem_x509_certificate(fleet.server.issuing_pem.read_bytes()),
        manufacturer=fleet.manufacturer,
        bootstrap=device.bootstrap,
        bootstrap_files=(device.cert, device.key),
        admin_token=admin_token,
        proxy_port=proxied.server.port if proxied is not None else None,
        work=fleet.work,
    )


def run(
    target: Target, names: list[str], inputs: int, seed: int
) -> tuple[dict[str, Counts], list[str]]:
    """``inputs`` inputs for each named target, seeded ``seed + index``; counts and 5xx inputs."""
    results: dict[str, Counts] = {}
    failures: list[str] = []
    for index, name in enumerate(names):
        results[name] = TARGETS[name](target, hostile.Mutator(seed + index), inputs, failures)
    return results, failures
