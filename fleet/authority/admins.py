"""Admin credentials: client certificates from the admin CA, and bearer tokens.

Only hashes are stored (the SHA-256 of the certificate or of the token); the
role lives in the store, so it can be changed or the credential disabled
without re-issuing anything.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization

from fleet.authority.audit import admin_action
from fleet.kernel.errors import AdminNotFound, RequestInvalid
from fleet.kernel.fingerprint import MIN_PREFIX, fingerprint_prefix, sha256_fingerprint
from fleet.kernel.keys import KeyType
from fleet.kernel.reasons import Reason
from fleet.pki.ca import CertifiedKey
from fleet.pki.issuance import ValidatedRequest, build_device_certificate, sign_certificate
from fleet.pki.keys import generate_private_key
from fleet.pki.profile import DeviceProfile
from fleet.records import AdminCredential, AdminRole
from fleet.store.protocol import Store
from fleet.tokens import new_token, token_sha256

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
ADMIN_CERT_VALIDITY = dt.timedelta(days=365)


def resolve_admin_fingerprint(text: str, credentials: Sequence[AdminCredential]) -> str:
    """The full SHA-256 of the one credential whose fingerprint starts with ``text``.

    ``text`` may be the whole fingerprint or a prefix of at least 8 hex digits,
    in any case, with or without colons (as `fleet admin list` and openssl show
    them). No match is AdminNotFound; several are refused, naming them.
    """
    prefix = fingerprint_prefix(text)
    if prefix is None:
        raise RequestInvalid(
            f"{text[:80]!r} is not a credential fingerprint: give the SHA-256 from "
            f"`fleet admin list` (at least {MIN_PREFIX} hex digits)",
            reason=Reason.FINGERPRINT_INVALID,
        )
    matches = [c for c in credentials if c.sha256.startswith(prefix)]
    if not matches:
        raise AdminNotFound(f"no admin credential has a fingerprint starting with {prefix}")
    if len(matches) > 1:
        names = ", ".join(f"{c.name} ({c.sha256[:16]})" for c in matches)
        raise RequestInvalid(
            f"{prefix} matches {len(matches)} admin credentials: {names}; give more digits",
            reason=Reason.FINGERPRINT_INVALID,
        )
    return matches[0].sha256


def validate_admin_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RequestInvalid(f"admin name {name[:80]!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    return name


async def create_admin_certificate(
    store: Store,
    admin_ca: CertifiedKey,
    name: str,
    role: AdminRole,
    *,
    actor: str,
    now: dt.datetime,
) -> CertifiedKey:
    """A new key and client certificate (CN = name) for an admin, recorded by its hash."""
    validate_admin_name(name)
    key = generate_private_key(KeyType.EC_P256)
    request = ValidatedRequest(
        device_id=name, public_key=key.public_key(), key_type=KeyType.EC_P256
    )
    profile = DeviceProfile(name="admin", validity=ADMIN_CERT_VALIDITY)
    certificate = sign_certificate(
        build_device_certificate(request, issuer=admin_ca, profile=profile, now=now), admin_ca
    )
    sha256 = sha256_fingerprint(certificate)
    await store.put_admin_credential(
        AdminCredential(name, role, "certificate", sha256, now),
        audit=admin_action(
            actor, "admin_create", f"role_{role.value}", now, admin=name, sha256=sha256
        ),
    )
    return CertifiedKey(certificate, key)


async def create_admin_token(
    store: Store, name: str, role: AdminRole, *, actor: str, now: dt.datetime
) -> str:
    """A new bearer token for automation. Returned once; only its hash is kept."""
    validate_admin_name(name)
    token = new_token()
    sha256 = token_sha256(token)
    await store.put_admin_credential(
        AdminCredential(name, role, "token", sha256, now),
        audit=admin_action(
            actor, "admin_token", f"role_{role.value}", now, admin=name, sha256=sha256
        ),
    )
    return token


async def disable_admin(store: Store, sha256: str, *, actor: str, now: dt.datetime) -> bool:
    """Disable the credential ``sha256`` (kept for the record), audited in the same
    store write; False if it already was (nothing written). Raises AdminNotFound."""
    credential = await store.find_admin_credential(sha256)
    return await store.disable_admin_credential(
        sha256,
        audit=admin_action(
            actor, "admin_disable", Reason.ADMIN_DISABLED, now,
            admin=credential.name, sha256=sha256,
        ),
    )  # fmt: skip


def certificate_pem(pair: CertifiedKey) -> tuple[bytes, bytes]:
    cert = pair.certificate.public_bytes(serialization.Encoding.PEM)
    key = pair.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert, key
