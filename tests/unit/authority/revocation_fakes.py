"""A tiny in-memory stand-in for the parts of the Store that CRL/OCSP use."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.kernel.errors import CertificateNotFound, StoreUnavailable
from fleet.pki.ca import CertifiedKey, authority_key_identifier, certificate_to_pem
from fleet.pki.keys import signing_hash
from fleet.records import (
    CertificateRecord,
    CertificateStatus,
    RevocationEvent,
    RevocationKind,
    RevocationReason,
    RevocationSnapshot,
)
from fleet.store.crl_numbers import CrlCounter, StoredCrl, next_crl_number, replaces


def device_certificate(issuer: CertifiedKey, serial: int, now: dt.datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"dev-{serial}")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
    )
    return builder.sign(issuer.private_key, signing_hash(issuer.private_key))


class FakeStore:
    def __init__(self) -> None:
        self.certs: dict[int, CertificateRecord] = {}
        self.feed: list[RevocationEvent] = []
        self.appended = asyncio.Event()
        self.down = False
        self.list_calls = 0
        self.crl_counters: dict[str, CrlCounter] = {}
        self.signed_crls: dict[str, StoredCrl] = {}

    def add(self, issuer: CertifiedKey, serial: int, now: dt.datetime) -> x509.Certificate:
        cert = device_certificate(issuer, serial, now)
        self.certs[serial] = CertificateRecord(
            serial=serial,
            device_id=f"dev-{serial}",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            issued_at=now,
            pem=certificate_to_pem(cert).decode(),
        )
        return cert

    def revoke(self, serial: int, reason: RevocationReason, now: dt.datetime) -> None:
        record = self.certs[serial]
        self.certs[serial] = CertificateRecord(
            serial=record.serial,
            device_id=record.device_id,
            not_before=record.not_before,
            not_after=record.not_after,
            issued_at=record.issued_at,
            pem=record.pem,
            status=CertificateStatus.REVOKED,
            revoked_at=now,
            revocation_reason=reason,
        )
        event = RevocationEvent(
            len(self.feed) + 1, RevocationKind.CERTIFICATE, record.device_id, (serial,), reason, now
        )
        self.feed.append(event)
        self.appended.set()

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("fake store is down")

    async def list_revoked(self) -> list[CertificateRecord]:
        self._check()
        self.list_calls += 1
        return sorted(
            (r for r in self.certs.values() if r.status is CertificateStatus.REVOKED),
            key=lambda r: r.serial,
        )

    async def revocation_snapshot(self) -> RevocationSnapshot:
        self._check()
        revoked = [r for r in self.certs.values() if r.status is CertificateStatus.REVOKED]
        return RevocationSnapshot(
            seq=len(self.feed),
            serials=frozenset(r.serial for r in revoked),
            device_ids=frozenset(),
        )

    async def latest_crl_number(self, scope: str) -> int:
        self._check()
        counter = self.crl_counters.get(scope)
        return 0 if counter is None else counter.number

    async def allocate_crl_number(self, scope: str, content_seq: int, floor: int) -> int | None:
        self._check()
        counter = next_crl_number(self.crl_counters.get(scope), content_seq, floor)
        if counter is None:
            return None
        self.crl_counters[scope] = counter
        return counter.number

    async def keep_signed_crl(self, scope: str, crl: StoredCrl) -> bool:
        self._check()
        kept = self.signed_crls.get(scope)
        if not replaces(None if kept is None else kept.number, crl):
            return False
        self.signed_crls[scope] = crl
        return True

    async def newest_signed_crl(self, scope: str) -> StoredCrl | None:
        self._check()
        return self.signed_crls.get(scope)

    async def get_certificate(self, serial: int) -> CertificateRecord:
        self._check()
        try:
            return self.certs[serial]
        except KeyError:
            raise CertificateNotFound(f"no certificate {serial:x}") from None

    async def feed_head(self) -> int:
        self._check()
        return len(self.feed)

    async def follow_feed(self, after_seq: int) -> AsyncGenerator[RevocationEvent, None]:
        last = after_seq
        while True:
            self.appended.clear()
            for event in self.feed[last:]:
                yield event
                last = event.seq
            await self.appended.wait()
