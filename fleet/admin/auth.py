"""Who is calling the admin API: an admin client certificate (mTLS) or a bearer token.

Admin certificates come from the admin CA, a trust domain of its own; a
certificate or token is accepted only while its credential record in the
store is enabled, so an admin is cut off by disabling the record — no CRL
needed. There is no anonymous access.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from cryptography import x509

from fleet.http.peer import PeerCertificates
from fleet.kernel.chain import TrustDomain, verify_client_chain
from fleet.kernel.clock import Clock
from fleet.kernel.errors import AuthError, CredentialsRequired, NotFound, RoleInsufficient
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.reasons import Reason
from fleet.records import AdminCredential, AdminRole, AuditEvent
from fleet.store.protocol import Store
from fleet.tokens import token_sha256


class AdminDisabled(AuthError):
    reason = Reason.ADMIN_DISABLED
    hint = "This admin credential was disabled; ask an admin for a new one."


class AdminAuthenticator:
    def __init__(
        self,
        *,
        store: Store,
        peers: PeerCertificates,
        admin_ca: x509.Certificate | None,
        clock: Clock,
    ) -> None:
        self._store = store
        self._peers = peers
        self._domain = TrustDomain("admin", (admin_ca,), max_chain_depth=1) if admin_ca else None
        self._clock = clock

    async def identify(self, request: web.Request) -> AdminCredential:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return await self.identify_token(value.strip())
        return await self.identify_certificate(request)

    async def identify_token(self, token: str) -> AdminCredential:
        """The enabled credential of a bearer token (also the console's sign-in form)."""
        return await self.credential(token_sha256(token), "token")

    async def identify_certificate(self, request: web.Request) -> AdminCredential:
        """The enabled credential of the admin client certificate the request came with."""
        cert = self.presented_certificate(request)
        if cert is None or self._domain is None:
            raise CredentialsRequired(
                "the admin API needs an admin client certificate or a bearer token",
                hint="Create one with `fleet admin create NAME --role ROLE` "
                "or `fleet admin token NAME --role ROLE`.",
            )
        verify_client_chain(cert, (), self._domain, now=self._clock.now())
        return await self.credential(sha256_fingerprint(cert), "certificate")

    def presented_certificate(self, request: web.Request) -> x509.Certificate | None:
        """The client certificate the request came with (not yet verified), if any."""
        return self._peers.leaf(request)

    async def credential(self, sha256: str, kind: str) -> AdminCredential:
        """The credential with this fingerprint and kind, refused unless it is enabled now
        (a console session re-checks its credential this way on every request)."""
        credential = await self._lookup(sha256, kind)
        if credential.disabled:
            raise AdminDisabled(f"admin credential of {credential.name} is disabled")
        return credential

    async def _lookup(self, sha256: str, kind: str) -> AdminCredential:
        try:
            credential = await self._store.find_admin_credential(sha256)
        except NotFound:
            credential = None
        # compare_digest keeps the final check constant-time; the lookup key
        # itself is a hash, so timing reveals nothing about a token.
        if (
            credential is None
            or credential.kind != kind
            or not hmac.compare_digest(credential.sha256, sha256)
        ):
            raise CredentialsRequired(f"unknown admin {kind}", reason="admin_unknown")
        return credential


def actor_of(admin: AdminCredential) -> str:
    """How the audit log names an admin (API and console alike)."""
    return f"admin:{admin.name}"


async def require_role(
    store: Store,
    clock: Clock,
    admin: AdminCredential,
    needed: AdminRole,
    *,
    method: str,
    path: str,
    device_id: str | None = None,
) -> None:
    """Refuse (RoleInsufficient, audited) an admin whose role does not allow ``needed``."""
    if admin.role.allows(needed):
        return
    await store.append_audit(
        AuditEvent(
            at=clock.now(),
            actor=actor_of(admin),
            action="denied",
            outcome="refused",
            reason="role_insufficient",
            device_id=device_id,
            detail={"method": method, "path": path[:200],
                    "role": admin.role.value, "needed": needed.value},
        )
    )  # fmt: skip
    raise RoleInsufficient(f"{admin.name} has role {admin.role.value}; this needs {needed.value}")
