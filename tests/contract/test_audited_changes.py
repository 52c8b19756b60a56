"""An admin's change and its audit record are one write: neither without the other.

They were two writes (the change, then ``append_audit``). fleet killed between
them — or an audit append that failed — left the change done and unaudited
for good: a retry finds nothing left to do (a revoked device stays revoked,
the event is None) and so audits nothing. A failing audit append stands in for
the kill here, deterministically: the change must not happen either, and the
retry must do it with exactly one record.

The sabotage runs on SQL backends only: a Redis script that errors half way is
not rolled back, so it cannot stand for a crash there (a crash cannot split a
script: Redis applies and persists each one whole); on Redis the change and its
one record are checked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import pytest

from fleet.authority import admin, admins, lifecycle
from fleet.authority.audit import admin_action
from fleet.kernel.errors import StoreError
from fleet.records import (
    AdminCredential,
    AdminRole,
    CertificateStatus,
    Device,
    DeviceFilter,
    DeviceState,
    ManifestEntry,
    ManufacturerCA,
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
    act, device_id, state_after, cert_after = CASES[action]
    await enrolled(store, "d1", 0x51, NOW)
    await store.add_pending_device(
        Device(device_id="p1", state=DeviceState.PENDING, created_at=NOW, updated_at=NOW)
    )
    before = await _state(store, device_id)

    if isinstance(backend, SqlBackend):  # see the module docstring
        await backend.sabotage_audit(action)
        with pytest.raises(StoreError):
            await act(store)
        assert await _state(store, device_id) == before, f"{action} made without its audit"
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


CA_SHA = "c" * 64
ADMIN_SHA = "d" * 64


async def _trust(store: Store) -> object:
    ca = ManufacturerCA(CA_SHA, "Maker", "-----BEGIN CERTIFICATE-----\n", NOW)
    event = admin_action(ACTOR, "trust_add", "manufacturer_ca_added", NOW, sha256=CA_SHA)
    return await store.add_manufacturer_ca(ca, audit=event)


async def _distrust(store: Store) -> object:
    return await admin.distrust_manufacturer(store, CA_SHA, actor=ACTOR, now=NOW)


async def _distrust_intermediate(store: Store) -> object:
    return await admin.distrust_intermediate(store, CA_SHA, actor=ACTOR, now=NOW)


async def _pooled(store: Store) -> bool:
    return CA_SHA in {ca.sha256 for ca in await store.list_manufacturer_intermediates()}


async def _admin_token(store: Store) -> object:
    return await admins.create_admin_token(store, "bot", AdminRole.ADMIN, actor=ACTOR, now=NOW)


async def _disable_admin(store: Store) -> object:
    return await admins.disable_admin(store, ADMIN_SHA, actor=ACTOR, now=NOW)


async def _import(store: Store) -> object:
    entries = [ManifestEntry("m1", "ab" * 32), ManifestEntry("m2", "cd" * 32)]
    return await admin.import_manifest(store, entries, actor=ACTOR, now=NOW)


async def _devices(store: Store) -> list[str]:
    return [d.device_id for d in await store.list_devices(DeviceFilter(), limit=100)]


async def _trusted(store: Store) -> bool:
    return CA_SHA in {ca.sha256 for ca in await store.list_manufacturer_cas()}


async def _admins(store: Store) -> list[tuple[str, bool]]:
    return [(c.name, c.disabled) for c in await store.list_admin_credentials()]


# (audit action, what the admin does, what it is seen to change)
DIRECTORY_CASES: dict[str, tuple[Act, Callable[[Store], Awaitable[object]]]] = {
    "manifest_import": (_import, _devices),
    "trust_add": (_trust, _trusted),
    "trust_remove": (_distrust, _trusted),
    "trust_remove_intermediate": (_distrust_intermediate, _pooled),
    "admin_token": (_admin_token, _admins),
    "admin_disable": (_disable_admin, _admins),
}


@pytest.mark.parametrize("action", DIRECTORY_CASES)
async def test_a_directory_change_whose_audit_record_fails_is_not_made(
    backend: Backend, store: Store, action: str
) -> None:
    """Trust and admin credentials too; `fleet admin disable` was not audited at all."""
    act, seen = DIRECTORY_CASES[action]
    if action == "trust_remove":
        await store.add_manufacturer_ca(ManufacturerCA(CA_SHA, "Maker", "pem", NOW))
    if action == "trust_remove_intermediate":
        await store.add_manufacturer_intermediate(ManufacturerCA(CA_SHA, "Sub", "pem", NOW))
    await store.put_admin_credential(
        AdminCredential("ops", AdminRole.ADMIN, "token", ADMIN_SHA, NOW)
    )
    before = await seen(store)

    if isinstance(backend, SqlBackend):  # see the module docstring
        await backend.sabotage_audit(action)
        with pytest.raises(StoreError):
            await act(store)
        assert await seen(store) == before, f"{action} was made without its audit record"
        await backend.sabotage_audit(None)
    await act(store)
    assert await seen(store) != before
    records = [r for r in await store.audit_records() if r.event.action == action]
    assert len(records) == 1, records
