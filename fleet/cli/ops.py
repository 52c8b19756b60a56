"""One interface for every admin operation, whether the CLI runs beside the store or not.

Each command is written once against :class:`AdminOps`. :class:`LocalOps` opens
the store named by fleet.toml and calls the use-cases (actor ``admin:USER@local``);
:class:`fleet.cli.remote.RemoteOps` calls the admin REST API of a running server
with an admin credential (the server records that admin as the actor). Both
return the same records, so tables and ``--json`` read the same in both modes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click

from fleet.authorities import load_fleet_authorities
from fleet.authority import admin as cases
from fleet.authority import lifecycle
from fleet.authority.admin import ImportResult, TrustResult
from fleet.authority.lifecycle import BulkResult, BulkSelection
from fleet.cli._context import config_option, load, local_actor, now, with_store
from fleet.config import FleetConfig
from fleet.store.audit_chain import ChainProblem, verify_chain
from fleet.store.protocol import Store
from fleet.store.records import (
    AuditRecord,
    CertificateRecord,
    Device,
    DeviceFilter,
    DeviceState,
    ManifestEntry,
    ManufacturerCA,
    RevocationReason,
)

_F = TypeVar("_F", bound=Callable[..., Any])
_PAGE = 500


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
    def approve(self, device_id: str) -> Device: ...
    def reject(self, device_id: str) -> Device: ...
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
    def import_manifest(self, text: str, entries: Sequence[ManifestEntry]) -> ImportResult: ...


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

    def approve(self, device_id: str) -> Device:
        return with_store(
            self.config,
            lambda s: cases.approve_device(s, device_id, actor=self.actor, now=now()),
        )

    def reject(self, device_id: str) -> Device:
        return with_store(
            self.config,
            lambda s: cases.reject_device(s, device_id, actor=self.actor, now=now()),
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

    def import_manifest(self, text: str, entries: Sequence[ManifestEntry]) -> ImportResult:
        return with_store(
            self.config,
            lambda s: cases.import_manifest(s, entries, actor=self.actor, now=now()),
        )


# -- choosing the mode: --server (or FLEET_SERVER) means remote ------------------------
_REMOTE_OPTIONS = {
    "server": "Admin API of a running fleet server, e.g. https://fleet.example.com:8443 "
    "[env: FLEET_SERVER]. Without it, the local store of fleet.toml is used.",
    "ca_file": "CA certificate(s) that verify the server (for a fleet server: the fleet "
    "root, DATA/ca/root.pem) [default: the system's trust store].",
    "admin_cert": "Admin client certificate (from `fleet admin create`), with --admin-key.",
    "admin_key": "Key of --admin-cert (mode 0600).",
    "token_file": "File (mode 0600) holding an admin bearer token (from `fleet admin token`); "
    "FLEET_ADMIN_TOKEN works too. Never put a token on the command line.",
}
_META = "fleet_remote_"


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> None:
    # Given on a group and on its command, the command's (later, more specific) wins.
    if value is not None and param.name is not None:
        ctx.meta[param.name] = value


def admin_options(function: _F) -> _F:
    """``--config`` and the remote-mode options, accepted on a group and on each command."""
    for name in reversed(_REMOTE_OPTIONS):
        is_path = name != "server"
        function = click.option(
            "--" + name.replace("_", "-"),
            _META + name,  # a parameter name no command uses for its own arguments
            metavar="URL" if name == "server" else "FILE",
            type=click.Path(dir_okay=False, path_type=Path) if is_path else str,
            expose_value=False,
            callback=_remember,
            help=_REMOTE_OPTIONS[name],
        )(function)
    return config_option(function)


def _given(name: str) -> Any:
    return click.get_current_context().meta.get(_META + name)


def admin_ops() -> AdminOps:
    """Remote operations if a server is named, otherwise the local store."""
    server: str | None = _given("server") or os.environ.get("FLEET_SERVER") or None
    if server is None:
        stray = [n for n in _REMOTE_OPTIONS if n != "server" and _given(n) is not None]
        if stray:
            option = "--" + stray[0].replace("_", "-")
            raise click.UsageError(f"{option} is for remote mode; add --server URL")
        return LocalOps(load())
    from fleet.cli.remote import RemoteOps, connect  # only remote mode pays for it

    return RemoteOps(
        connect(
            server,
            ca_file=_given("ca_file"),
            admin_cert=_given("admin_cert"),
            admin_key=_given("admin_key"),
            token_file=_given("token_file"),
        )
    )
