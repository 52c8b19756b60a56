"""What the EST server refuses, and how: a status, a reason code, and no change."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fleet.authority.refusals import PER_KEY
from fleet.records import DeviceState, RevocationReason
from tests.integration.est.conftest import Fleet
from tests.support.est_client import curl
from tests.support.factory import make_manufacturer


def refused(result: object, status: int, reason: str) -> None:
    assert result.status == status, (result.status, result.text)  # type: ignore[attr-defined]
    assert result.headers["x-fleet-reason"] == reason, result.text  # type: ignore[attr-defined]
    assert result.headers["content-type"].startswith("text/plain")  # type: ignore[attr-defined]
    assert reason in result.text  # type: ignore[attr-defined]


def audit_reasons(fleet: Fleet, device_id: str) -> list[str]:
    records = fleet.server.store(lambda s: s.audit_records(device_id=device_id))
    return [r.event.reason for r in records]


def test_bootstrap_from_an_untrusted_manufacturer(fleet: Fleet) -> None:
    rogue = make_manufacturer("Rogue", now=dt.datetime.now(dt.UTC))
    device = fleet.new_device(manufacturer=rogue)
    _, csr = fleet.csr("rogue")
    refused(fleet.enroll(device, csr), 403, "unknown_issuer")
    assert (
        fleet.server.store(lambda s: s.get_device(device.device_id)).state is DeviceState.REGISTERED
    )


def test_bootstrap_that_is_not_the_pinned_one(fleet: Fleet) -> None:
    device = fleet.new_device()
    other = fleet.new_device(in_manifest=False, device_id=device.device_id)
    _, csr = fleet.csr("unpinned")
    refused(fleet.enroll(other, csr), 403, "bootstrap_pin_mismatch")
    assert "bootstrap_pin_mismatch" in audit_reasons(fleet, device.device_id)


@pytest.mark.parametrize("bad_id", ["a/b", "dev+1", "dev#1", "admin", "dév"])
def test_forbidden_device_ids_in_the_bootstrap_certificate(fleet: Fleet, bad_id: str) -> None:
    # serialNumber is a PrintableString, which cannot even hold some of these.
    device = fleet.new_device(in_manifest=False, device_id=bad_id, serial_number_attr=False)
    _, csr = fleet.csr("badid")
    refused(fleet.enroll(device, csr), 403, "device_id_invalid")


def test_expired_bootstrap(fleet: Fleet) -> None:
    now = dt.datetime.now(dt.UTC)
    device = fleet.new_device(
        not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1)
    )
    _, csr = fleet.csr("expired")
    refused(fleet.enroll(device, csr), 403, "certificate_expired")


def _enrolled(fleet: Fleet, name: str) -> tuple[object, Path, Path]:
    device = fleet.new_device()
    key, csr = fleet.csr(name)
    cert = fleet.issued(fleet.enroll(device, csr), name)
    return device, cert, key


def test_revoked_device_is_refused_on_every_path(fleet: Fleet) -> None:
    device, cert, key = _enrolled(fleet, "rev")
    fleet.server.store(
        lambda s: s.revoke_device(
            device.device_id,  # type: ignore[attr-defined]
            RevocationReason.KEY_COMPROMISE,
            dt.datetime.now(dt.UTC),
        )
    )
    _, csr = fleet.csr("rev2")
    refused(fleet.reenroll(cert, key, csr), 403, "certificate_revoked")
    refused(fleet.enroll(device, csr), 403, "device_revoked")  # type: ignore[arg-type]


def test_suspended_device_is_refused_until_resumed(fleet: Fleet) -> None:
    device, cert, key = _enrolled(fleet, "susp")
    device_id = device.device_id  # type: ignore[attr-defined]

    def move(to: DeviceState, frm: DeviceState) -> None:
        fleet.server.store(
            lambda s: s.set_device_state(device_id, to, expected={frm}, now=dt.datetime.now(dt.UTC))
        )

    move(DeviceState.SUSPENDED, DeviceState.ACTIVE)
    _, csr = fleet.csr("susp2")
    refused(fleet.reenroll(cert, key, csr), 403, "device_suspended")
    refused(fleet.enroll(device, csr), 403, "device_suspended")  # type: ignore[arg-type]
    move(DeviceState.ACTIVE, DeviceState.SUSPENDED)
    assert fleet.reenroll(cert, key, csr).status == 200


def test_reenroll_without_a_certificate(fleet: Fleet) -> None:
    _, csr = fleet.csr("nocert")
    result = curl(
        fleet.server.est("simplereenroll"),
        cacert=fleet.server.root_pem,
        content_type="application/pkcs10",
        data_file=csr,
    )
    refused(result, 401, "credentials_required")


def test_oversized_body(fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.new_device()
    big = tmp_path / "big.b64"
    big.write_bytes(b"A" * (65 * 1024))
    result = fleet.enroll(device, big)
    assert result.status == 413
    assert (
        fleet.server.store(lambda s: s.get_device(device.device_id)).state is DeviceState.REGISTERED
    )


def test_garbage_base64(fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.new_device()
    garbage = tmp_path / "garbage.b64"
    garbage.write_bytes(b"!!!! not base64 @@@@")
    refused(fleet.enroll(device, garbage), 400, "encoding_invalid")
    valid_base64_not_a_csr = tmp_path / "notcsr.b64"
    valid_base64_not_a_csr.write_bytes(b"aGVsbG8gd29ybGQ=\r\n")
    refused(fleet.enroll(device, valid_base64_not_a_csr), 400, "csr_invalid")


def test_wrong_content_type(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("ct")
    result = curl(
        fleet.server.est("simpleenroll"),
        cacert=fleet.server.root_pem,
        cert=device.cert,
        key=device.key,
        content_type="application/json",
        data_file=csr,
    )
    refused(result, 415, "unsupported_media_type")


def test_unknown_operation_and_wrong_method(fleet: Fleet) -> None:
    assert curl(fleet.server.est("fullcmc"), cacert=fleet.server.root_pem).status == 404
    wrong = curl(fleet.server.est("simpleenroll"), cacert=fleet.server.root_pem)
    assert wrong.status == 405
    assert "POST" in wrong.headers["allow"]


def test_serverkeygen_is_off_by_default(fleet: Fleet) -> None:
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
    refused(result, 404, "serverkeygen_disabled")


def test_unauthenticated_refusals_are_audited_too(fleet: Fleet) -> None:
    rogue = make_manufacturer("Rogue2", now=dt.datetime.now(dt.UTC))
    device = fleet.new_device(manufacturer=rogue, in_manifest=False)
    _, csr = fleet.csr("audited")
    refused(fleet.enroll(device, csr), 403, "unknown_issuer")
    records = fleet.server.store(lambda s: s.audit_records(device_id=device.device_id))
    last = records[-1].event
    assert (last.actor, last.action, last.outcome, last.reason) == (
        "unauthenticated",
        "enroll",
        "refused",
        "unknown_issuer",
    )
    assert last.detail["remote"] == "127.0.0.1"


def test_a_flood_of_unauthenticated_refusals_does_not_flood_the_audit_log(fleet: Fleet) -> None:
    # Refused before authentication, each request costs its sender nothing: the audit
    # log takes PER_KEY a minute per source and claimed device (two minutes at most
    # here, if the run crosses one), the rest is counted and said in the next record.
    rogue = make_manufacturer("Flooder", now=dt.datetime.now(dt.UTC))
    device = fleet.new_device(manufacturer=rogue, in_manifest=False, device_id="flood-001")
    _, csr = fleet.csr("flood")
    sent = 3 * PER_KEY
    for _ in range(sent):
        refused(fleet.enroll(device, csr), 403, "unknown_issuer")
    written = audit_reasons(fleet, "flood-001")
    assert written.count("unknown_issuer") <= 2 * PER_KEY < sent, len(written)
    assert len(written) >= PER_KEY  # a device's refusals are still shown
