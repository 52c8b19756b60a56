"""The broker's copy of the revocation state, fed by the store's revocation feed.

Start: one consistent snapshot (``revocation_snapshot``), then follow events
after its sequence (``follow_feed``). Two loops keep it true:

* the *follower* applies events as the feed delivers them (Redis pub/sub or the
  followed SQLite table) — this is the fast path that kicks live sessions;
* the *prober* asks for ``feed_head`` every ``probe_interval`` seconds. A
  successful answer is "contact" (what staleness is measured from); a head
  ahead of us means events were missed, so they are read by sequence
  (``feed_since``); a head *behind* us means the feed was reset (a Redis without
  persistence restarted), so a fresh snapshot is taken.

Revocation is permanent (DESIGN.md §2), so the cache only ever grows: a
snapshot is merged into what is known, never replaces it. A restarted,
emptied Redis therefore cannot let a revoked device back in.

Across restarts of the broker, that takes a file (``CacheSettings.snapshot_file``):
loaded before the store is asked anything, written back after every change
(broker_plugins.revocation_persistence). What it lists is refused as revoked,
but it is not contact: until the store has answered once the cache stays unusable.

Staleness policy: after ``max_staleness`` seconds without contact the cache
is *unusable* when failing closed (every connect is refused with
``revocation_state_stale``) and still usable when failing open. Before the
first snapshot nothing is known and the cache is unusable whatever the policy.
Live sessions are not closed for staleness: they were admitted on good data.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from broker_plugins.revocation_metrics import CacheMetrics
from broker_plugins.revocation_persistence import SnapshotPersistence
from broker_plugins.snapshot import RevocationState
from fleet.kernel.errors import FleetError, StoreRecordInvalid
from fleet.records import (
    RevocationEvent,
    RevocationKind,
    RevocationReason,
    RevocationSnapshot,
)
from fleet.store.broker_positions import check_broker_name, report_position
from fleet.store.protocol import BrokerFeed

log = logging.getLogger("fleet.broker.revocation")

RevokedCallback = Callable[[RevocationEvent], None]

_PAGE = 1000
_RETRY_MAX_SECONDS = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class CacheSettings:
    max_staleness: float = 30.0  # seconds without contact before the policy applies
    fail_open: bool = False
    probe_interval: float | None = None  # default: max_staleness / 4, at most 2 s
    # Where the revocation state survives restarts (None: memory only).
    snapshot_file: Path | None = None
    snapshot_coalesce: float = 0.2  # seconds; bounds how late a revocation reaches the disk
    # The stable name this broker reports its feed position under (the admin console
    # shows each broker's lag; fleet.store.broker_positions); None: no reports.
    report_as: str | None = None
    report_every: float = 10.0  # seconds between reports while the position holds still

    def __post_init__(self) -> None:
        if not self.max_staleness > 0:
            raise ValueError("max_staleness must be positive")
        if not self.snapshot_coalesce >= 0:
            raise ValueError("snapshot_coalesce must not be negative")
        if self.probe_interval is not None and not self.probe_interval > 0:
            raise ValueError("probe_interval must be positive")
        if self.report_as is not None:
            check_broker_name(self.report_as)

    @property
    def effective_probe_interval(self) -> float:
        if self.probe_interval is not None:
            return self.probe_interval
        return min(self.max_staleness / 4, 2.0)


class RevocationCache:
    """Revoked serials and devices as the feed says, plus how fresh that is.

    Implements ``fleet.kernel.admission.RevocationView``.
    """

    def __init__(
        self,
        store: BrokerFeed,
        settings: CacheSettings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.settings = settings or CacheSettings()
        self._monotonic = monotonic
        self._serials: set[int] = set()
        self._devices: set[str] = set()
        self._seq = 0
        self._loaded = False
        # The last event applied from the feed, and the one the prober checks the
        # store still holds at its sequence (a restarted store reuses sequences).
        self._last_event: RevocationEvent | None = None
        self._anchor: RevocationEvent | None = None
        self._unchecked: RevocationEvent | None = None  # first applied since the anchor
        self._last_contact: float | None = None
        self._callbacks: list[RevokedCallback] = []
        self._sync_lock = asyncio.Lock()
        self._follower: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._advanced = asyncio.Event()
        self._reported: tuple[int, float] | None = None  # (seq, monotonic) of the last report
        self.metrics = CacheMetrics(registry or CollectorRegistry(), self)
        self._persistence: SnapshotPersistence | None = None
        if self.settings.snapshot_file is not None:
            self._persistence = SnapshotPersistence(
                self.settings.snapshot_file,
                coalesce=self.settings.snapshot_coalesce,
                state=lambda: RevocationState(self._seq, set(self._serials), set(self._devices)),
                write_errors=self.metrics.snapshot_errors,
            )

    # -- RevocationView ---------------------------------------------------------
    def is_revoked(self, serial: int) -> bool:
        return serial in self._serials

    def is_device_revoked(self, device_id: str) -> bool:
        return device_id in self._devices

    def usable(self) -> bool:
        if not self._loaded:
            return False
        return self.settings.fail_open or self.staleness_seconds() <= self.settings.max_staleness

    # -- state ---------------------------------------------------------------------
    @property
    def seq(self) -> int:
        return self._seq

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def snapshot_pending(self) -> bool:
        """Changes applied that the snapshot file does not hold yet (a write in flight too)."""
        return self._persistence is not None and self._persistence.pending

    def staleness_seconds(self) -> float:
        """Seconds since the feed last answered (infinity before it ever did)."""
        if self._last_contact is None:
            return math.inf
        return max(0.0, self._monotonic() - self._last_contact)

    def on_revoked(self, callback: RevokedCallback) -> None:
        """Call ``callback(event)`` for every revocation applied from now on.

        Called synchronously in the event loop, right after the cache changed;
        it must not block. Revocations learnt from a snapshot (after a feed reset
        or at a resync) arrive as synthesised events with the snapshot's sequence.
        """
        self._callbacks.append(callback)

    # -- lifecycle -----------------------------------------------------------------
    async def start(self, *, initial_timeout: float | None = None) -> None:
        """Load the snapshot and start following.

        With ``initial_timeout`` the first snapshot is awaited at most that long
        (the cache stays unusable and keeps trying in the background when it
        times out); without, a store failure here raises.

        The snapshot file, if configured, is read first and written back once
        (ConfigError if it is damaged or cannot be written).
        """
        if self._persistence is not None:
            state = await self._persistence.load()
            if state is not None:
                self._serials |= state.serials
                self._devices |= state.devices
        if initial_timeout is None:
            await self._resnapshot("start")
        else:
            with contextlib.suppress(TimeoutError, FleetError, OSError):
                await asyncio.wait_for(self._resnapshot("start"), initial_timeout)
        if self._persistence is not None:
            await self._persistence.start()
        self._restart_follower()
        self._prober = asyncio.create_task(self._probe_loop(), name="revocation-prober")

    async def close(self) -> None:
        tasks = [t for t in (self._follower, self._prober) if t is not None]
        self._follower = self._prober = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._persistence is not None:
            await self._persistence.close()  # after the feed stopped: the last state

    async def wait_for_seq(self, seq: int, within: float) -> bool:
        """Wait until events up to ``seq`` are applied; False after ``within`` seconds."""
        deadline = self._monotonic() + within
        while self._seq < seq:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True

    def _mark_changed(self) -> None:
        if self._persistence is not None:
            self._persistence.mark_changed()

    # -- internals -----------------------------------------------------------------
    def _touch(self) -> None:
        self._last_contact = self._monotonic()

    def _notify_advanced(self) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        self._advanced.set()
        self._advanced = asyncio.Event()

    def _apply(self, event: RevocationEvent) -> bool:
        """Apply the next event; False if it is not the next one (a gap)."""
        if event.seq <= self._seq:
            return True  # already applied (the follower and the prober overlap)
        if event.seq != self._seq + 1:
            return False
        self._serials.update(event.serials)
        if event.kind is RevocationKind.DEVICE:
            self._devices.add(event.device_id)
        self._seq = event.seq
        self._last_event = event
        if self._unchecked is None:
            self._unchecked = event
        self._mark_changed()
        self.metrics.events.inc()
        self._emit(event)
        self._notify_advanced()
        return True

    def _emit(self, event: RevocationEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not stop revocation
                log.exception("revocation subscriber failed on event %s", event.seq)

    async def _resnapshot(self, cause: str) -> None:
        async with self._sync_lock:
            snapshot = await self._store.revocation_snapshot()
            self._touch()
            self._merge(snapshot, cause)

    def _merge(self, snapshot: RevocationSnapshot, cause: str) -> None:
        new_serials = snapshot.serials - self._serials
        new_devices = snapshot.device_ids - self._devices
        self._serials |= snapshot.serials
        self._devices |= snapshot.device_ids
        self._seq = snapshot.seq
        self._last_event = None
        self._anchor = None
        self._unchecked = None
        self._loaded = True
        self._mark_changed()
        self.metrics.resyncs.labels(cause=cause).inc()
        log.info(
            "revocation snapshot loaded (%s): seq %d, %d serials, %d devices",
            cause,
            snapshot.seq,
            len(self._serials),
            len(self._devices),
        )
        self._notify_advanced()
        if cause == "start":
            return  # nothing is connected yet: nobody to kick
        now = dt.datetime.now(dt.UTC)
        for device_id in sorted(new_devices):
            self._emit(
                RevocationEvent(
                    snapshot.seq,
                    RevocationKind.DEVICE,
                    device_id,
                    (),
                    RevocationReason.UNSPECIFIED,
                    now,
                )
            )
        if new_serials:
            self._emit(
                RevocationEvent(
                    snapshot.seq,
                    RevocationKind.CERTIFICATE,
                    "",
                    tuple(sorted(new_serials)),
                    RevocationReason.UNSPECIFIED,
                    now,
                )
            )
        self._notify_advanced()

    async def _catch_up(self) -> None:
        """Read missed events by sequence; a hole in the feed itself, or an event the
        store cannot read, means resnapshot (the snapshot comes from the revoked
        certificates and devices, not from the events)."""
        cause = "feed_hole"
        async with self._sync_lock:
            while True:
                try:
                    events = await self._store.feed_since(self._seq, limit=_PAGE)
                except StoreRecordInvalid as exc:
                    log.error("revocation feed after seq %d is unreadable: %s", self._seq, exc)
                    cause = "feed_damaged"
                    break
                for event in events:
                    if not self._apply(event):
                        break
                else:
                    if len(events) < _PAGE:
                        self._touch()  # caught up with what the store holds
                        return
                    continue
                break
        log.warning("revocation feed has a hole after seq %d; taking a snapshot", self._seq)
        await self._resnapshot(cause)
        self._restart_follower()

    def _restart_follower(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        self._follower = asyncio.create_task(self._follow_loop(), name="revocation-follower")

    async def _follow_loop(self) -> None:
        backoff = 0.05
        while True:
            try:
                async for event in self._store.follow_feed(self._seq):
                    if self._apply(event):
                        self._touch()
                    else:
                        self.metrics.resyncs.labels(cause="gap").inc()
                        await self._catch_up()
                    backoff = 0.05
            except asyncio.CancelledError:
                raise
            except StoreRecordInvalid as exc:
                # Following again would stop at the same event: read past it instead.
                self.metrics.errors.inc()
                log.error("revocation feed follow stopped at an unreadable event: %s", exc)
                await self._catch_up()
            except Exception as exc:  # the feed failing must never stop the broker
                self.metrics.errors.inc()
                log.warning("revocation feed follow failed: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _RETRY_MAX_SECONDS)

    async def _event_at(self, seq: int) -> RevocationEvent | None:
        if seq <= 0:
            return None
        try:
            events = await self._store.feed_since(seq - 1, limit=1)
        except StoreRecordInvalid:
            return None  # nothing to compare with; a snapshot already covers it
        return events[0] if events and events[0].seq == seq else None

    async def _store_was_reset(self) -> bool:
        """True if the store's feed differs from what we applied at the anchor.

        A store that restarted empty and has already recorded as many new events
        as we had seen looks "ahead" by sequence alone; reading after our
        sequence would skip its first events. The event at a sequence we
        applied is compared instead.
        """
        anchor = self._anchor or self._unchecked
        if anchor is None:
            return False
        return await self._event_at(anchor.seq) != anchor

    async def _advance_anchor(self) -> None:
        last = self._last_event
        self._unchecked = None
        if last is not None and last.seq == self._seq:
            self._anchor = last
        elif self._seq > 0 and (self._anchor is None or self._anchor.seq != self._seq):
            # After a snapshot we hold no event of our own: adopt the store's.
            self._anchor = await self._event_at(self._seq)

    async def _probe_loop(self) -> None:
        interval = self.settings.effective_probe_interval
        while True:
            try:
                if not self._loaded:
                    await self._resnapshot("start")
                    self._restart_follower()
                asked = self._monotonic()
                head = await self._store.feed_head()
                if head < self._seq:
                    log.warning(
                        "revocation feed head %d is behind our seq %d (store reset?)",
                        head,
                        self._seq,
                    )
                    await self._resnapshot("feed_reset")
                    self._restart_follower()
                elif await self._store_was_reset():
                    log.warning(
                        "revocation feed changed under seq %d (store reset?)",
                        self._seq,
                    )
                    await self._resnapshot("feed_reset")
                    self._restart_follower()
                elif head > self._seq:
                    self.metrics.resyncs.labels(cause="probe").inc()
                    await self._catch_up()
                # Contact is a head we have applied, not a head that answered: a feed
                # we cannot follow (an unreadable event, a failing snapshot) grows stale.
                if self._seq >= head:
                    self._last_contact = max(self._last_contact or asked, asked)
                await self._advance_anchor()
                await self._report_position()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.errors.inc()
                log.warning("revocation feed probe failed: %s", exc)
            await asyncio.sleep(interval)

    async def _report_position(self) -> None:
        """Tell the store where this broker is in the feed: at once when the position
        moved, else every ``report_every`` seconds (the age shows a broker alive)."""
        name = self.settings.report_as
        if name is None or not self._loaded:
            return
        now = self._monotonic()
        last = self._reported
        if last is not None and last[0] == self._seq and now - last[1] < self.settings.report_every:
            return
        await report_position(self._store, name, self._seq, dt.datetime.now(dt.UTC))
        self._reported = (self._seq, now)
