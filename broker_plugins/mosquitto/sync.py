"""The Mosquitto sidecar: keeps the plugin, the snapshot file and crlfile current.

Its parts: this module (the sidecar's loop), ``plugin_link`` (the MQTT link to
the plugin and its counters), ``crl_keeper`` (crlfile), ``trust_files`` (cafile,
capath, the issuing-CA set), ``peers`` (one session per device across nodes).
What it does, and why each piece exists:

* **Feed → plugin.** The feed is followed by :class:`RevocationCache` (snapshot
  at start, ``follow_feed``, catch-up by sequence after a gap, a fresh snapshot
  merged after a store reset); every revocation it learns is pushed at once to the plugin as
  a ``revoke`` command on ``$CONTROL/fleet/v1`` (MQTT QoS 1 over the broker's
  own TLS listener, with the sidecar certificate). The plugin adds the serials
  and device, and kicks the device's live session. Mosquitto sends the PUBACK
  only after the plugin's callback ran.
* **Resync.** On every (re)connection to the broker — sidecar restart, broker
  restart, network blip — the sidecar writes the full snapshot file and sends
  ``reload``: the plugin re-reads it (entries are only ever added) and kicks
  every session whose device or serial is now revoked. Commands lost while
  disconnected are therefore covered. The CRL is fetched at once when the
  sidecar starts (beside the store snapshot), so revocations made while it
  was away reach crlfile within a second too, not after ``crl_refresh_seconds``.
* **Snapshot file.** What the plugin loads when the broker starts, before the
  sidecar is connected. Written atomically (temp file, fsync, rename). Its
  ``written`` time is when the sidecar last heard from the feed, not when the
  file was written: the plugin takes its freshness from it, so a resync while
  the store is unreachable does not make old data look current.
* **CRL.** With ``crl_url``, fleet serve's ``/crl`` is fetched, validated
  (parses, issued and signed by the issuing CA, nextUpdate far enough ahead,
  thisUpdate not in the future, CRL number not older than the installed one)
  and written atomically to ``crlfile`` (its age is a metric). Only with
  ``crl_backstop`` does Mosquitto read it (its TLS layer then refuses listed
  serials before the plugin, without a reason in the log; see config.py), and
  only then is the broker sent SIGHUP (only if the PID file names a
  ``mosquitto`` process). A garbage CRL at reload turns Mosquitto's checking
  off and an expired one refuses every device, so nothing unvalidated is ever
  installed.
* **Heartbeat.** While the feed is reachable and followed to its head, a
  ``heartbeat`` command tells the plugin its data is current; the plugin
  refuses new device connections with ``revocation_state_stale`` once
  heartbeats stop for ``max_staleness_seconds`` (default 30: fail closed).
* **Metrics.** With ``metrics_address`` set, the sidecar serves Prometheus
  ``/metrics``: its own (feed sequence, staleness, CRL age) and the plugin's
  counters (connects accepted, refused by kernel reason code, sessions kicked,
  age of its revocation state against ``max_staleness_seconds``), which it
  asks for with a ``stats`` command every heartbeat; the plugin answers on
  ``$fleet/v1/stats``, readable by the sidecar identity only.
* **Store reset.** Serials learnt from a snapshot (after a Redis restart
  without persistence, or a hole in the feed) come without their device, so
  they are sent as a full reload, which finds their sessions in the plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Gauge

from broker_plugins.metrics_http import MetricsServer
from broker_plugins.mosquitto.config import (
    MosquittoSettings,
)
from broker_plugins.mosquitto.crl_keeper import CrlKeeper, signal_broker
from broker_plugins.mosquitto.peers import PeerLinks, session_command
from broker_plugins.mosquitto.plugin_link import PluginLink, PluginStatsCollector
from broker_plugins.mosquitto.trust_files import (
    load_issuing_ca,
    refresh_issuing_set,
    seed_issuing_set,
    write_cadir,
    write_cafile,
    write_public,
)
from broker_plugins.revocation_cache import CacheSettings, RevocationCache
from broker_plugins.snapshot import RevocationState, read_snapshot_file, serial_hex
from fleet.kernel.device_id import is_device_id
from fleet.kernel.errors import FleetError
from fleet.records import RevocationEvent
from fleet.store.protocol import BrokerFeed

A = TypeVar("A")
R = TypeVar("R")

log = logging.getLogger("fleet.broker.mosquitto")

# After a revocation, how long to keep re-fetching until the server's CRL lists it.
CRL_CATCH_UP_SECONDS = 10.0
CRL_RETRY_SECONDS = 0.25
RETRY_SECONDS = 1.0


def revoke_command(event: RevocationEvent) -> str | None:
    """The control line for one feed event (None if the device id cannot be sent)."""
    if not is_device_id(event.device_id):
        log.error("feed event %d names an invalid device id %r", event.seq, event.device_id)
        return None
    serials = " ".join(serial_hex(s) for s in event.serials if s >= 0)
    return f"revoke {event.seq} {event.kind.value} {event.device_id} {serials}".rstrip()


# -- files ----------------------------------------------------------------------


async def in_daemon_thread(function: Callable[[A], R], argument: A) -> R:
    """``function(argument)`` in a daemon thread; cancelling the await abandons it.

    For network calls that may hang up to their timeout (a CRL server that
    accepts and never answers): ``asyncio.to_thread`` would make the process
    wait for them at exit, so SIGTERM would take up to that timeout.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def settle(result: R | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = function(argument)
        except BaseException as exc:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=getattr(function, "__name__", "worker"), daemon=True).start()
    return await future


def write_snapshot(settings: MosquittoSettings, state: RevocationState, fresh_at: float) -> None:
    """Write the snapshot file; ``fresh_at`` (unix time) is when the feed last answered."""
    write_public(settings.snapshot_file, state.snapshot_text(int(fresh_at)).encode())


class Sidecar:
    """Feed (through :class:`RevocationCache`) -> plugin, snapshot file and crlfile."""

    def __init__(self, settings: MosquittoSettings, store: BrokerFeed) -> None:
        self.settings = settings
        self.store = store
        # The full sets the snapshot file needs. The cache answers "is X revoked"
        # and reports changes, but does not list its contents, so the sidecar
        # takes its own snapshot once the cache has loaded and then follows the
        # cache's change callbacks (events after any snapshot are idempotent).
        self.state = RevocationState()
        self.state_loaded = False
        self.registry = CollectorRegistry()
        self.cache = RevocationCache(
            store,
            CacheSettings(
                max_staleness=max(settings.max_staleness_seconds, 2 * settings.heartbeat_seconds),
                probe_interval=settings.heartbeat_seconds,
                report_as=settings.reported_name,
            ),
            registry=self.registry,
        )
        self.cache.on_revoked(self._on_revoked)
        self._snapshot_dirty = asyncio.Event()
        self._snapshot_lock = threading.Lock()  # one writer at a time, the newest last
        self._crl_dirty = asyncio.Event()
        self._crl_pending: set[int] = set()
        self._crl = CrlKeeper(settings, load_issuing_ca(settings)) if settings.crl_url else None
        self._link: PluginLink | None = None
        self._peers = PeerLinks(settings) if settings.peers else None
        crl_age = Gauge(
            "fleet_mosquitto_crl_age_seconds",
            "Seconds since the CRL was last fetched and validated (NaN: never or no crl_url)",
            registry=self.registry,
        )
        crl_age.set_function(self._crl_age)
        self.registry.register(PluginStatsCollector(self))

    @property
    def link(self) -> PluginLink | None:
        return self._link

    def _crl_age(self) -> float:
        if self._crl is None or not self._crl.installed_at:
            return math.nan
        return max(0.0, time.time() - self._crl.installed_at)

    async def once(self) -> None:
        """Write cafile, snapshot and CRL, then return (before the broker starts)."""
        await self._prepare_files()
        await self._load_state()
        self._write_snapshot_now(fresh_at=time.time())  # just read from the store
        if self._crl is not None:
            await in_daemon_thread(self._crl.refresh, set())

    async def _follow_cacerts_once(self) -> bool:
        """With cacerts_url: the issuing set and capath from /cacerts; True when changed."""
        s = self.settings
        if not s.cacerts_url:
            return False
        seed_issuing_set(s)
        try:
            return await in_daemon_thread(refresh_issuing_set, s)
        except (OSError, FleetError) as exc:
            log.warning("issuing CAs not refreshed from %s, keeping them: %s", s.cacerts_url, exc)
            if not s.cadir.exists():
                write_cadir(s)
            return False

    async def _cacerts_loop(self) -> None:
        """Follow issuing-CA rotations: the plugin re-reads the set on the SIGHUP."""
        while True:
            await asyncio.sleep(self.settings.ca_refresh_seconds)
            if await self._follow_cacerts_once():
                hupped = signal_broker(self.settings.pid_file)
                log.info(
                    "issuing CAs changed",
                    extra={"fields": {"event": "issuing_cas_changed", "broker_hupped": hupped}},
                )

    async def _prepare_files(self) -> None:
        """What the broker reads at start, from what is on disk and /cacerts (both modes)."""
        write_cafile(self.settings)
        await self._follow_cacerts_once()
        self._merge_snapshot_file()

    async def run(self) -> None:
        await self._prepare_files()
        metrics_server = None
        try:
            async with asyncio.TaskGroup() as tasks:
                if self.settings.cacerts_url:
                    tasks.create_task(self._cacerts_loop(), name="cacerts")
                if self._crl is not None:
                    # At once, beside the store snapshot: revocations made while the
                    # sidecar was away reach crlfile without waiting a refresh period.
                    tasks.create_task(self._crl_loop(), name="crl")
                # A store that is down at start must not stop the sidecar: the plugin
                # keeps the snapshot file it has (and the staleness policy applies)
                # until it answers.
                await self.cache.start(initial_timeout=10.0)
                if self.cache.loaded:
                    with contextlib.suppress(FleetError):
                        await self._load_state()
                if self.state_loaded:
                    self._write_snapshot_now()
                on_session = None
                if self._peers is not None:
                    self._peers.start()
                    on_session = self._pass_session_on
                self._link = PluginLink(self.settings, asyncio.get_running_loop(), on_session)
                self._link.start()
                listen = self.settings.metrics_listen
                if listen is not None:
                    metrics_server = MetricsServer(listen[0], listen[1], self.registry)
                    log.info("metrics on http://%s:%d/metrics", *listen)
                log.info(
                    "sidecar started",
                    extra={
                        "fields": {
                            "event": "sidecar_started",
                            "broker": f"{self.settings.connect_host}:{self.settings.listen_port}",
                            "revocation_seq": self.state.seq,
                            "crl_url": self.settings.crl_url or None,
                        }
                    },
                )
                tasks.create_task(self._resync_on_connect(), name="resync")
                tasks.create_task(self._heartbeat(), name="heartbeat")
                tasks.create_task(self._snapshot_writer(), name="snapshot")
        finally:
            if metrics_server is not None:
                metrics_server.close()
            if self._link is not None:
                self._link.stop()
            if self._peers is not None:
                self._peers.stop()
            await self.cache.close()
            # Revocations learnt since the last coalesced write must not die with us:
            # after a stop, the store may be emptied and Mosquitto restarted. (A write
            # still running on a worker thread holds the lock; this one comes after it.)
            if self.state_loaded:
                try:
                    self._write_snapshot_now()
                except OSError as exc:
                    log.error("cannot write the snapshot %s: %s", self.settings.snapshot_file, exc)

    def _pass_session_on(self, payload: bytes) -> None:
        """The plugin admitted a device: tell the peer nodes (paho's thread)."""
        assert self._peers is not None
        command = session_command(payload)
        if command is None:
            log.warning("unreadable session announcement from the plugin")
            return
        self._peers.announce(command)

    def _fresh_at(self) -> float:
        """Unix time the feed last answered (0 if never): the snapshot's ``written``."""
        staleness = self.cache.staleness_seconds()
        return 0.0 if math.isinf(staleness) else time.time() - staleness

    async def _load_state(self) -> None:
        """Merge a snapshot of the store into ``state`` (after the cache started)."""
        self.state.merge(await self.store.revocation_snapshot())
        self.state_loaded = True

    def _merge_snapshot_file(self) -> None:
        previous = read_snapshot_file(self.settings.snapshot_file)
        if previous is None:
            return
        self.state.serials |= previous.serials
        self.state.devices |= previous.devices
        self.state.seq = max(self.state.seq, previous.seq)

    def _write_snapshot_now(self, fresh_at: float | None = None) -> None:
        with self._snapshot_lock:
            write_snapshot(
                self.settings, self.state, self._fresh_at() if fresh_at is None else fresh_at
            )
        log.info(
            "snapshot seq=%d written: %d serials, %d devices revoked",
            self.state.seq,
            len(self.state.serials),
            len(self.state.devices),
        )

    def _on_revoked(self, event: RevocationEvent) -> None:
        """Called by the cache, in the event loop, for every revocation it learns."""
        self.state.apply(event)
        if self._link is not None:
            if event.device_id:
                command = revoke_command(event)
                if command is not None and self._link.send(command) is None:
                    log.warning("broker not connected; seq %d goes with the resync", event.seq)
            else:
                # Serials learnt from a snapshot (feed reset or hole) come without their
                # device: the plugin finds their sessions itself on a full reload.
                self._link.on_connected.put_nowait(None)
        if event.device_id:
            log.info(
                "revocation seq=%d %s %s (%d serial(s))",
                event.seq,
                event.kind.value,
                event.device_id,
                len(event.serials),
            )
        self._snapshot_dirty.set()
        self._crl_pending.update(event.serials)
        self._crl_dirty.set()

    async def _resync_on_connect(self) -> None:
        assert self._link is not None
        while True:
            await self._link.on_connected.get()
            if not self.state_loaded:
                log.warning("no revocation snapshot yet; the plugin keeps its snapshot file")
                continue
            try:
                await asyncio.to_thread(self._write_snapshot_now)
            except OSError as exc:
                log.error("cannot write the snapshot %s: %s", self.settings.snapshot_file, exc)
                continue
            if self._link.send("reload") is not None:
                log.info("resynced the plugin: snapshot seq=%d sent for reload", self.state.seq)

    async def _heartbeat(self) -> None:
        """Tell the plugin its data is current while the feed answers (staleness policy)."""
        assert self._link is not None
        interval = self.settings.heartbeat_seconds
        while True:
            await asyncio.sleep(interval)
            self._link.send("stats")  # the plugin's counters, for /metrics
            if self.cache.loaded and not self.state_loaded:
                # The store was down at start; now it answers: load, then resync the plugin.
                try:
                    await self._load_state()
                except FleetError as exc:
                    log.warning("revocation snapshot failed: %s", exc)
                    continue
                self._snapshot_dirty.set()
                self._link.on_connected.put_nowait(None)
            if self.state_loaded and self.cache.staleness_seconds() <= 2 * interval:
                self._link.send(f"heartbeat {self.cache.seq}")
            else:
                log.warning(
                    "revocation feed silent for %.1fs; no heartbeat to the plugin",
                    self.cache.staleness_seconds(),
                )

    async def _snapshot_writer(self) -> None:
        while True:
            await self._snapshot_dirty.wait()
            self._snapshot_dirty.clear()
            try:
                await asyncio.to_thread(self._write_snapshot_now)
            except OSError as exc:
                log.error("cannot write the snapshot %s: %s", self.settings.snapshot_file, exc)
                self._snapshot_dirty.set()
                await asyncio.sleep(RETRY_SECONDS)
                continue
            await asyncio.sleep(0.2)  # coalesce bursts (bulk revocations)

    async def _crl_loop(self) -> None:
        assert self._crl is not None
        deadline: float | None = None
        self._crl_dirty.set()  # the first fetch at once: the sidecar may have been away
        while True:
            if not self._crl_dirty.is_set():
                wait = (
                    CRL_RETRY_SECONDS if deadline is not None else self.settings.crl_refresh_seconds
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._crl_dirty.wait(), wait)
            if self._crl_dirty.is_set():
                self._crl_dirty.clear()
                deadline = deadline or time.monotonic() + CRL_CATCH_UP_SECONDS
            want = set(self._crl_pending)
            try:
                _, missing = await in_daemon_thread(self._crl.refresh, want)
            except FleetError as exc:
                log.warning("%s (%s)", exc.message, exc.hint)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._crl_pending -= want - missing
            if not missing:
                deadline = None
            elif deadline is not None and time.monotonic() > deadline:
                log.warning(
                    "the fleet CRL still lacks %d revoked serial(s); the plugin refuses them",
                    len(missing),
                )
                self._crl_pending -= missing
                deadline = None
