"""One interface for every admin operation, whether the CLI runs beside the store or not.

Each command is written once against :class:`AdminOps`, as handed out by
:func:`fleet.cli.mode.admin_ops`. :class:`fleet.cli.local.LocalOps` opens the store
named by fleet.toml and calls the use-cases (actor ``admin:USER@local``);
:class:`fleet.cli.remote.RemoteOps` calls the admin REST API of a running server
with an admin credential (the server records that admin as the actor). Both
return the same records, so tables and ``--json`` read the same in both modes.
This module holds the interface and its values only; it imports neither mode.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from fleet.authority.admin import ImportResult, TrustResult
from fleet.authority.lifecycle import BulkResult, BulkSelection
from fleet.records import (
    AuditRecord,
    CertificateRecord,
    Device,
    DeviceState,
    ManifestEntry,
    ManufacturerCA,
    ReplacementRequest,
    RevocationReason,
)
from fleet.store.audit_chain import ChainProblem


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceQuery:
    state: DeviceState | None = None
    batch: str | None = None
    model: str | None = None
    expiring_within_days: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TokenGrant:
    """A new one-time enrollment token; ``token`` is the secret, shown once."""

    device_id: str
    token: str
    expires_at: dt.datetime
    created_device: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ChainReport:
    records: int
    problems: tuple[ChainProblem, ...]


class AdminOps(Protocol):
    """What a fleet admin can do; see LocalOps (store) and RemoteOps (admin API)."""

    # devices
    def list_devices(self, query: DeviceQuery) -> list[Device]: ...
    def show_device(self, device_id: str) -> tuple[Device, list[CertificateRecord]]: ...
    def replacement_request(self, device_id: str) -> ReplacementRequest | None: ...
    def approve(
        self, device_id: str, *, replace: bool = False, key: str | None = None
    ) -> Device: ...
    def reject(self, device_id: str, *, revoke: bool = False) -> Device: ...
    def issue_token(self, device_id: str, lifetime: dt.timedelta) -> TokenGrant: ...
    def suspend(self, device_id: str, note: str) -> Device: ...
    def resume(self, device_id: str, note: str) -> Device: ...
    def revoke_device(
        self, device_id: str, reason: RevocationReason, note: str
    ) -> tuple[Device, bool]: ...
    def bulk_revoke(
        self, selection: BulkSelection, reason: RevocationReason, *, dry_run: bool, confirm: bool
    ) -> BulkResult: ...
    def why(self, device_id: str) -> tuple[Device, list[AuditRecord]]: ...

    # certificates
    def revoke_certificate(
        self, serial: int, reason: RevocationReason, note: str
    ) -> tuple[CertificateRecord, bool]: ...
    def expiring(self, days: int, limit: int) -> list[CertificateRecord]: ...

    # audit log
    def audit(self, device_id: str | None, after: int, limit: int) -> list[AuditRecord]: ...
    def verify_audit(self) -> ChainReport: ...

    # manufacturers and manifests
    def list_manufacturers(self) -> list[ManufacturerCA]: ...
    def trust_manufacturer(self, pem: bytes, name: str | None) -> list[TrustResult]: ...
    def distrust_manufacturer(self, fingerprint: str) -> str: ...
    def list_intermediates(self) -> list[ManufacturerCA]: ...
    def trust_intermediate(self, pem: bytes, name: str | None) -> list[TrustResult]: ...
    def distrust_intermediate(self, fingerprint: str) -> str: ...
    def import_manifest(self, text: str, entries: Sequence[ManifestEntry]) -> ImportResult: ...
