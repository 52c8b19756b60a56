"""Publishing the issuing CA's CRL: built from the store, re-signed on every revocation.

Brokers read the CRL as their last line of defence (Mosquitto ``crlfile``),
and an expired CRL makes them refuse the whole fleet, so the publisher
re-signs it whenever the revocation feed moves and, independently, whenever
it is older than ``refresh`` — far ahead of its nextUpdate.

CRL numbers come from the store's one counter (fleet.store.crl_numbers), shared
by every node and worker: each CRL is built from the revocation state at one
feed sequence, and the store numbers it only if no CRL of newer content has a
number yet, so a higher number never has older content. Numbers stay at or
above the signing time in microseconds since the epoch (how they were chosen
before), so they continue above every CRL already published.

Every CRL signed is also kept in the store, and a publisher whose CRL is behind
another's only by number adopts the kept one rather than signing again: with
several workers answering in turn, each would otherwise find the other's number
higher and sign a new one on every request (reading every revoked record, and
making every broker reinstall the CRL). It signs only when the kept CRL is
missing, lacks a revocation the feed has, is due for refresh, or does not verify.
A CRL is due for refresh a little later in the workers that adopted it than in
the one that signed it, so at each refresh one signs and the others adopt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from typing import Protocol

from cryptography import x509

from fleet.kernel.clock import Clock
from fleet.kernel.crl_check import check_crl, crl_invalid, crl_number
from fleet.kernel.errors import (
    ConfigError,
    PolicyError,
    ServerUnavailable,
    StoreConflict,
    StoreError,
)
from fleet.pki.ca import CertifiedKey
from fleet.pki.crl import RevokedEntry, build_crl, crl_to_der, crl_to_pem
from fleet.records import CertificateRecord, RevocationReason
from fleet.store.crl_numbers import StoredCrl
from fleet.store.protocol import CertificateLedger, CrlNumbers, RevocationFeed

log = logging.getLogger("fleet.crl")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# After a failed regeneration (store down), try again this soon.
RETRY_SECONDS = 5.0
# The background loop re-checks the CRL's age at least this often, so a clock
# jump (suspend, NTP step) cannot leave it sleeping past the refresh time.
MAX_SLEEP_SECONDS = 60.0
# Re-reads of the content when CRLs of newer content were numbered meanwhile.
NUMBERING_ATTEMPTS = 10


class CrlSource(CertificateLedger, RevocationFeed, CrlNumbers, Protocol):
    """What the publisher reads and allocates in the store."""


@dataclasses.dataclass(frozen=True, slots=True)
class SignedCrl:
    """One signed CRL in both encodings, with the fields callers look at."""

    der: bytes
    pem: bytes
    this_update: dt.datetime  # whole seconds, as in the CRL
    next_update: dt.datetime
    number: int
    revoked_count: int
    # The precise clock reading the number derives from; for a CRL adopted from the
    # store its thisUpdate (whole seconds: refreshed up to a second early).
    signed_at: dt.datetime
    feed_seq: int  # the revocation feed position its content is exactly


def reason_flag(reason: RevocationReason | None) -> x509.ReasonFlags | None:
    """The CRL/OCSP reason for a stored revocation reason (same RFC 5280 names)."""
    return None if reason is None else x509.ReasonFlags(reason.value)


def crl_number_at(when: dt.datetime) -> int:
    """The CRL number of a CRL signed at ``when``: microseconds since the epoch."""
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def validate_crl(
    der: bytes, issuer: x509.Certificate, *, now: dt.datetime, min_remaining: dt.timedelta
) -> x509.CertificateRevocationList:
    """Parse ``der`` back and check it is a current CRL signed by ``issuer`` (the
    kernel's CRL rule, as the Mosquitto sidecar applies it). Raises PolicyError
    (``crl_invalid``)."""
    return check_crl(der, issuer, now=now, min_remaining=min_remaining, hint=_NOTHING_WRITTEN)


_NOTHING_WRITTEN = "Nothing was written; fix the cause and run the command again."


class CrlPublisher:
    """The issuing CA's current CRL, regenerated from the store when it changes or ages."""

    def __init__(
        self,
        store: CrlSource,
        issuer: CertifiedKey,
        clock: Clock,
        next_update: dt.timedelta,
        refresh: dt.timedelta,
        *,
        max_sleep: float = MAX_SLEEP_SECONDS,
        retry: float = RETRY_SECONDS,
    ) -> None:
        if next_update <= dt.timedelta(0) or refresh <= dt.timedelta(0):
            raise ConfigError("CRL next update and refresh intervals must be positive")
        if refresh >= next_update:
            raise ConfigError("the CRL refresh interval must be shorter than its validity")
        self._store = store
        self._issuer = issuer
        self._clock = clock
        self._next_update = next_update
        self._refresh = refresh
        # A CRL signed elsewhere is refreshed this much later than its signer
        # refreshes it, so the others adopt the signer's new one instead of every
        # worker signing at the same moment (they all adopted the same CRL).
        self._adopter_delay = min(refresh / 10, (next_update - refresh) / 2)
        self._signed_here: int | None = None  # the number this publisher last signed
        self._max_sleep = max_sleep
        self._retry = retry
        self._current: SignedCrl | None = None
        # The newest feed sequence the follower has seen (the CRL should cover it),
        # and whether something changed that no sequence describes (feed lost).
        self._seen_seq = 0
        self._unknown_change = False
        # When signing on a request last failed: until ``retry`` later, requests
        # serve the previous CRL (while valid) instead of each trying again.
        self._failed_at: float | None = None
        # One sequence of CRL numbers per issuing key, shared by every node and worker.
        self._scope = crl_scope(issuer.certificate)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        # serial -> whether the fleet issuing CA issued it. Revoked certificates
        # never change, so each stored PEM is parsed once per process.
        self._ours: dict[int, bool] = {}

    @property
    def latest(self) -> SignedCrl | None:
        """The last CRL signed, without building or refreshing one."""
        return self._current

    async def current(self) -> SignedCrl:
        """The current CRL, built on first use and rebuilt when outdated.

        Serving does not depend on the background task: an outdated CRL is
        rebuilt here. If that fails (store down, token unavailable) the previous
        CRL is returned while it is still valid, and for ``retry`` seconds no
        request tries again (each attempt reads every revoked record).
        """
        crl = self._current
        try:
            if crl is not None and (self._backing_off(crl) or not await self._outdated(crl)):
                return crl
            async with self._lock:
                latest = self._current
                if latest is not None and not await self._outdated(latest):
                    return latest  # signed by someone else while we waited
                signed = await self._adopt_or_sign(await self._store.feed_head())
                self._failed_at = None
                return signed
        except (StoreError, ServerUnavailable) as exc:
            if crl is None or crl.next_update <= self._clock.now():
                raise
            self._failed_at = time.monotonic()
            log.warning(
                "CRL refresh failed (%s); serving CRL #%d until it can be rebuilt",
                exc.message, crl.number,
            )  # fmt: skip
            return crl

    def _backing_off(self, crl: SignedCrl) -> bool:
        """A recent refresh failed and ``crl`` may still be served."""
        failed = self._failed_at
        if failed is None or time.monotonic() - failed >= self._retry:
            return False
        return crl.next_update > self._clock.now()

    async def _outdated(self, crl: SignedCrl) -> bool:
        """Too old to serve: past ``refresh``; another node or worker has numbered a
        newer CRL (a client alternating nodes must never see the number go back: the
        kept one is adopted when it will do, see ``_adopt_or_sign``); or
        the feed has a revocation it lacks. The last makes what is served current at
        each request whatever process revoked, so the background follower only signs
        ahead of time and may learn of other processes' revocations slowly."""
        if self._stale(crl):
            return True
        if crl.number < await self._store.latest_crl_number(self._scope):
            return True
        return crl.feed_seq < await self._store.feed_head()

    async def _adopt_or_sign(self, needed_seq: int) -> SignedCrl:
        """The CRL kept in the store when it will do (covers ``needed_seq``, fresh,
        newer than ours), else a new one signed: a CRL behind only by number is
        not signed again. Called under the lock."""
        adopted = await self._adopt(needed_seq)
        return adopted if adopted is not None else await self._sign_now()

    async def _adopt(self, needed_seq: int) -> SignedCrl | None:
        try:
            kept = await self._store.newest_signed_crl(self._scope)
        except StoreError as exc:
            # A damaged record must not stop signing; a store that is down fails that too.
            log.warning("the stored CRL is unreadable (%s); signing one", exc.message)
            return None
        current = self._current
        if kept is None or kept.content_seq < needed_seq:
            return None
        if current is not None and kept.number <= current.number:
            return None  # ours is that one (or newer): numbered after it, only signing helps
        try:
            # Parsing and verifying a large CRL takes a while; keep the event loop serving.
            adopted = await asyncio.to_thread(self._load, kept)
        except PolicyError as exc:
            log.warning("stored CRL #%d not usable (%s); signing one", kept.number, exc.message)
            return None
        if self._stale(adopted):
            return None
        self._current = adopted
        log.info("serving CRL #%d, signed by another node or worker", adopted.number)
        return adopted

    def _load(self, kept: StoredCrl) -> SignedCrl:
        """The ``SignedCrl`` of a CRL kept in the store, checked as one read from a
        file is: parses, names and verifies with our issuing CA, not expired."""
        now = self._clock.now()
        crl = validate_crl(
            kept.der, self._issuer.certificate, now=now, min_remaining=dt.timedelta(0)
        )
        number = crl_number(crl)
        if number != kept.number:
            raise crl_invalid(f"the CRL's number is {number}, stored as #{kept.number}")
        next_update = crl.next_update_utc
        assert next_update is not None  # validate_crl refuses a CRL without one
        return SignedCrl(
            der=kept.der,
            pem=crl_to_pem(crl),
            this_update=crl.last_update_utc,
            next_update=next_update,
            number=number,
            revoked_count=len(crl),
            signed_at=crl.last_update_utc,
            feed_seq=kept.content_seq,
        )

    async def regenerate(self) -> SignedCrl:
        """Build and sign a CRL from the store now, and make it the current one."""
        async with self._lock:
            return await self._sign_now()

    async def _sign_now(self) -> SignedCrl:
        for _ in range(NUMBERING_ATTEMPTS):
            # The content is exactly the snapshot's revoked serials (one feed
            # sequence); revoked records never change, so reading them after
            # the snapshot and keeping those serials gives that content.
            snapshot = await self._store.revocation_snapshot()
            records = [r for r in await self._store.list_revoked() if r.serial in snapshot.serials]
            now = self._clock.now()
            number = await self._store.allocate_crl_number(
                self._scope, snapshot.seq, crl_number_at(now)
            )
            if number is not None:
                break
        else:
            raise StoreConflict(
                f"no CRL number after {NUMBERING_ATTEMPTS} attempts: newer revocations kept "
                "being numbered by other workers first"
            )
        # An expired certificate fails validation anyway. RFC 5280 5.3 lets its
        # entry go once one scheduled CRL issued after the expiry listed it;
        # kept until a whole nextUpdate period has passed, it was on several.
        # With short-lived certificates this keeps the CRL small forever.
        keep_after = now - self._next_update
        entries = [
            self._entry(r) for r in records if r.not_after > keep_after and self._issued_by_us(r)
        ]
        # Signing a large CRL takes a while; keep the event loop serving.
        signed = await asyncio.to_thread(self._sign, entries, now, number, snapshot.seq)
        self._signed_here = number
        try:  # for the other nodes and workers to serve instead of signing their own
            await self._store.keep_signed_crl(
                self._scope, StoredCrl(number, snapshot.seq, signed.der)
            )
        except StoreError as exc:
            # Served anyway: the others then sign their own (their number is behind).
            log.warning("CRL #%d could not be kept in the store: %s", number, exc.message)
        current = self._current
        if current is None or current.number < number:  # a slower signing never wins
            self._current = signed
        log.info(
            "signed CRL #%d listing %d revoked certificate(s), next update %s",
            number,
            signed.revoked_count,
            signed.next_update.isoformat(),
        )
        return signed

    def _sign(
        self, entries: list[RevokedEntry], now: dt.datetime, number: int, feed_seq: int
    ) -> SignedCrl:
        crl = build_crl(
            self._issuer, entries, now=now, next_update_in=self._next_update, crl_number=number
        )
        next_update = crl.next_update_utc
        assert next_update is not None  # build_crl always sets it
        return SignedCrl(
            der=crl_to_der(crl),
            pem=crl_to_pem(crl),
            this_update=crl.last_update_utc,
            next_update=next_update,
            number=number,
            revoked_count=len(entries),
            signed_at=now,
            feed_seq=feed_seq,
        )

    @staticmethod
    def _entry(record: CertificateRecord) -> RevokedEntry:
        return RevokedEntry(
            serial=record.serial,
            # Revocations without a time cannot happen; the issue time is the safe floor.
            revoked_at=record.revoked_at or record.issued_at,
            reason=reason_flag(record.revocation_reason),
        )

    def _issued_by_us(self, record: CertificateRecord) -> bool:
        """Listed unless known to be another CA's: a revoked serial whose stored
        certificate cannot be read stays on the CRL (dropping it would re-admit it
        wherever the CRL is enforced; listing another CA's serial harms nothing)."""
        ours = self._ours.get(record.serial)
        if ours is None:
            ours = issued_by(record, self._issuer.certificate) is not False
            self._ours[record.serial] = ours
        return ours

    def _stale(self, crl: SignedCrl) -> bool:
        return self._clock.now() >= self._refresh_at(crl)

    def _refresh_at(self, crl: SignedCrl) -> dt.datetime:
        if crl.number == self._signed_here:
            return crl.signed_at + self._refresh
        return crl.signed_at + self._refresh + self._adopter_delay

    def notify_changed(self) -> None:
        """Ask the background loop to regenerate soon (events coalesce)."""
        self._unknown_change = True
        self._changed.set()

    async def _sign_if_behind(self) -> SignedCrl:
        """Sign unless the current CRL already covers what the follower saw (a request
        may have signed it meanwhile: the same content is not signed twice)."""
        async with self._lock:
            crl = self._current
            if crl is not None and not self._stale(crl) and not self._behind(crl):
                return crl
            self._unknown_change = False
            # The feed head too: a change no sequence describes (feed lost) is in it.
            needed = max(self._seen_seq, await self._store.feed_head())
            return await self._adopt_or_sign(needed)

    def _behind(self, crl: SignedCrl) -> bool:
        """Whether the follower saw a change this CRL does not cover (a request may
        have re-signed already: then the loop does not sign the same content again)."""
        return self._unknown_change or crl.feed_seq < self._seen_seq

    async def run(self) -> None:
        """Forever: regenerate on every revocation feed event and when the CRL ages.

        Follows ``store.follow_feed`` from the feed head read at start (the
        CRL signed right after that read covers everything before it). Store
        failures are logged and retried; the task only ends when cancelled.
        """
        follower = asyncio.create_task(self._follow(), name="crl-feed-follower")
        try:
            while True:
                try:
                    crl = self._current
                    if crl is None or self._changed.is_set() or self._stale(crl):
                        self._changed.clear()
                        crl = await self._sign_if_behind()
                    due = self._refresh_at(crl) - self._clock.now()
                    wait = min(due.total_seconds(), self._max_sleep)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), max(wait, 0.0))
                except Exception:
                    # Never let the task die: an unrefreshed CRL expires and
                    # brokers then refuse the whole fleet.
                    self.notify_changed()  # whatever changed is still pending
                    log.exception("CRL regeneration failed; retrying in %.0fs", self._retry)
                    await asyncio.sleep(self._retry)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _follow(self) -> None:
        after: int | None = None
        while True:
            try:
                if after is None:
                    after = await self._store.feed_head()
                    # Everything up to the head is in the CRL signed after this read.
                    self._seen_seq = max(self._seen_seq, after)
                    self._changed.set()
                async for event in self._store.follow_feed(after):
                    after = event.seq
                    self._seen_seq = max(self._seen_seq, event.seq)
                    self._changed.set()
            except Exception as exc:  # the feed must be followed again, whatever broke
                log.warning("revocation feed unavailable, retrying in %.0fs: %s", self._retry, exc)
                self.notify_changed()
                await asyncio.sleep(self._retry)


def crl_scope(issuer: x509.Certificate) -> str:
    """The store's CRL number sequence of ``issuer``: its key (a re-certified CA
    keeps its sequence; another CA has its own)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return "ski:" + ski.digest.hex()
    except x509.ExtensionNotFound:
        return "subject:" + issuer.subject.rfc4514_string()


def issued_by(record: CertificateRecord, issuer: x509.Certificate) -> bool | None:
    """Whether the stored certificate was issued by ``issuer`` (name and key identifier);
    None when its stored PEM does not parse (a record damaged or edited by hand): the
    caller fails closed its own way (a CRL lists it, OCSP never answers good)."""
    try:
        cert = x509.load_pem_x509_certificate(record.pem.encode())
    except ValueError:
        log.error("stored certificate %x does not parse; its issuer is unknown", record.serial)
        return None
    return certificate_issued_by(cert, issuer)


def certificate_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``issued_by`` for a parsed certificate: the issuer's name, and its key id when both
    carry one (issuing CAs of a rotation may share a name; their keys differ)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return True  # the name matched; nothing more to compare
    return aki.key_identifier is None or aki.key_identifier == ski.digest
