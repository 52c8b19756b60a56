"""The admin operations on the local store named by fleet.toml, through the use-cases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from fleet.authorities import load_fleet_authorities
from fleet.authority import admin as cases
from fleet.authority import lifecycle
from fleet.authority.admin import ImportResult, TrustResult
from fleet.authority.lifecycle import BulkResult, BulkSelection
from fleet.cli._context import local_actor, now, with_store
from fleet.cli.ops import ChainReport, DeviceQuery, TokenGrant
from fleet.config import FleetConfig
from fleet.records import (
    AuditRecord,
    CertificateRecord,
    Device,
    DeviceFilter,
    ManifestEntry,
    ManufacturerCA,
    ReplacementRequest,
    RevocationReason,
)
from fleet.store.audit_chain import verify_chain
from fleet.store.protocol import Store

_PAGE = 500


class LocalOps:
    """The operations on the store named by fleet.toml, through the use-cases."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.actor = local_actor()

    def list_devices(self, query: DeviceQuery) -> list[Device]:
        days = query.expiring_within_days
        device_filter = DeviceFilter(
            state=query.state,
            batch=query.batch,
            model=query.model,
            expiring_before=None if days is None else now() + dt.timedelta(days=days),
        )

        async def read(store: Store) -> list[Device]:
            found: list[Device] = []
            while True:
                after = found[-1].device_id if found else None
                page = await store.list_devices(device_filter, after=after, limit=_PAGE)
                found += page
                if len(page) < _PAGE:
                    return found

        return with_store(self.config, read)

    def show_device(self, device_id: str) -> tuple[Device, list[CertificateRecord]]:
        async def read(store: Store) -> tuple[Device, list[CertificateRecord]]:
            return await store.get_device(device_id), await store.list_certificates(device_id)

        return with_store(self.config, read)

    def replacement_request(self, device_id: str) -> ReplacementRequest | None:
        async def read(store: Store) -> ReplacementRequest | None:
            await store.get_device(device_id)  # DeviceNotFound for an unknown id
            return await store.get_replacement_request(device_id)

        return with_store(self.config, read)

    def approve(self, device_id: str, *, replace: bool = False, key: str | None = None) -> Device:
        return with_store(
            self.config,
            lambda s: cases.approve_device(
                s, device_id, actor=self.actor, now=now(), replace=replace, key=key
            ),
        )

    def reject(self, device_id: str, *, revoke: bool = False) -> Device:
        return with_store(
            self.config,
            lambda s: cases.reject_device(s, device_id, actor=self.actor, now=now(), revoke=revoke),
        )

    def issue_token(self, device_id: str, lifetime: dt.timedelta) -> TokenGrant:
        issued = with_store(
            self.config,
            lambda s: cases.issue_enrollment_token(
                s, device_id, lifetime=lifetime, actor=self.actor, now=now()
            ),
        )
        return TokenGrant(issued.device_id, issued.token, issued.expires_at, issued.created_device)

    def suspend(self, device_id: str, note: str) -> Device:
        return with_store(
            self.config,
            lambda s: lifecycle.suspend_device(
                s, device_id, actor=self.actor, now=now(), note=note
            ),
        )

    def resume(self, device_id: str, note: str) -> Device:
        return with_store(
            self.config,
            lambda s: lifecycle.resume_device(s, device_id, actor=self.actor, now=now(), note=note),
        )

    def revoke_device(
        self, device_id: str, reason: RevocationReason, note: str
    ) -> tuple[Device, bool]:
        async def revoke(store: Store) -> tuple[Device, bool]:
            result = await lifecycle.revoke_device(
                store, device_id, reason, actor=self.actor, now=now(), note=note
            )
            return await store.get_device(device_id), result.event is not None

        return with_store(self.config, revoke)

    def bulk_revoke(
        self, selection: BulkSelection, reason: RevocationReason, *, dry_run: bool, confirm: bool
    ) -> BulkResult:
        return with_store(
            self.config,
            lambda s: lifecycle.bulk_revoke(
                s,
                selection,
                reason,
                dry_run=dry_run,
                confirm=confirm,
                threshold=self.config.admin.bulk_confirm_threshold,
                actor=self.actor,
                now=now(),
            ),
        )

    def why(self, device_id: str) -> tuple[Device, list[AuditRecord]]:
        return with_store(self.config, lambda s: lifecycle.decision_trace(s, device_id))

    def revoke_certificate(
        self, serial: int, reason: RevocationReason, note: str
    ) -> tuple[CertificateRecord, bool]:
        async def revoke(store: Store) -> tuple[CertificateRecord, bool]:
            result = await lifecycle.revoke_certificate(
                store, serial, reason, actor=self.actor, now=now(), note=note
            )
            return await store.get_certificate(serial), result.event is not None

        return with_store(self.config, revoke)

    def expiring(self, days: int, limit: int) -> list[CertificateRecord]:
        before = now() + dt.timedelta(days=days)
        return with_store(self.config, lambda s: s.list_expiring(before, limit=limit))

    def audit(self, device_id: str | None, after: int, limit: int) -> list[AuditRecord]:
        return with_store(
            self.config,
            lambda s: s.audit_records(device_id=device_id, after_seq=after, limit=limit),
        )

    def verify_audit(self) -> ChainReport:
        async def read(store: Store) -> list[AuditRecord]:
            records: list[AuditRecord] = []
            while True:
                page = await store.audit_records(
                    after_seq=records[-1].seq if records else 0, limit=5000
                )
                records += page
                if len(page) < 5000:
                    return records

        records = with_store(self.config, read)
        return ChainReport(len(records), tuple(verify_chain(records)))

    def list_manufacturers(self) -> list[ManufacturerCA]:
        return with_store(self.config, lambda s: s.list_manufacturer_cas())

    def trust_manufacturer(self, pem: bytes, name: str | None) -> list[TrustResult]:
        fleet = load_fleet_authorities(self.config)
        return with_store(
            self.config,
            lambda s: cases.trust_manufacturer(
                s, pem, name=name, fleet=fleet, actor=self.actor, now=now()
            ),
        )

    def distrust_manufacturer(self, fingerprint: str) -> str:
        return with_store(
            self.config,
            lambda s: cases.distrust_manufacturer(s, fingerprint, actor=self.actor, now=now()),
        )

    def list_intermediates(self) -> list[ManufacturerCA]:
        return with_store(self.config, lambda s: s.list_manufacturer_intermediates())

    def trust_intermediate(self, pem: bytes, name: str | None) -> list[TrustResult]:
        fleet = load_fleet_authorities(self.config)
        return with_store(
            self.config,
            lambda s: cases.trust_intermediate(
                s, pem, name=name, fleet=fleet, actor=self.actor, now=now()
            ),
        )

    def distrust_intermediate(self, fingerprint: str) -> str:
        return with_store(
            self.config,
            lambda s: cases.distrust_intermediate(s, fingerprint, actor=self.actor, now=now()),
        )

    def import_manifest(self, text: str, entries: Sequence[ManifestEntry]) -> ImportResult:
        return with_store(
            self.config,
            lambda s: cases.import_manifest(s, entries, actor=self.actor, now=now()),
        )
