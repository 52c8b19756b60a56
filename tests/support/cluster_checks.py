"""What the multi-host tests observe of a cluster (cluster.py), from the device host.

Shared by every cluster, whatever its store engine: an MQTT session through
the balancer, a node's /crl and /ocsp answers, revocations made on one node,
and the scenario "revoke on node A: kicked from whichever broker holds it,
node B answers revoked within REVOKED_WITHIN".
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from fleet.authority.admins import create_admin_token
from fleet.records import AdminRole, RevocationReason
from fleet.store.protocol import Store
from tests.support.cluster import MQTT_PORT, Cluster, Enrolled, enroll, fetch
from tests.support.fleet_server import run_store
from tests.support.mosquitto_broker import Session

REVOKED_WITHIN = 1.0  # seconds from the acknowledged revocation to node B's answers


def wait_until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``within``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"timed out after {within} s: {what}"
        time.sleep(0.01)
    return time.monotonic() - started


def mqtt(cluster: Cluster, device: Enrolled, address: str | None = None) -> Session:
    """An MQTT session of ``device`` through the balancer (or straight to ``address``),
    from the device host."""

    def connect() -> Session:
        session = Session(
            MQTT_PORT,
            ca=cluster.root_pem,
            cert=device.cert,
            key=device.key,
            client_id=device.device_id,
            host=address or cluster.lb.address,
        )
        assert session.open(10), f"{device.device_id} was not admitted at {session.host}"
        return session

    return cluster.device.call(connect)


def admitted(cluster: Cluster, device: Enrolled) -> bool:
    """Whether the balancer's broker admits ``device`` now (a fresh session, closed)."""
    retry = cluster.device.call(
        lambda: Session(
            MQTT_PORT,
            ca=cluster.root_pem,
            cert=device.cert,
            key=device.key,
            client_id=device.device_id,
            host=cluster.lb.address,
        )
    )
    try:
        return cluster.device.call(lambda: retry.open(5))
    finally:
        retry.close()


def crl(cluster: Cluster, node: str) -> x509.CertificateRevocationList:
    status, body = fetch(cluster.device, f"{cluster.nodes[node].base}/crl", cluster.root_pem)
    assert status == 200, (node, status, body[:200])
    return x509.load_der_x509_crl(body)


def crl_number(revocations: x509.CertificateRevocationList) -> int:
    return revocations.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def ocsp_status(cluster: Cluster, node: str, device: Enrolled) -> ocsp.OCSPCertStatus:
    cert = x509.load_pem_x509_certificate(device.cert.read_bytes())
    issuer = x509.load_pem_x509_certificate(cluster.issuing_pem.read_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()  # noqa: S303 - RFC 6960's usual CertID hash
    status, body = fetch(
        cluster.device,
        f"{cluster.nodes[node].base}/ocsp",
        cluster.root_pem,
        data=request.public_bytes(serialization.Encoding.DER),
        content_type="application/ocsp-request",
    )
    assert status == 200, (node, status)
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    return response.certificate_status


def revoke_in_store(cluster: Cluster, device_id: str, node: str = "fleet-a") -> None:
    """Revoke ``device_id`` straight in the store, from ``node``'s host with its config."""
    fleet_node = cluster.nodes[node]

    async def revoke(store: Store) -> object:
        return await store.revoke_device(
            device_id, RevocationReason.SUPERSEDED, dt.datetime.now(dt.UTC)
        )

    fleet_node.host.call(lambda: run_store(fleet_node.config, revoke, fleet_node.env))


def admin_token(cluster: Cluster) -> str:
    """A new operator bearer token for the admin API of every node (one store)."""
    node = cluster.nodes["fleet-a"]
    now = dt.datetime.now(dt.UTC)

    async def create(store: Store) -> str:
        return await create_admin_token(
            store, "multihost-bot", AdminRole.OPERATOR, actor="test", now=now
        )

    return node.host.call(lambda: run_store(node.config, create, node.env))


def api_revoke(cluster: Cluster, node: str, token: str, device_id: str) -> int:
    """POST the admin API's revoke to ``node`` (not the balancer); the HTTP status
    (0: no answer). 200 is the node's acknowledgement."""
    status, _ = fetch(
        cluster.device,
        f"{cluster.nodes[node].base}/api/v1/devices/{device_id}/revoke",
        cluster.root_pem,
        data=json.dumps({"reason": "keyCompromise"}).encode(),
        content_type="application/json",
        token=token,
    )
    return status


def api_device_state(cluster: Cluster, node: str, token: str, device_id: str) -> str:
    status, body = fetch(
        cluster.device,
        f"{cluster.nodes[node].base}/api/v1/devices/{device_id}",
        cluster.root_pem,
        token=token,
    )
    assert status == 200, (node, device_id, status, body[:200])
    return str(json.loads(body)["state"])


def check_revoke_on_a_kicks_and_b_answers(cluster: Cluster, names: list[str]) -> None:
    """Enroll ``names`` through the balancer, connect them (leastconn puts two on the
    two broker nodes), revoke each with `fleet device revoke` on node A: the broker
    holding it kicks it, node B's /crl and /ocsp say revoked within REVOKED_WITHIN,
    and no broker admits it again."""
    boots = cluster.add_devices(names)
    devices = [enroll(cluster, name, boots[name]) for name in names]
    sessions = [mqtt(cluster, device) for device in devices]
    try:
        holders = {
            d.device_id: [n for n, b in cluster.brokers.items() if b.holds(d.device_id)]
            for d in devices
        }
        assert sorted(h for held in holders.values() for h in held) == sorted(cluster.brokers), (
            holders
        )
        for device in devices:
            assert ocsp_status(cluster, "fleet-b", device) is ocsp.OCSPCertStatus.GOOD

        for device, session in zip(devices, sessions, strict=True):
            asked = time.monotonic()
            cluster.nodes["fleet-a"].fleet(
                "device", "revoke", device.device_id, "--reason", "keyCompromise"
            )
            crl_took = wait_until(
                lambda d=device: (
                    crl(cluster, "fleet-b").get_revoked_certificate_by_serial_number(d.serial)
                    is not None
                ),
                REVOKED_WITHIN,
                f"node B's CRL to list {device.device_id}",
            )
            ocsp_took = wait_until(
                lambda d=device: ocsp_status(cluster, "fleet-b", d) is ocsp.OCSPCertStatus.REVOKED,
                REVOKED_WITHIN,
                f"node B's OCSP to answer revoked for {device.device_id}",
            )
            assert session.disconnected.wait(5), (
                f"{device.device_id} (on {holders[device.device_id]}) was not kicked"
            )
            kicked = session.disconnected_at - asked
            print(
                f"{device.device_id} on {holders[device.device_id][0]}: after the revocation "
                f"was acknowledged, CRL of B {crl_took:.3f} s, OCSP of B +{ocsp_took:.3f} s; "
                f"kicked {kicked:.3f} s after `fleet device revoke` started"
            )
        # And they stay out, whichever node the balancer picks now.
        for device in devices:
            assert not admitted(cluster, device), f"{device.device_id} admitted again"
    finally:
        for session in sessions:
            session.close()
