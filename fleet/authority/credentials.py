"""Who is asking: turn what a device presented into a verified credential.

Each credential is checked against its own trust domain only (DESIGN.md §2):
bootstrap certificates against the trusted manufacturer CAs, operational
certificates against the fleet issuing CAs (all of a rotation), tokens against their stored hash.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Sequence

from cryptography import x509

from fleet.authority.issuers import LiveIssuers
from fleet.kernel.chain import TrustDomain, verify_client_chain
from fleet.kernel.clock import Clock
from fleet.kernel.device_id import device_id_from_certificate, validate_device_id
from fleet.kernel.errors import ConfigError, DeviceIdInvalid, TokenInvalid
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import load_certificates_pem
from fleet.policy.enrollment import BootstrapCredential, TokenCredential
from fleet.records import Manufacturer, ManufacturerCA
from fleet.store.protocol import Store
from fleet.tokens import token_sha256

# Trusting a new manufacturer takes effect within this many seconds on every
# worker, without a store read on every enrollment.
log = logging.getLogger(__name__)

MANUFACTURER_CACHE_SECONDS = 2.0
MISSING_MANUFACTURER_ISSUER = (
    "if it is an intermediate CA below a trusted manufacturer root, import it with "
    "`fleet trust add-intermediate CA.pem`; if it is the manufacturer's root, "
    "`fleet trust add-manufacturer CA.pem`"
)


@dataclasses.dataclass(frozen=True, slots=True)
class OperationalIdentity:
    device_id: str
    certificate: x509.Certificate


class Credentials:
    def __init__(
        self,
        *,
        store: Store,
        fleet_issuing_ca: x509.Certificate | LiveIssuers,
        clock: Clock,
        device_id_source: str = "cn",
        skew: dt.timedelta = dt.timedelta(minutes=5),
        max_chain_depth: int = 3,
    ) -> None:
        self._store = store
        self._clock = clock
        self._device_id_source = device_id_source
        self._skew = skew
        self._max_chain_depth = max_chain_depth
        # A fixed CA (tests, tools) or the server's live set, which rotations swap.
        self._issuers = fleet_issuing_ca
        self._fleet_generation = -1
        self._fleet = TrustDomain("fleet", (), max_chain_depth=1, skew=skew)
        self._fleet_subjects: frozenset[bytes] = frozenset()
        self._fleet_domain()
        self._manufacturers: TrustDomain | None = None
        self._intermediates: tuple[x509.Certificate, ...] = ()
        self._manufacturers_at = 0.0
        self._anchor_names: dict[str, str] = {}  # manufacturer CA fingerprint -> trusted name

    def _fleet_domain(self) -> TrustDomain:
        """Every trusted issuing CA (current, next, retiring) as one trust domain."""
        if isinstance(self._issuers, LiveIssuers):
            generation, trusted = self._issuers.now.generation, self._issuers.now.trusted
        else:
            generation, trusted = 0, (self._issuers,)
        if generation != self._fleet_generation:
            self._fleet = TrustDomain("fleet", trusted, max_chain_depth=1, skew=self._skew)
            # Comparing encoded names is much cheaper than building Name objects,
            # and this runs on every enrollment.
            self._fleet_subjects = frozenset(ca.subject.public_bytes() for ca in trusted)
            self._fleet_generation = generation
        return self._fleet

    def is_fleet_issued(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` claims a fleet issuing CA as issuer (verified later)."""
        self._fleet_domain()
        return cert.issuer.public_bytes() in self._fleet_subjects

    def operational(self, cert: x509.Certificate) -> OperationalIdentity:
        """A current operational certificate, verified against the fleet issuing CAs."""
        verify_client_chain(cert, (), self._fleet_domain(), now=self._clock.now())
        return OperationalIdentity(device_id_from_certificate(cert, "cn"), cert)

    async def bootstrap(
        self, cert: x509.Certificate, presented: Sequence[x509.Certificate] = ()
    ) -> BootstrapCredential:
        """A factory certificate, verified against the trusted manufacturer CAs.

        Intermediate CAs come from the certificates the client sent in its
        TLS handshake (``presented``, where the TLS layer shows them) and
        from the admin's intermediate pool; either way the path must end at
        a trusted manufacturer root, within ``max_chain_depth``.
        """
        domain = await self._manufacturer_domain()
        intermediates = (*presented, *self._intermediates)
        chain = verify_client_chain(cert, intermediates, domain, now=self._clock.now())
        anchor = sha256_fingerprint(chain[-1])
        return BootstrapCredential(
            device_id=device_id_from_certificate(cert, self._device_id_source),
            sha256=sha256_fingerprint(cert),
            manufacturer=cert.issuer.rfc4514_string()[:200],
            anchor=Manufacturer(anchor, self._anchor_names.get(anchor, "")),
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
            cas = [(ca, stored_certificates(ca, "trusted manufacturer CA"))
                   for ca in await self._store.list_manufacturer_cas()]  # fmt: skip
            anchors = tuple(cert for _, certs in cas for cert in certs)
            self._anchor_names = {
                sha256_fingerprint(c): ca.name for ca, certs in cas for c in certs
            }
            pool = await self._store.list_manufacturer_intermediates()
            self._intermediates = tuple(
                cert for ca in pool for cert in stored_certificates(ca, "manufacturer intermediate")
            )
            # IDevIDs often carry no EKU; their purpose is fixed by the domain.
            self._manufacturers = TrustDomain(
                "manufacturer",
                anchors,
                max_chain_depth=self._max_chain_depth,
                skew=self._skew,
                require_client_auth_eku=False,
                missing_issuer_hint=MISSING_MANUFACTURER_ISSUER,
            )
            self._manufacturers_at = time.monotonic()
        return self._manufacturers


def stored_certificates(ca: ManufacturerCA, what: str) -> list[x509.Certificate]:
    """The certificates of a stored CA record; none, loudly, when its PEM does not decode
    (a row edited by hand): only that manufacturer's devices are refused (an unknown
    issuer), instead of every bootstrap enrollment failing on it."""
    try:
        return load_certificates_pem(ca.pem.encode())
    except ConfigError as exc:
        log.error(
            "the %s %s (%s) in the store cannot be read, so it trusts nothing: %s",
            what, ca.sha256, ca.name, exc.message,
        )  # fmt: skip
        return []
