"""Who is asking: turn what a device presented into a verified credential.

Each credential is checked against its own trust domain only (DESIGN.md §2):
bootstrap certificates against the trusted manufacturer CAs, operational
certificates against the fleet issuing CA, tokens against their stored hash.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

from cryptography import x509

from fleet.kernel.chain import TrustDomain, verify_client_chain
from fleet.kernel.clock import Clock
from fleet.kernel.device_id import device_id_from_certificate, validate_device_id
from fleet.kernel.errors import DeviceIdInvalid, TokenInvalid
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import load_certificates_pem
from fleet.policy.enrollment import BootstrapCredential, TokenCredential
from fleet.store.protocol import Store
from fleet.tokens import token_sha256

# Trusting a new manufacturer takes effect within this many seconds on every
# worker, without a store read on every enrollment.
MANUFACTURER_CACHE_SECONDS = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class OperationalIdentity:
    device_id: str
    certificate: x509.Certificate


class Credentials:
    def __init__(
        self,
        *,
        store: Store,
        fleet_issuing_ca: x509.Certificate,
        clock: Clock,
        device_id_source: str = "cn",
        skew: dt.timedelta = dt.timedelta(minutes=5),
    ) -> None:
        self._store = store
        self._clock = clock
        self._device_id_source = device_id_source
        self._skew = skew
        self._fleet = TrustDomain("fleet", (fleet_issuing_ca,), max_chain_depth=1, skew=skew)
        # Comparing encoded names is much cheaper than building Name objects,
        # and this runs on every enrollment.
        self._fleet_subject_der = fleet_issuing_ca.subject.public_bytes()
        self._manufacturers: TrustDomain | None = None
        self._manufacturers_at = 0.0

    def is_fleet_issued(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` claims the fleet issuing CA as issuer (verified later)."""
        return cert.issuer.public_bytes() == self._fleet_subject_der

    def operational(self, cert: x509.Certificate) -> OperationalIdentity:
        """A current operational certificate, verified against the fleet issuing CA."""
        verify_client_chain(cert, (), self._fleet, now=self._clock.now())
        return OperationalIdentity(device_id_from_certificate(cert, "cn"), cert)

    async def bootstrap(self, cert: x509.Certificate) -> BootstrapCredential:
        """A factory certificate, verified against the trusted manufacturer CAs."""
        domain = await self._manufacturer_domain()
        verify_client_chain(cert, (), domain, now=self._clock.now())
        return BootstrapCredential(
            device_id=device_id_from_certificate(cert, self._device_id_source),
            sha256=sha256_fingerprint(cert),
            manufacturer=cert.issuer.rfc4514_string()[:200],
        )

    async def token(self, device_id: str, token: str) -> TokenCredential:
        """A one-time token, used up by this call."""
        try:
            device_id = validate_device_id(device_id)
        except DeviceIdInvalid as exc:
            raise TokenInvalid("unknown device or token") from exc
        await self._store.consume_enrollment_token(
            device_id, token_sha256(token), self._clock.now()
        )
        return TokenCredential(device_id)

    async def _manufacturer_domain(self) -> TrustDomain:
        fresh = time.monotonic() - self._manufacturers_at < MANUFACTURER_CACHE_SECONDS
        # An empty list is never cached: the first `fleet trust` works at once.
        if self._manufacturers is None or not self._manufacturers.anchors or not fresh:
            cas = await self._store.list_manufacturer_cas()
            anchors = tuple(cert for ca in cas for cert in load_certificates_pem(ca.pem.encode()))
            # IDevIDs often carry no EKU; their purpose is fixed by the domain.
            self._manufacturers = TrustDomain(
                "manufacturer", anchors, skew=self._skew, require_client_auth_eku=False
            )
            self._manufacturers_at = time.monotonic()
        return self._manufacturers
