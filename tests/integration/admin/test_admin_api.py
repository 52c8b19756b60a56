"""The admin API against a real server, on SQLite and on Redis."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from typing import Any

import pytest

from fleet.admin.routes import openapi_document
from tests.integration.admin.conftest import Admin
from tests.support.est_client import curl

_n = itertools.count(1)

ROLE_RANK = {"viewer": 0, "operator": 1, "admin": 2}


def enrolled(admin: Admin, **kwargs: Any) -> tuple[Any, Any, Any]:
    device = admin.fleet.new_device(**kwargs)
    key, csr = admin.fleet.csr("a")
    cert = admin.fleet.issued(admin.fleet.enroll(device, csr), "a")
    return device, cert, key


def _example_path(path: str) -> str:
    return (
        path.replace("{device_id}", f"nobody-{next(_n)}")
        .replace("{serial}", "abc123")
        .replace("{sha256}", "00" * 32)
    )


_BODIES = {
    "/api/v1/devices/{device_id}/revoke": {"reason": "superseded"},
    "/api/v1/certificates/{serial}/revoke": {"reason": "superseded"},
    "/api/v1/revocations/bulk": {"batch": "no-such-batch", "reason": "superseded", "dry_run": True},
}


def _operations() -> list[tuple[str, str, str]]:
    ops = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            ops.append((method.upper(), path, operation["x-fleet-role"]))
    return ops


@pytest.mark.parametrize(("method", "path", "needed"), _operations())
def test_role_matrix(admin: Admin, method: str, path: str, needed: str) -> None:
    url = _example_path(path)
    query = "?days=1" if path.endswith("/expiring") else ""
    body = _BODIES.get(path)
    kwargs: dict[str, Any] = {"body": body}
    if path.endswith("/manifest"):
        kwargs = {"raw": b"device_id,bootstrap_sha256,model,batch\n", "content_type": "text/csv"}
    if path.endswith(("/manufacturers", "/intermediates")) and method == "POST":
        kwargs = {"raw": b"not pem", "content_type": "application/x-pem-file"}

    anonymous = admin.call(method, url + query, role=None, **kwargs)
    if needed == "public":
        assert anonymous.status == 200, anonymous.body
        return
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    forged = admin.call(method, url + query, token="not-a-token", **kwargs)
    assert forged.status == 401
    for role, rank in ROLE_RANK.items():
        reply = admin.call(method, url + query, role=role, **kwargs)
        if rank < ROLE_RANK[needed]:
            assert reply.status == 403, (role, reply.body)
            assert reply.body["error"] == "role_insufficient"
        else:
            assert reply.status not in (401, 403, 500), (role, reply.status, reply.body)


def test_denied_attempts_are_audited(admin: Admin) -> None:
    reply = admin.call(
        "POST", "/api/v1/revocations/bulk", role="viewer", body=_BODIES["/api/v1/revocations/bulk"]
    )
    assert reply.status == 403
    audit = admin.call("GET", "/api/v1/audit?limit=10000").body["items"]
    denied = [r for r in audit if r["action"] == "denied" and r["actor"] == "admin:viewer-bot"]
    assert denied
    assert denied[-1]["detail"]["needed"] == "admin"


def test_list_filters_and_paging(admin: Admin) -> None:
    batch = f"b-{next(_n)}"
    ids = sorted(admin.fleet.new_device().device_id for _ in range(3))
    for device_id in ids:  # put them in their own batch
        admin.fleet.server.store(lambda s, d=device_id: _rebatch(s, d, batch))
    first = admin.call("GET", f"/api/v1/devices?batch={batch}&limit=2", role="viewer").body
    assert [d["device_id"] for d in first["items"]] == ids[:2]
    second = admin.call(
        "GET", f"/api/v1/devices?batch={batch}&limit=2&after={first['next']}", role="viewer"
    ).body
    assert [d["device_id"] for d in second["items"]] == ids[2:]
    assert second["next"] is None
    bad = admin.call("GET", "/api/v1/devices?state=happy", role="viewer")
    assert (bad.status, bad.body["error"]) == (400, "request_invalid")
    assert "state" in bad.body["message"]


async def _rebatch(store: Any, device_id: str, batch: str) -> None:
    from fleet.records import ManifestEntry

    device = await store.get_device(device_id)
    await store.import_manifest(
        [ManifestEntry(device_id, device.bootstrap_sha256, "m1", batch)], dt.datetime.now(dt.UTC)
    )


def test_approve_suspend_resume_revoke_and_why(admin: Admin) -> None:
    fleet = admin.fleet
    held = fleet.new_device(in_manifest=False)
    _, csr = fleet.csr("h")
    assert fleet.enroll(held, csr).status == 202
    approved = admin.call("POST", f"/api/v1/devices/{held.device_id}/approve", role="operator")
    assert (approved.status, approved.body["state"]) == (200, "registered")
    again = admin.call("POST", f"/api/v1/devices/{held.device_id}/approve", role="operator")
    assert (again.status, again.body["error"]) == (409, "device_not_pending")
    key, csr2 = fleet.csr("h2")
    cert = fleet.issued(fleet.enroll(held, csr2), "h2")

    path = f"/api/v1/devices/{held.device_id}"
    assert (
        admin.call("POST", f"{path}/suspend", role="operator", body={"note": "audit"}).body["state"]
        == "suspended"
    )
    _, csr3 = fleet.csr("h3")
    assert fleet.reenroll(cert, key, csr3).headers["x-fleet-reason"] == "device_suspended"
    assert admin.call("POST", f"{path}/resume", role="operator").body["state"] == "active"
    assert fleet.reenroll(cert, key, csr3).status == 200

    bad = admin.call("POST", f"{path}/revoke", role="operator", body={"reason": "because"})
    assert (bad.status, bad.body["error"]) == (400, "reason_invalid")
    revoked = admin.call(
        "POST", f"{path}/revoke", role="operator", body={"reason": "keyCompromise"}
    )
    assert revoked.status == 200
    assert (revoked.body["device"]["state"], revoked.body["changed"]) == ("revoked", True)
    repeat = admin.call("POST", f"{path}/revoke", role="operator", body={"reason": "keyCompromise"})
    assert (repeat.status, repeat.body["changed"]) == (200, False)  # idempotent
    assert fleet.reenroll(cert, key, csr3).headers["x-fleet-reason"] == "certificate_revoked"

    certs = admin.call("GET", f"{path}/certificates", role="viewer").body["items"]
    assert certs
    assert all(c["status"] == "revoked" for c in certs)
    trace = admin.call("GET", f"{path}/why", role="viewer").body["trace"]
    steps = [(r["action"], r["outcome"], r["reason"], r["actor"]) for r in trace]
    assert steps[0][:3] == ("enroll", "held", "unknown_device_held")
    assert ("approve", "done", "admin_approved", "admin:operator-bot") in steps
    assert ("enroll", "allowed", "bootstrap_pinned", f"device:{held.device_id}") in steps
    assert ("suspend", "done", "admin_suspend", "admin:operator-bot") in steps
    assert ("revoke", "done", "keyCompromise", "admin:operator-bot") in steps
    assert admin.call("GET", "/api/v1/devices/nobody-x/why", role="viewer").status == 404


def test_bulk_revoke_dry_run_cap_and_confirm(admin: Admin) -> None:
    batch = f"lot-{next(_n)}"
    devices = [enrolled(admin)[0] for _ in range(4)]
    for device in devices:
        admin.fleet.server.store(lambda s, d=device.device_id: _rebatch(s, d, batch))
    body = {"batch": batch, "reason": "keyCompromise"}
    dry = admin.call("POST", "/api/v1/revocations/bulk", body={**body, "dry_run": True})
    assert dry.body == {"dry_run": True, "devices": 4, "certificates": 4, "revoked": []}
    over = admin.call("POST", "/api/v1/revocations/bulk", body=body)  # threshold is 3
    assert (over.status, over.body["error"]) == (428, "confirmation_required")
    state = admin.call("GET", f"/api/v1/devices/{devices[0].device_id}", role="viewer")
    assert state.body["state"] == "active"  # nothing changed
    done = admin.call("POST", "/api/v1/revocations/bulk", body={**body, "confirm": True})
    assert done.status == 200
    assert sorted(done.body["revoked"]) == sorted(d.device_id for d in devices)
    empty = admin.call("POST", "/api/v1/revocations/bulk", body={"reason": "keyCompromise"})
    assert (empty.status, empty.body["error"]) == (400, "selection_empty")
    feed = admin.call("GET", "/api/v1/revocations?after_seq=0&limit=10000", role="viewer").body
    revoked_ids = {e["device_id"] for e in feed["items"]}
    assert {d.device_id for d in devices} <= revoked_ids


def test_single_certificate_revocation_and_expiring(admin: Admin) -> None:
    device, _, _ = enrolled(admin)
    certs = admin.call("GET", f"/api/v1/devices/{device.device_id}/certificates", role="viewer")
    serial = certs.body["items"][0]["serial"]
    expiring = admin.call("GET", "/api/v1/certificates/expiring?days=31", role="viewer").body
    assert serial in {c["serial"] for c in expiring["items"]}
    assert admin.call("GET", "/api/v1/certificates/expiring?days=1", role="viewer").status == 200
    assert admin.call("GET", "/api/v1/certificates/expiring", role="viewer").status == 400
    reply = admin.call(
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        role="operator",
        body={"reason": "superseded"},
    )
    assert (reply.status, reply.body["certificate"]["status"]) == (200, "revoked")
    device_state = admin.call("GET", f"/api/v1/devices/{device.device_id}", role="viewer").body
    assert device_state["state"] == "active"  # one certificate, not the device
    unknown = admin.call(
        "POST", "/api/v1/certificates/abcdef/revoke", role="operator", body={"reason": "superseded"}
    )
    assert unknown.status == 404


def test_token_manifest_and_trust_over_the_api(admin: Admin) -> None:
    token = admin.call(
        "POST",
        f"/api/v1/devices/tok-{next(_n)}/token",
        role="operator",
        body={"expires_in_hours": 2},
    )
    assert token.status == 200
    assert len(token.body["token"]) > 20
    assert token.headers["cache-control"] == "no-store"
    bad_csv = admin.call(
        "POST",
        "/api/v1/manifest",
        raw=b"device_id,bootstrap_sha256,model,batch\nbad/id,xyz,,\n",
        content_type="text/csv",
    )
    assert (bad_csv.status, bad_csv.body["error"]) == (400, "manifest_invalid")
    assert "line 2" in bad_csv.body["message"]
    pem = admin.fleet.manufacturer.certificate.public_bytes(
        __import__(
            "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
        ).Encoding.PEM
    )
    trusted = admin.call(
        "POST", "/api/v1/manufacturers", raw=pem, content_type="application/x-pem-file"
    )
    assert trusted.status == 200
    assert trusted.body["items"][0]["added"] is False  # already trusted
    # ...and answered as it is stored, whatever name and time this request would give it.
    again = admin.call(
        "POST", "/api/v1/manufacturers?name=Renamed", raw=pem,
        content_type="application/x-pem-file",
    )  # fmt: skip
    listed = admin.call("GET", "/api/v1/manufacturers", role="viewer").body["items"]
    stored = next(ca for ca in listed if ca["sha256"] == again.body["items"][0]["sha256"])
    assert {**again.body["items"][0], "added": None} == {**stored, "added": None}
    # Every CA of the fleet's own domains is refused, the admin CA included (an admin's
    # certificate would otherwise enroll as a device).
    for own in ("ca/root.pem", "ca/issuing.pem", "ca/admin.pem"):
        pem_of_own = (admin.fleet.server.data_dir / own).read_bytes()
        refused = admin.call(
            "POST", "/api/v1/manufacturers", raw=pem_of_own, content_type="application/x-pem-file"
        )
        assert (refused.status, refused.body["error"]) == (403, "trust_domains_mixed"), own


def test_admin_client_certificate_over_mtls(admin: Admin) -> None:
    fleet = admin.fleet
    by_cert = admin.call(
        "GET", "/api/v1/devices?limit=1", role=None, client_cert=(admin.cert, admin.key)
    )
    assert by_cert.status == 200
    # The same request with curl as a third-party client.
    result = curl(
        f"{fleet.server.base}/api/v1/devices?limit=1",
        cacert=fleet.server.root_pem, cert=admin.cert, key=admin.key,
    )  # fmt: skip
    assert result.status == 200
    # A device certificate is not an admin certificate.
    _, cert, key = enrolled(admin)
    as_device = admin.call("GET", "/api/v1/devices", role=None, client_cert=(cert, key))
    assert (as_device.status, as_device.body["error"]) == (403, "unknown_issuer")
    # Operator role: bulk revocation is refused.
    bulk = admin.call(
        "POST",
        "/api/v1/revocations/bulk",
        role=None,
        client_cert=(admin.cert, admin.key),
        body=_BODIES["/api/v1/revocations/bulk"],
    )
    assert bulk.status == 403


def test_disabled_credential_is_refused(admin: Admin) -> None:
    from fleet.authority.admins import create_admin_token
    from fleet.records import AdminRole
    from fleet.tokens import token_sha256

    now = dt.datetime.now(dt.UTC)
    token = admin.fleet.server.store(
        lambda s: create_admin_token(s, "leaver", AdminRole.ADMIN, actor="test", now=now)
    )
    assert admin.call("GET", "/api/v1/devices", token=token).status == 200
    admin.fleet.server.store(lambda s: s.disable_admin_credential(token_sha256(token)))
    reply = admin.call("GET", "/api/v1/devices", token=token)
    assert (reply.status, reply.body["error"]) == (403, "admin_disabled")


def test_audit_query_and_verify(admin: Admin) -> None:
    verify = admin.call("GET", "/api/v1/audit/verify").body
    assert verify["intact"] is True
    assert verify["records"] > 0
    page = admin.call("GET", "/api/v1/audit?after_seq=0&limit=5", role="viewer").body["items"]
    assert [r["seq"] for r in page] == sorted(r["seq"] for r in page)
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["sha256"]) for r in page)


def test_the_api_description_is_served_to_anyone(admin: Admin) -> None:
    # The README points people at it before they hold a credential; it holds no secrets.
    served = admin.call("GET", "/api/v1/openapi.json", role=None)
    assert served.status == 200
    assert served.body == openapi_document()
    assert served.body["paths"]["/api/v1/openapi.json"]["get"]["security"] == []


def test_openapi_describes_exactly_the_routes(admin: Admin) -> None:
    served = admin.call("GET", "/api/v1/openapi.json", role="viewer").body
    documented = {(m.upper(), p) for p, item in served["paths"].items() for m in item}
    from aiohttp import web

    from fleet.admin.routes import AdminApi

    api = AdminApi.__new__(AdminApi)
    routes = {(r.method, r.path) for r in api.routes() if isinstance(r, web.RouteDef)}
    assert documented == routes


def test_replacement_request_through_the_api(admin: Admin) -> None:
    fleet = admin.fleet
    device = fleet.new_device()
    key, csr = fleet.csr("r1")
    cert = fleet.issued(fleet.enroll(device, csr), "r1")
    _, csr2 = fleet.csr("r2")
    assert fleet.enroll(device, csr2).status == 202
    path = f"/api/v1/devices/{device.device_id}"
    shown = admin.call("GET", path, role="viewer").body
    assert shown["state"] == "active"
    request = shown["replacement_request"]
    assert (request["status"], request["attempts"]) == ("pending", 1)
    assert admin.call("GET", f"{path}/why", role="viewer").body["device"]["replacement_request"]
    # Renewal goes on meanwhile.
    key3, csr3 = fleet.csr("r3")
    renewed = fleet.issued(fleet.reenroll(cert, key, csr3), "r3")

    undecided = admin.call("POST", f"{path}/approve", role="operator")
    assert (undecided.status, undecided.body["error"]) == (409, "replacement_choice_required")
    assert undecided.headers["x-fleet-reason"] == "replacement_choice_required"
    bad = admin.call("POST", f"{path}/approve", role="operator", body={"replace": "yes"})
    assert bad.status == 400
    approved = admin.call("POST", f"{path}/approve", role="operator", body={"replace": True})
    assert approved.status == 200, approved.body
    assert approved.body["replacement_request"]["status"] == "approved"
    assert approved.body["replacement_request"]["decided_by"] == "admin:operator-bot"
    certs = admin.call("GET", f"{path}/certificates", role="viewer").body["items"]
    assert {(c["status"], c["revocation_reason"]) for c in certs} == {("revoked", "superseded")}
    assert fleet.reenroll(renewed, key3, csr3).headers["x-fleet-reason"] == "certificate_revoked"
    fleet.issued(fleet.enroll(device, csr2), "r2")
    assert admin.call("GET", path, role="viewer").body["replacement_request"] is None
    again = admin.call("POST", f"{path}/approve", role="operator", body={"replace": True})
    assert (again.status, again.body["error"]) == (409, "no_replacement_request")

    clone = fleet.new_device()
    fleet.issued(fleet.enroll(clone, csr), "c1")
    assert fleet.enroll(clone, csr3).status == 202
    clone_path = f"/api/v1/devices/{clone.device_id}"
    rejected = admin.call("POST", f"{clone_path}/reject", role="operator", body={"revoke": True})
    assert rejected.status == 200, rejected.body
    assert (rejected.body["state"], rejected.body["replacement_request"]["status"]) == (
        "active",
        "rejected",
    )
    (revoked,) = admin.call("GET", f"{clone_path}/certificates", role="viewer").body["items"]
    assert revoked["revocation_reason"] == "keyCompromise"
    refused = fleet.enroll(clone, csr3)
    assert (refused.status, refused.headers["x-fleet-reason"]) == (403, "replacement_rejected")


def test_intermediate_pool_add_list_remove(admin: Admin) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from fleet.pki.ca import create_issuing_ca

    now = dt.datetime.now(dt.UTC)
    line = create_issuing_ca(admin.fleet.manufacturer, "Acme Line 3 CA", now=now)
    pem = line.certificate.public_bytes(Encoding.PEM)
    added = admin.call(
        "POST", "/api/v1/intermediates?name=Line3", raw=pem, content_type="application/x-pem-file"
    )
    assert added.status == 200, added.body
    (item,) = added.body["items"]
    assert (item["name"], item["added"]) == ("Line3", True)
    listed = admin.call("GET", "/api/v1/intermediates")
    assert item["sha256"] in {i["sha256"] for i in listed.body["items"]}
    # The pool is not the trusted list.
    roots = admin.call("GET", "/api/v1/manufacturers")
    assert item["sha256"] not in {i["sha256"] for i in roots.body["items"]}
    removed = admin.call("DELETE", f"/api/v1/intermediates/{item['sha256']}")
    assert removed.body == {"sha256": item["sha256"], "removed": True}
    gone = admin.call("DELETE", f"/api/v1/intermediates/{item['sha256']}")
    assert gone.status == 404
    # A CA of the fleet's own domains is refused here too.
    issuing = (admin.fleet.server.data_dir / "ca/issuing.pem").read_bytes()
    refused = admin.call(
        "POST", "/api/v1/intermediates", raw=issuing, content_type="application/x-pem-file"
    )
    assert (refused.status, refused.body["error"]) == (403, "trust_domains_mixed")


def test_an_approval_is_for_the_key_the_admin_saw_not_a_later_replay(admin: Admin) -> None:
    # The factory-reset device replays with K1; before the admin answers, whoever holds
    # the leaked bootstrap certificate replays with K2. Approving must not hand K2 the
    # device: without a key it is refused (two keys were seen), with K1 only K1 gets in.
    fleet = admin.fleet
    device = fleet.new_device()
    fleet.issued(fleet.enroll(device, fleet.csr("k0")[1]), "k0")
    _, csr1 = fleet.csr("k1")
    assert fleet.enroll(device, csr1).status == 202
    path = f"/api/v1/devices/{device.device_id}"
    seen = admin.call("GET", path, role="viewer").body["replacement_request"]["key_sha256"]
    _, csr2 = fleet.csr("k2")
    assert fleet.enroll(device, csr2).status == 202  # the attacker's replay

    blind = admin.call("POST", f"{path}/approve", role="operator", body={"replace": True})
    assert (blind.status, blind.body["error"]) == (409, "replacement_key_required")
    wrong = admin.call(
        "POST", f"{path}/approve", role="operator", body={"replace": True, "key_sha256": seen}
    )
    # The request now names K2 (the newest key): approving K1 by its fingerprint is refused
    # as "not the key the request names", so the admin must look again and decide.
    assert (wrong.status, wrong.body["error"]) == (409, "replacement_key_required")
    assert admin.call("GET", path, role="viewer").body["replacement_request"]["status"] == (
        "pending"
    )
    rejected = admin.call("POST", f"{path}/reject", role="operator", body={"revoke": True})
    assert rejected.status == 200
    assert fleet.enroll(device, csr2).headers["x-fleet-reason"] == "replacement_rejected"
