"""Server settings that change behaviour: policies, serverkeygen, PoP, workers, limits, outages."""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AttributeOID

from fleet.records import DeviceState
from fleet.store.postgres import upgrade_schema
from tests.integration.est.conftest import running_fleet, trust_manufacturer
from tests.support.est_client import curl
from tests.support.openssl import openssl
from tests.support.postgres import PostgresServer
from tests.support.raw_http import connect, read_response, request_bytes, tls_client_context
from tests.support.redis_server import RedisServer


def test_reject_policy_refuses_unknown_devices_and_clones(tmp_path: Path) -> None:
    env = {"FLEET_POLICY_UNKNOWN_DEVICES": "reject", "FLEET_POLICY_BOOTSTRAP_REUSE": "reject"}
    with running_fleet(tmp_path, env=env) as fleet:
        stranger = fleet.new_device(in_manifest=False)
        _, csr = fleet.csr("stranger")
        result = fleet.enroll(stranger, csr)
        assert (result.status, result.headers["x-fleet-reason"]) == (403, "unknown_device")

        device = fleet.new_device()
        assert fleet.enroll(device, csr).status == 200
        _, csr2 = fleet.csr("clone")
        clone = fleet.enroll(device, csr2)
        assert (clone.status, clone.headers["x-fleet-reason"]) == (403, "bootstrap_reused")
        # Refused, not held: the real device keeps renewing.
        state = fleet.server.store(lambda s: s.get_device(device.device_id)).state
        assert state is DeviceState.ACTIVE


def test_serverkeygen_returns_a_key_and_its_certificate(tmp_path: Path) -> None:
    with running_fleet(tmp_path, env={"FLEET_EST_SERVERKEYGEN": "true"}) as fleet:
        device = fleet.new_device()
        _, csr = fleet.csr("skg")
        result = curl(
            fleet.server.est("serverkeygen"),
            cacert=fleet.server.root_pem,
            cert=device.cert,
            key=device.key,
            content_type="application/pkcs10",
            data_file=csr,
        )
        assert result.status == 200, result.text
        assert result.headers["cache-control"] == "no-store"  # it carries a private key
        boundary = re.search(r"boundary=([\w-]+)", result.headers["content-type"]).group(1)  # type: ignore[union-attr]
        parts = [p for p in result.body.split(f"--{boundary}".encode()) if b"Content-Type" in p]
        kinds = {}
        for part in parts:
            head, _, payload = part.strip().partition(b"\r\n\r\n")
            content_type = re.search(rb"Content-Type: ([^\r\n]+)", head).group(1).decode()  # type: ignore[union-attr]
            kinds[content_type] = base64.b64decode(b"".join(payload.split()))
        key_der = kinds["application/pkcs8"]
        certs = openssl(
            "pkcs7", "-inform", "DER", "-print_certs",
            input=kinds["application/pkcs7-mime; smime-type=certs-only"],
        ).stdout  # fmt: skip
        cert_pem = tmp_path / "skg.pem"
        cert_pem.write_bytes(certs)
        key_pub = openssl("pkey", "-inform", "DER", "-pubout", input=key_der).stdout
        cert_pub = openssl("x509", "-in", cert_pem, "-noout", "-pubkey").stdout
        assert key_pub == cert_pub  # the certificate is for the generated key


def _pop_csr(key: ec.EllipticCurvePrivateKey, challenge: bytes | None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge)
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return base64.encodebytes(der)


def test_pop_linking_with_tls_unique_on_tls12(tmp_path: Path) -> None:
    with running_fleet(tmp_path, env={"FLEET_EST_REQUIRE_POP": "true"}) as fleet:
        attrs = curl(fleet.server.est("csrattrs"), cacert=fleet.server.root_pem)
        der = base64.b64decode(b"".join(attrs.body.split()))
        assert (
            "challengePassword" in openssl("asn1parse", "-inform", "DER", input=der).stdout.decode()
        )

        def enroll(version: ssl.TLSVersion, use_binding: bool, device: object) -> int:
            context = tls_client_context(
                fleet.server.root_pem,
                cert=device.cert,  # type: ignore[attr-defined]
                key=device.key,  # type: ignore[attr-defined]
                version=version,
            )
            with connect(fleet.server.port, context) as sock:
                binding = sock.get_channel_binding("tls-unique") or b""
                challenge = base64.b64encode(binding if use_binding else b"x" * 12)
                key = ec.generate_private_key(ec.SECP256R1())
                sock.sendall(
                    request_bytes(
                        "POST",
                        "/.well-known/est/simpleenroll",
                        body=_pop_csr(key, challenge),
                        headers={"Content-Type": "application/pkcs10"},
                    )
                )
                status, headers, _ = read_response(sock)
                return status if status == 200 else int(status), headers.get("x-fleet-reason")  # type: ignore[return-value]

        assert enroll(ssl.TLSVersion.TLSv1_2, True, fleet.new_device()) == (200, None)
        assert enroll(ssl.TLSVersion.TLSv1_2, False, fleet.new_device()) == (403, "pop_mismatch")
        assert enroll(ssl.TLSVersion.TLSv1_3, True, fleet.new_device()) == (
            403,
            "pop_requires_tls12",
        )


def test_workers_share_the_port_and_the_store(tmp_path: Path) -> None:
    with running_fleet(tmp_path, workers=2) as fleet:
        for n in range(12):
            device = fleet.new_device()
            _, csr = fleet.csr(f"w{n}")
            assert fleet.enroll(device, csr).status == 200
        metrics = curl(f"{fleet.server.base}/metrics", cacert=fleet.server.root_pem).text
        pattern = (
            r"fleet_est_requests_total\{"
            r'[^}]*operation="simpleenroll"[^}]*outcome="issued"[^}]*\} (\S+)'
        )
        issued = [float(m) for m in re.findall(pattern, metrics)]
        assert sum(issued) == 12  # counted across both worker processes
        children = _children(fleet.server.proc.pid)  # type: ignore[union-attr]
        assert len(children) == 2
        log = fleet.server.log()
        listening = set(re.findall(r'"pid": (\d+), "msg": "listening on', log))
        assert listening == {str(pid) for pid in children}  # both bound the port
        assert "restarting" not in log
        served = set(
            re.findall(r'"pid": (\d+), "msg": "POST /.well-known/est/simpleenroll 200', log)
        )
        assert served == listening  # the kernel spread connections over both
        fleet.server.stop()
        time.sleep(0.5)
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def test_overload_answers_503_with_retry_after(tmp_path: Path) -> None:
    env = {"FLEET_SERVER_MAX_IN_FLIGHT": "1", "FLEET_SERVER_BODY_TIMEOUT_SECONDS": "2"}
    with running_fleet(tmp_path, env=env) as fleet:
        device = fleet.new_device()
        context = tls_client_context(fleet.server.root_pem, cert=device.cert, key=device.key)
        with connect(fleet.server.port, context) as slow:
            # Headers promise a body that never comes: this request holds the only slot.
            slow.sendall(
                request_bytes(
                    "POST",
                    "/.well-known/est/simpleenroll",
                    headers={"Content-Type": "application/pkcs10", "Content-Length": "500"},
                )
            )
            time.sleep(0.3)
            busy = curl(fleet.server.est("cacerts"), cacert=fleet.server.root_pem)
            assert busy.status == 503
            assert busy.headers["retry-after"].isdigit()
            # The slow body times out with 408; the slot is free again.
            status, _, _ = read_response(slow)
            assert status == 408
        assert curl(fleet.server.est("cacerts"), cacert=fleet.server.root_pem).status == 200


def test_store_outage_is_503_and_recovers(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", durable=False)  # comes back empty
    redis.start()
    try:
        with running_fleet(
            tmp_path, env={"FLEET_STORE_URL": redis.url, "FLEET_STORE_REDIS_ALLOW_VOLATILE": "true"}
        ) as fleet:
            device = fleet.new_device()
            _, csr = fleet.csr("outage")
            port = redis.port
            redis.stop()
            down = fleet.enroll(device, csr)
            assert down.status == 503
            assert down.headers["x-fleet-reason"] == "store_unavailable"
            assert down.headers["retry-after"].isdigit()
            ready = curl(f"{fleet.server.base}/readyz", cacert=fleet.server.root_pem)
            assert ready.status == 503
            redis.start(port=port)
            # This Redis keeps nothing on disk: trust and manifest must be loaded again.
            trust_manufacturer(fleet.server, fleet.manufacturer, "Acme")
            again = fleet.new_device(device_id=device.device_id)
            assert fleet.enroll(again, csr).status == 200
            assert curl(f"{fleet.server.base}/readyz", cacert=fleet.server.root_pem).status == 200
    finally:
        redis.stop()


def test_health_and_metrics_endpoints(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as fleet:
        assert curl(f"{fleet.server.base}/healthz", cacert=fleet.server.root_pem).status == 200
        assert curl(f"{fleet.server.base}/readyz", cacert=fleet.server.root_pem).status == 200
        device = fleet.new_device()
        _, csr = fleet.csr("m")
        fleet.enroll(device, csr)
        fleet.enroll(None, csr)
        text = curl(f"{fleet.server.base}/metrics", cacert=fleet.server.root_pem).text
        assert 'operation="simpleenroll",outcome="issued",reason="issued"' in text
        assert 'reason="credentials_required"' in text
        assert "fleet_est_request_seconds_bucket" in text
        # Every request is logged as one JSON line with its request id.
        log = fleet.server.log()
        assert re.search(r'"request_id": "[0-9a-f]{32}".*"status": 401', log)


def test_slow_headers_and_handshakes_are_cut_off(tmp_path: Path) -> None:
    env = {
        "FLEET_SERVER_HEADER_TIMEOUT_SECONDS": "1",
        "FLEET_SERVER_HANDSHAKE_TIMEOUT_SECONDS": "1",
    }
    with running_fleet(tmp_path, env=env) as fleet:
        context = tls_client_context(fleet.server.root_pem)
        with connect(fleet.server.port, context) as sock:
            sock.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n")  # never ends
            started = time.monotonic()
            assert sock.recv(1024) == b""  # the server closed the connection
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", fleet.server.port), timeout=10) as raw:
            started = time.monotonic()
            assert raw.recv(1024) == b""  # no ClientHello sent: closed after the timeout
            assert time.monotonic() - started < 5
        assert curl(fleet.server.est("cacerts"), cacert=fleet.server.root_pem).status == 200


def test_postgresql_store_outage_is_503_then_served_without_a_restart(tmp_path: Path) -> None:
    """`fleet serve` on PostgreSQL: enrolls; the database crashes: 503 + Retry-After, not
    500; it comes back: the same server process enrolls again (the pool reconnects)."""
    pg = PostgresServer()
    try:
        pg.start()
        upgrade_schema(pg.url)
        with running_fleet(tmp_path, env={"FLEET_STORE_URL": pg.url}) as fleet:
            first = fleet.new_device()
            _, csr = fleet.csr("pg-first")
            assert fleet.enroll(first, csr).status == 200
            second = fleet.new_device()
            _, csr2 = fleet.csr("pg-second")
            pg.stop(mode="immediate")
            down = fleet.enroll(second, csr2)
            assert down.status == 503
            assert down.headers["x-fleet-reason"] == "store_unavailable"
            assert down.headers["retry-after"].isdigit()
            pg.start()  # same port and data: the first enrollment was durable
            deadline = time.monotonic() + 30
            while (answer := fleet.enroll(second, csr2)).status == 503:
                assert time.monotonic() < deadline, "fleet never reconnected to PostgreSQL"
                time.sleep(0.2)
            assert answer.status == 200
            assert fleet.server.store(lambda s: s.get_device(first.device_id)).state is (
                DeviceState.ACTIVE
            )
    finally:
        pg.stop()
        pg.remove()
