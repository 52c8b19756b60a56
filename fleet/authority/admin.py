"""What a fleet admin does: trust manufacturers, import manifests, grant tokens,
approve or reject waiting devices.

Each use-case takes the store and who acts (``actor``, e.g. ``admin:alice@local``),
changes the store with its atomic operations, and appends what it did to the
audit log. The local CLI and (later) the admin API call the same functions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.authority import replacement
from fleet.authority.audit import admin_action
from fleet.authority.credentials import stored_certificates
from fleet.kernel.certs import is_ca
from fleet.kernel.chain import missing_issuer
from fleet.kernel.device_id import validate_device_id
from fleet.kernel.domains import FleetAuthorities, check_manufacturer_ca
from fleet.kernel.errors import (
    ConfigError,
    DeviceNotFound,
    ManifestInvalid,
    PolicyError,
    RequestInvalid,
    StateConflict,
    StoreConflict,
)
from fleet.kernel.fingerprint import normalize_fingerprint, sha256_fingerprint
from fleet.pki.ca import certificate_to_pem, load_certificates_pem
from fleet.records import (
    Device,
    DeviceState,
    EnrollmentToken,
    ManifestEntry,
    ManufacturerCA,
)
from fleet.store.protocol import Store
from fleet.tokens import new_token, token_sha256

# States in which a device will never enroll: a token for it would be a lie.
_NO_TOKEN_STATES = {DeviceState.REVOKED, DeviceState.SUSPENDED, DeviceState.REJECTED}


# -- manufacturer trust --------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class TrustResult:
    ca: ManufacturerCA
    added: bool  # False: it was already trusted (nothing changed)


# A manufacturer hierarchy is a few certificates of ~1 KiB; the API reads no more
# than this, and the CLI refuses a bigger file before reading it whole.
MAX_CA_BUNDLE_BYTES = 64 * 1024


def ca_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a CA bundle an admin gives (API or CLI); pem_invalid otherwise."""
    hint = (
        "Give the manufacturer's CA certificate(s) as PEM text: one or more "
        "-----BEGIN CERTIFICATE----- blocks, at most 64 KiB."
    )
    if len(pem) > MAX_CA_BUNDLE_BYTES:
        raise RequestInvalid(
            f"the CA bundle is larger than {MAX_CA_BUNDLE_BYTES // 1024} KiB",
            reason="pem_invalid", hint=hint,
        )  # fmt: skip
    try:
        return load_certificates_pem(pem)
    except ConfigError as exc:
        # Here the PEM comes from an admin, not from our own config.
        raise RequestInvalid(exc.message, reason="pem_invalid", hint=hint) from exc


async def trust_manufacturer(
    store: Store,
    pem: bytes,
    *,
    name: str | None,
    fleet: FleetAuthorities,
    actor: str,
    now: dt.datetime,
) -> list[TrustResult]:
    """Trust every CA certificate in ``pem`` to sign bootstrap certificates.

    All certificates are checked before any is stored: each must be a CA
    (basicConstraints cA=TRUE), valid at ``now``, and none may belong to or
    chain into a fleet trust domain (``fleet.kernel.domains``).
    """
    certificates = ca_bundle(pem)
    for cert in certificates:
        _check_manufacturer_ca(cert, fleet, now)
    return await _add_all(
        certificates, name, now,
        lambda ca: store.add_manufacturer_ca(ca, audit=admin_action(
            actor, "trust_add", "manufacturer_ca_added", now, sha256=ca.sha256, name=ca.name
        )),
        store.list_manufacturer_cas,
    )  # fmt: skip


async def distrust_manufacturer(
    store: Store, fingerprint: str, *, actor: str, now: dt.datetime
) -> str:
    """Stop trusting a manufacturer CA (any fingerprint spelling); its normalised fingerprint."""
    sha256 = _fingerprint(fingerprint)
    await store.remove_manufacturer_ca(
        sha256,
        audit=admin_action(actor, "trust_remove", "manufacturer_ca_removed", now, sha256=sha256),
    )
    return sha256


async def trust_intermediate(
    store: Store,
    pem: bytes,
    *,
    name: str | None,
    fleet: FleetAuthorities,
    actor: str,
    now: dt.datetime,
) -> list[TrustResult]:
    """Add every CA certificate in ``pem`` to the manufacturer intermediate pool.

    All are checked before any is stored: each must be a CA, valid at
    ``now``, belong to no fleet trust domain, and chain (by name and
    signature) to a trusted manufacturer root, through the pool or the other
    certificates of ``pem``. The pool only helps build paths: a device is
    still verified up to a trusted root, whose removal distrusts it.
    """
    certificates = ca_bundle(pem)
    roots = [
        cert
        for ca in await store.list_manufacturer_cas()
        for cert in stored_certificates(ca, "trusted manufacturer CA")
    ]
    pool = [
        cert
        for ca in await store.list_manufacturer_intermediates()
        for cert in stored_certificates(ca, "manufacturer intermediate")
    ]
    for cert in certificates:
        _check_manufacturer_ca(cert, fleet, now)
        others = [c for c in certificates if c is not cert]
        missing = missing_issuer(cert, [*others, *pool], roots)
        if missing is not None:
            raise PolicyError(
                f"intermediate CA {cert.subject.rfc4514_string()!r} does not chain to a "
                f"trusted manufacturer root: its issuer {missing.rfc4514_string()!r} "
                "was not found",
                reason="unknown_issuer",
                hint="Trust the manufacturer's root first (`fleet trust add-manufacturer`), "
                "or give the intermediates above this one in the same file.",
            )

    return await _add_all(
        certificates, name, now,
        lambda ca: store.add_manufacturer_intermediate(ca, audit=admin_action(
            actor, "trust_add_intermediate", "manufacturer_intermediate_added", now,
            sha256=ca.sha256, name=ca.name,
        )),
        store.list_manufacturer_intermediates,
    )  # fmt: skip


async def distrust_intermediate(
    store: Store, fingerprint: str, *, actor: str, now: dt.datetime
) -> str:
    """Drop an intermediate from the pool (any fingerprint spelling); its normalised fingerprint."""
    sha256 = _fingerprint(fingerprint)
    await store.remove_manufacturer_intermediate(sha256, audit=admin_action(
        actor, "trust_remove_intermediate", "manufacturer_intermediate_removed", now,
        sha256=sha256,
    ))  # fmt: skip
    return sha256


def _check_manufacturer_ca(
    cert: x509.Certificate, fleet: FleetAuthorities, now: dt.datetime
) -> None:
    subject = cert.subject.rfc4514_string()
    if not is_ca(cert):
        raise PolicyError(
            f"certificate {subject!r} is not a CA certificate (basicConstraints cA is not TRUE)",
            reason="not_a_ca",
            hint="Give the manufacturer's CA certificate (the one that signs bootstrap "
            "certificates), not a device certificate.",
        )
    check_manufacturer_ca(cert, fleet)
    if now >= cert.not_valid_after_utc:
        raise PolicyError(
            f"CA certificate {subject!r} expired at {cert.not_valid_after_utc.isoformat()}",
            reason="ca_expired",
            hint="Ask the manufacturer for its current CA certificate.",
        )


async def _add_all(
    certificates: Sequence[x509.Certificate],
    name: str | None,
    now: dt.datetime,
    add: Callable[[ManufacturerCA], Awaitable[bool]],
    stored: Callable[[], Awaitable[list[ManufacturerCA]]],
) -> list[TrustResult]:
    """Store each (already checked) certificate with ``add`` (which audits the ones
    that were new).

    One already trusted is answered as stored (its name and when it was added),
    not as this request would have made it."""
    results = []
    for cert in certificates:
        ca = ManufacturerCA(
            sha256=sha256_fingerprint(cert),
            name=name or _display_name(cert),
            pem=certificate_to_pem(cert).decode("ascii"),
            added_at=now,
        )
        added = await add(ca)
        if not added:
            ca = next((c for c in await stored() if c.sha256 == ca.sha256), ca)
        results.append(TrustResult(ca, added))
    return results


def _fingerprint(text: str) -> str:
    """A CA fingerprint from an admin, in any spelling, normalised; 400 if it is none."""
    try:
        return normalize_fingerprint(text)
    except ConfigError as exc:
        raise RequestInvalid(exc.message, reason="fingerprint_invalid") from exc


def _display_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names and isinstance(names[0].value, str) and names[0].value:
        return names[0].value
    return cert.subject.rfc4514_string()


# -- manifest ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class ImportResult:
    created: int
    updated: int


async def import_manifest(
    store: Store, entries: Sequence[ManifestEntry], *, actor: str, now: dt.datetime
) -> ImportResult:
    """Import parsed manifest entries, all or nothing (see Store.import_manifest).
    A manufacturer an entry names must be a trusted manufacturer CA; the entry
    takes the name it is trusted under."""
    trusted = {ca.sha256: ca.name for ca in await store.list_manufacturer_cas()}
    named = []
    for entry in entries:
        maker = entry.manufacturer
        if maker is not None:
            if maker.sha256 not in trusted:
                raise ManifestInvalid(
                    f"device {entry.device_id!r} names manufacturer CA {maker.sha256[:16]}…, "
                    "which is not trusted",
                    hint="Trust it first (`fleet trust add-manufacturer CA.pem`), or leave "
                    "manufacturer_sha256 empty; nothing was imported.",
                )
            entry = dataclasses.replace(
                entry, manufacturer=dataclasses.replace(maker, name=trusted[maker.sha256])
            )
        named.append(entry)
    entries = named
    # One write with its audit record, which says what was imported (how many were
    # new is only known inside that write: it is the answer, not the record).
    created = await store.import_manifest(
        entries,
        now,
        audit=admin_action(
            actor, "manifest_import", "manifest_imported", now, devices=str(len(entries))
        ),
    )
    return ImportResult(created=created, updated=len(entries) - created)


# -- one-time enrollment tokens ---------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token. ``token`` is the secret: show it once, never store or log it."""

    device_id: str
    token: str
    expires_at: dt.datetime
    device: Device
    created_device: bool  # the device did not exist and was created (pending)


async def issue_enrollment_token(
    store: Store,
    device_id: str,
    *,
    lifetime: dt.timedelta,
    actor: str,
    now: dt.datetime,
) -> IssuedToken:
    """Grant ``device_id`` one enrollment with a token; replaces an earlier token.

    An unknown device is created ``pending``: the token alone enrolls it (the
    admin approved it by making the token), while a bootstrap certificate for
    that id still waits for ``approve`` — there is no manifest pin to check it by.
    """
    validate_device_id(device_id)
    created = False
    try:
        device = await store.get_device(device_id)
    except DeviceNotFound:
        device = await _add_token_device(store, device_id, now)
        created = True
    if device.state in _NO_TOKEN_STATES:
        raise PolicyError(
            f"device {device_id} is {device.state.value}; a token would not let it enroll",
            reason=f"device_{device.state.value}",
            hint="Only registered, pending or active devices can be given an enrollment token.",
        )
    token = new_token()
    expires_at = now + lifetime
    await store.put_enrollment_token(
        EnrollmentToken(
            device_id=device_id,
            token_sha256=token_sha256(token),
            created_at=now,
            expires_at=expires_at,
        ),
        audit=admin_action(
            actor,
            "token_issue",
            "enrollment_token_issued",
            now,
            device_id=device_id,
            expires_at=expires_at.isoformat(),
            device_created="yes" if created else "no",
        ),
    )
    return IssuedToken(device_id, token, expires_at, device, created)


async def _add_token_device(store: Store, device_id: str, now: dt.datetime) -> Device:
    try:
        return await store.add_pending_device(
            Device(
                device_id=device_id,
                state=DeviceState.PENDING,
                created_at=now,
                updated_at=now,
                state_reason="enrollment_token_issued",
            )
        )
    except StoreConflict:
        # Created by someone else between our read and our insert: use theirs.
        return await store.get_device(device_id)


# -- approval ------------------------------------------------------------------------
_PAST = {"approve": "approved", "reject": "rejected"}


async def approve_device(
    store: Store,
    device_id: str,
    *,
    actor: str,
    now: dt.datetime,
    replace: bool = False,
    key: str | None = None,
) -> Device:
    """pending -> registered: the device may enroll (it keeps its pin, if any).

    An active device with a pending replacement request (its bootstrap certificate
    used again) is approved only with ``replace`` (see fleet.authority.replacement),
    for ``key`` (needed when several keys were presented); without it nothing
    changes and the error explains both choices."""
    request = await replacement.pending_request(store, device_id)
    if request is not None:
        if not replace:
            raise replacement.choice_required(device_id, request)
        chosen = replacement.approved_key(request, key)
        await replacement.answer_replacement(
            store, request, approve=True, revoke=False, actor=actor, now=now, key=chosen
        )
        return await store.get_device(device_id)
    if replace:
        await store.get_device(device_id)  # DeviceNotFound for an unknown id
        raise replacement.no_request(device_id, "--replace")
    return await _decide_pending(store, device_id, DeviceState.REGISTERED, "approve", actor, now)


async def reject_device(
    store: Store, device_id: str, *, actor: str, now: dt.datetime, revoke: bool = False
) -> Device:
    """pending -> rejected: every later enrollment of the device is refused.

    For an active device with a pending replacement request, the replay is
    refused from then on and the device stays as it is, unless ``revoke``
    revokes its current certificates too (keyCompromise)."""
    request = await replacement.pending_request(store, device_id)
    if request is not None:
        await replacement.answer_replacement(
            store, request, approve=False, revoke=revoke, actor=actor, now=now
        )
        return await store.get_device(device_id)
    if revoke:
        await store.get_device(device_id)  # DeviceNotFound for an unknown id
        raise replacement.no_request(device_id, "--revoke")
    return await _decide_pending(store, device_id, DeviceState.REJECTED, "reject", actor, now)


async def _decide_pending(
    store: Store,
    device_id: str,
    target: DeviceState,
    action: str,
    actor: str,
    now: dt.datetime,
) -> Device:
    done = _PAST[action]
    before = await store.get_device(device_id)  # DeviceNotFound for an unknown id
    try:
        after = await store.set_device_state(
            device_id,
            target,
            expected={DeviceState.PENDING},
            now=now,
            reason=f"{done} by {actor}",
            audit=admin_action(
                actor, action, f"admin_{done}", now, device_id=device_id,
                held_for=before.state_reason,
            ),
        )  # fmt: skip
    except StoreConflict as exc:
        current = await store.get_device(device_id)
        raise StateConflict(
            f"device {device_id} is {current.state.value}, not pending; nothing changed",
            reason="device_not_pending",
            hint=f"Only a device waiting for approval can be {done}. "
            f"See its state with `fleet device show {device_id}`.",
        ) from exc
    return after
