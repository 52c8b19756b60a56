"""The OCSP responder use-case: a DER request in, a DER response out, status from the store.

Every answer is a DER OCSPResponse, even for garbage (RFC 6960 section 2.3):

* ``successful``, signed by the issuing CA that issued the certificate (any
  trusted one: current, next or retiring during a rotation): ``good``, ``revoked`` (time and
  reason) or ``unknown`` (a serial this CA never recorded);
* ``malformedRequest`` for anything that does not parse as one request;
* ``unauthorized`` for a certificate of another issuer;
* for the fleet root, when its key is online: ``good`` for the server TLS
  certificates it issued (so a front end can staple an answer for its own
  certificate), ``unknown`` for any other serial;
* ``tryLater`` when the store cannot be read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from fleet.authority.crl import issued_by, reason_flag
from fleet.authority.issuers import LiveIssuers
from fleet.kernel.clock import Clock
from fleet.kernel.errors import CertificateNotFound, ConfigError, PolicyError, StoreError
from fleet.pki.ca import CertifiedKey
from fleet.pki.ocsp import (
    CertStatus,
    Good,
    Revoked,
    Unknown,
    build_ocsp_response,
    malformed_response,
    parse_ocsp_request,
    request_matches_issuer,
    unauthorized_response,
)
from fleet.records import CertificateStatus
from fleet.store.protocol import CertificateLedger

log = logging.getLogger("fleet.ocsp")


@dataclasses.dataclass(frozen=True, slots=True)
class OcspAnswer:
    """A DER OCSP response and what it said, for logs and metrics."""

    der: bytes
    outcome: str  # good | revoked | unknown | malformed | unauthorized | try_later
    serial: int | None = None


def try_later_response() -> bytes:
    """The unsigned "tryLater" answer, for when the store cannot be read."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER
    ).public_bytes(serialization.Encoding.DER)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerCertificates:
    """The fleet root (with its key) and the serials of the server certificates it issued."""

    root: CertifiedKey
    serials: frozenset[int]


class OcspResponder:
    """Answers OCSP requests about the fleet issuing CA's certificates (and the servers')."""

    def __init__(
        self,
        store: CertificateLedger,
        issuer: CertifiedKey | LiveIssuers,
        clock: Clock,
        next_update: dt.timedelta,
        servers: ServerCertificates | None = None,
    ) -> None:
        if next_update <= dt.timedelta(0):
            raise ConfigError("the OCSP next update interval must be positive")
        self._store = store
        # Every trusted issuing CA (current, next, retiring) answers for its own
        # certificates, signed with its own key.
        self._issuers = issuer if isinstance(issuer, LiveIssuers) else LiveIssuers.of(issuer)
        self._clock = clock
        self._next_update = next_update
        self._servers = servers

    async def respond(self, der: bytes) -> OcspAnswer:
        try:
            request = parse_ocsp_request(der)
        except PolicyError as exc:
            log.debug("malformed OCSP request: %s", exc.message)
            return OcspAnswer(malformed_response(), "malformed")
        serial = request.serial_number
        servers = self._servers
        if servers is not None and request_matches_issuer(request, servers.root.certificate):
            server_status: CertStatus = Good() if serial in servers.serials else Unknown()
            response = build_ocsp_response(
                request,
                status=server_status,
                issuer=servers.root,
                now=self._clock.now(),
                next_update_in=self._next_update,
                include_signer=True,
            )
            return OcspAnswer(response, "good" if serial in servers.serials else "unknown", serial)
        issuer = next(
            (ca for ca in self._issuers.now.all if request_matches_issuer(request, ca.certificate)),
            None,
        )
        if issuer is None:
            return OcspAnswer(unauthorized_response(), "unauthorized", serial)
        try:
            status = await self.status(serial, issuer)
        except StoreError as exc:
            log.error("OCSP status lookup failed: %s", exc.diagnostics())
            return OcspAnswer(try_later_response(), "try_later", serial)
        response = build_ocsp_response(
            request,
            status=status,
            issuer=issuer,
            now=self._clock.now(),
            next_update_in=self._next_update,
        )
        outcome = {Good: "good", Revoked: "revoked", Unknown: "unknown"}[type(status)]
        return OcspAnswer(response, outcome, serial)

    async def status(self, serial: int, issuer: CertifiedKey | None = None) -> CertStatus:
        """``serial``'s status as ``issuer``'s (default: the current CA's) responder states it."""
        issuer = issuer or self._issuers.now.current
        try:
            record = await self._store.get_certificate(serial)
        except CertificateNotFound:
            return Unknown()
        if not issued_by(record, issuer.certificate):
            # The same serial from another CA (e.g. before a rotation), or a stored
            # certificate that does not parse: never "good".
            return Unknown()
        if record.status is CertificateStatus.REVOKED:
            return Revoked(
                revoked_at=record.revoked_at or record.issued_at,
                reason=reason_flag(record.revocation_reason),
            )
        return Good()
