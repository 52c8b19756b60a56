"""An admin's change and its audit record are one write: neither without the other.

They were two writes (the change, then ``append_audit``). fleet killed between
them — or an audit append that failed — left the change done and unaudited
for good: a retry finds nothing left to do (a revoked device stays revoked,
the event is None) and so audits nothing. A failing audit append stands in for
the kill here, deterministically: the change must not happen either, and the
retry must do it with exactly one record.

SQL backends only: a Redis script that errors half way is not rolled back, so
the same sabotage cannot stand for a crash there (a crash cannot split a script:
Redis applies and persists each one whole).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import pytest

from fleet.authority import admin, lifecycle
from fleet.kernel.errors import StoreError
from fleet.records import (
    CertificateStatus,
    Device,
    DeviceState,
    RevocationReason,
)
from fleet.store.protocol import Store
from tests.contract.conftest import Backend, SqlBackend
from tests.contract.test_store_contract import enrolled

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
ACTOR = "admin:test"
KEY = RevocationReason.KEY_COMPROMISE

Act = Callable[[Store], Awaitable[object]]


async def _revoke(store: Store) -> object:
    return await lifecycle.revoke_device(store, "d1", KEY, actor=ACTOR, now=NOW)


async def _revoke_certificate(store: Store) -> object:
    return await lifecycle.revoke_certificate(store, 0x51, KEY, actor=ACTOR, now=NOW)


async def _suspend(store: Store) -> object:
    return await lifecycle.suspend_device(store, "d1", actor=ACTOR, now=NOW)


async def _approve(store: Store) -> object:
    return await admin.approve_device(store, "p1", actor=ACTOR, now=NOW)


async def _reject(store: Store) -> object:
    return await admin.reject_device(store, "p1", actor=ACTOR, now=NOW)


# (audit action, what the admin does, the change as (device, certificate status) seen after)
CASES: dict[str, tuple[Act, str, DeviceState, CertificateStatus]] = {
    "revoke": (_revoke, "d1", DeviceState.REVOKED, CertificateStatus.REVOKED),
    "revoke_certificate": (
        _revoke_certificate,
        "d1",
        DeviceState.ACTIVE,
        CertificateStatus.REVOKED,
    ),
    "suspend": (_suspend, "d1", DeviceState.SUSPENDED, CertificateStatus.GOOD),
    "approve": (_approve, "p1", DeviceState.REGISTERED, CertificateStatus.GOOD),
    "reject": (_reject, "p1", DeviceState.REJECTED, CertificateStatus.GOOD),
}


async def _state(store: Store, device_id: str) -> tuple[DeviceState, CertificateStatus, int]:
    device = await store.get_device(device_id)
    (cert,) = await store.list_certificates("d1")
    return device.state, cert.status, await store.feed_head()


@pytest.mark.parametrize("action", CASES)
async def test_a_change_whose_audit_record_fails_is_not_made(
    backend: Backend, store: Store, action: str
) -> None:
    if not isinstance(backend, SqlBackend):
        pytest.skip("see the module docstring: the sabotage stands for a crash on SQL only")
    act, device_id, state_after, cert_after = CASES[action]
    await enrolled(store, "d1", 0x51, NOW)
    await store.add_pending_device(
        Device(device_id="p1", state=DeviceState.PENDING, created_at=NOW, updated_at=NOW)
    )
    before = await _state(store, device_id)

    await backend.sabotage_audit(action)
    with pytest.raises(StoreError):
        await act(store)
    assert await _state(store, device_id) == before, f"{action} was made without its audit record"

    await backend.sabotage_audit(None)
    await act(store)
    state, cert, _ = await _state(store, device_id)
    assert (state, cert) == (state_after, cert_after)
    records = [
        r for r in await store.audit_records(device_id=device_id) if r.event.action == action
    ]
    assert len(records) == 1, records
    if action == "revoke":
        assert records[0].event.detail["serials"] == "51"
