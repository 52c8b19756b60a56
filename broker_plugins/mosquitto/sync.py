"""The Mosquitto sidecar: keeps the plugin, the snapshot file and crlfile current.

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
import datetime as dt
import json
import logging
import math
import os
import signal
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker_plugins.ca_refresh import refresh_bundle
from broker_plugins.metrics_http import MetricsServer
from broker_plugins.mosquitto.config import (
    CONTROL_TOPIC,
    SESSIONS_TOPIC,
    STATS_TOPIC,
    MosquittoSettings,
)
from broker_plugins.mosquitto.peers import PeerLinks, session_command
from broker_plugins.mosquitto.sidecar_client import sidecar_client, stop_clients
from broker_plugins.revocation_cache import CacheSettings, RevocationCache
from broker_plugins.snapshot import RevocationState, read_snapshot_file, serial_hex
from broker_plugins.subject_hash import subject_hash
from fleet.kernel.ca_bundle import bundle_roots
from fleet.kernel.device_id import is_device_id
from fleet.kernel.errors import ConfigError, FleetError, PolicyError
from fleet.kernel.files import PUBLIC_MODE, write_atomic
from fleet.records import RevocationEvent
from fleet.store.protocol import BrokerFeed

A = TypeVar("A")
R = TypeVar("R")

log = logging.getLogger("fleet.broker.mosquitto")

# A CRL installed for Mosquitto must stay valid at least this long.
MIN_CRL_REMAINING = dt.timedelta(minutes=10)
MAX_CRL_BYTES = 64 * 1024 * 1024
# After a revocation, how long to keep re-fetching until the server's CRL lists it.
CRL_CATCH_UP_SECONDS = 10.0
CRL_RETRY_SECONDS = 0.25
RETRY_SECONDS = 1.0
# How long a stop waits for paho's network thread (it is a daemon thread).
STOP_SECONDS = 0.2
# Revocations per control message when replaying many at once.
MAX_COMMANDS_PER_MESSAGE = 500


def revoke_command(event: RevocationEvent) -> str | None:
    """The control line for one feed event (None if the device id cannot be sent)."""
    if not is_device_id(event.device_id):
        log.error("feed event %d names an invalid device id %r", event.seq, event.device_id)
        return None
    serials = " ".join(serial_hex(s) for s in event.serials if s >= 0)
    return f"revoke {event.seq} {event.kind.value} {event.device_id} {serials}".rstrip()


# -- files ----------------------------------------------------------------------


def write_public(path: Path, data: bytes) -> None:
    """Atomically replace a file Mosquitto (possibly another user) reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=PUBLIC_MODE)


def write_cafile(settings: MosquittoSettings) -> None:
    """Mosquitto's cafile: the issuing CA and the root (a chain must reach the root).

    With cacerts_url, the issuing set (once there is one) as well: it holds the
    roots adopted in a rollover (see refresh_issuing_set for why capath is not
    enough for them).
    """
    try:
        data = settings.issuing_ca.read_bytes().rstrip() + b"\n" + settings.root_ca.read_bytes()
        if settings.cacerts_url and settings.issuing_set.exists():
            known = x509.load_pem_x509_certificates(data)
            followed = x509.load_pem_x509_certificates(settings.issuing_set.read_bytes())
            data += b"".join(c.public_bytes(Encoding.PEM) for c in followed if c not in known)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the fleet CA certificates: {exc}") from exc
    write_public(settings.cafile, data)


def write_cadir(settings: MosquittoSettings) -> None:
    """Mosquitto's capath: every CA of the issuing set under ``<subject hash>.<n>``.

    Each file is written atomically before a stale one is removed, so a
    handshake never finds the directory without a CA it needs.
    """
    certs = x509.load_pem_x509_certificates(settings.issuing_set.read_bytes())
    directory = settings.cadir
    directory.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, bytes] = {}
    for cert in certs:
        stem = subject_hash(cert.subject)
        n = 0
        while f"{stem}.{n}" in wanted:
            n += 1
        wanted[f"{stem}.{n}"] = cert.public_bytes(Encoding.PEM)
    for name, data in wanted.items():
        if not (directory / name).exists() or (directory / name).read_bytes() != data:
            write_public(directory / name, data)
    for stale in directory.iterdir():
        if stale.name not in wanted:
            stale.unlink()


def seed_issuing_set(settings: MosquittoSettings) -> None:
    """First start with cacerts_url: the configured issuing CAs and root, until /cacerts works."""
    if settings.issuing_set.exists():
        return
    try:
        data = settings.issuing_ca.read_bytes().rstrip() + b"\n" + settings.root_ca.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the fleet CA certificates: {exc}") from exc
    write_public(settings.issuing_set, data)


def refresh_issuing_set(settings: MosquittoSettings) -> bool:
    """Follow /cacerts (the kernel's rule, fleet.kernel.ca_bundle); True when it changed.

    A new root (a rollover, link-certified) reaches the plugin at the SIGHUP, but
    not Mosquitto's TLS layer: OpenSSL looks capath up only for names it has not
    cached, and the new root has the old one's name. It is written into cafile,
    which Mosquitto reads at its next start, and the operator is told to restart it.
    """
    context = cacerts_context(settings)
    before = _roots_of(settings.issuing_set)
    changed = refresh_bundle(
        settings.issuing_set, settings.cacerts_url, context, dt.datetime.now(dt.UTC)
    )
    if changed or not settings.cadir.exists():
        write_cadir(settings)
    if changed:
        write_cafile(settings)
        if any(root not in before for root in _roots_of(settings.issuing_set)):
            log.warning(
                "a new fleet root was adopted from /cacerts (root rollover): the plugin trusts "
                "it now, Mosquitto's TLS layer only once mosquitto is restarted (cafile %s "
                "holds it); restart mosquitto before devices under the new root connect",
                settings.cafile,
                extra={"fields": {"event": "fleet_root_adopted", "restart_needed": True}},
            )
    return changed


def cacerts_context(settings: MosquittoSettings) -> ssl.SSLContext:
    """Trust for fetching /cacerts: crl_cafile, or root_ca and the roots adopted from it.

    After ``fleet ca retire-root`` the server's certificate comes from the new root:
    a node that adopted it keeps following /cacerts with the root_ca it was set up with.
    """
    context = ssl.create_default_context(cafile=str(settings.crl_cafile or settings.root_ca))
    if settings.crl_cafile is None:
        for root in _roots_of(settings.issuing_set):
            context.load_verify_locations(cadata=root.public_bytes(Encoding.PEM).decode())
    return context


def _roots_of(bundle: Path) -> list[x509.Certificate]:
    try:
        return bundle_roots(x509.load_pem_x509_certificates(bundle.read_bytes()))
    except (OSError, ValueError):
        return []


def load_issuing_ca(settings: MosquittoSettings) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(settings.issuing_ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the issuing CA {settings.issuing_ca}: {exc}") from exc


def signal_broker(pid_file: Path) -> bool:
    """SIGHUP the broker named by the PID file; False if it is not running.

    The process must be a ``mosquitto``: a stale PID file must not make us
    signal whatever process reused the number.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    if comm != "mosquitto":
        log.warning("PID file %s names process %d (%s), not mosquitto", pid_file, pid, comm)
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


# -- CRL -------------------------------------------------------------------------


def _crl_invalid(message: str) -> PolicyError:
    return PolicyError(
        message,
        reason="crl_invalid",
        hint="The installed crlfile was kept. Check the fleet server's /crl and the clocks.",
    )


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound as exc:
        raise _crl_invalid("the CRL has no CRL number") from exc


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise _crl_invalid(f"the CRL does not parse: {exc}") from exc


def validate_crl(
    data: bytes,
    issuer: x509.Certificate,
    *,
    now: dt.datetime,
    installed_number: int | None,
    min_remaining: dt.timedelta = MIN_CRL_REMAINING,
) -> x509.CertificateRevocationList:
    """The parsed CRL if Mosquitto may load it; PolicyError (``crl_invalid``) if not."""
    crl = parse_crl(data)
    if crl.issuer != issuer.subject:
        raise _crl_invalid(f"the CRL names issuer {crl.issuer.rfc4514_string()!r}")
    public_key: CertificateIssuerPublicKeyTypes = issuer.public_key()  # type: ignore[assignment]
    if not crl.is_signature_valid(public_key):
        raise _crl_invalid("the CRL signature does not verify with the issuing CA")
    next_update = crl.next_update_utc
    if next_update is None or next_update - now < min_remaining:
        raise _crl_invalid(f"the CRL's nextUpdate {next_update} is not {min_remaining} ahead")
    if crl.last_update_utc > now + dt.timedelta(minutes=5):
        raise _crl_invalid(f"the CRL's thisUpdate {crl.last_update_utc} is in the future")
    number = crl_number(crl)
    if installed_number is not None and number < installed_number:
        raise _crl_invalid(f"CRL #{number} is older than the installed #{installed_number}")
    return crl


def installed_crl_number(path: Path, issuer: x509.Certificate) -> int | None:
    """The CRL number of the crlfile in place, if it is a CRL of ``issuer``."""
    try:
        crl = parse_crl(path.read_bytes())
        return crl_number(crl) if crl.issuer == issuer.subject else None
    except (OSError, FleetError):
        return None


def fetch_crl(url: str, cafile: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    request = urllib.request.Request(url, headers={"Accept": "application/pkix-crl"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            data: bytes = response.read(MAX_CRL_BYTES + 1)
    except OSError as exc:
        raise FleetError(
            f"cannot fetch the CRL from {url}: {exc}", reason="crl_unavailable"
        ) from exc
    if len(data) > MAX_CRL_BYTES:
        raise _crl_invalid(f"the CRL from {url} is larger than {MAX_CRL_BYTES} bytes")
    return data


class CrlKeeper:
    """Installs the newest valid CRL of the issuing CA as Mosquitto's crlfile."""

    def __init__(self, settings: MosquittoSettings, issuer: x509.Certificate) -> None:
        self._settings = settings
        self._issuer = issuer
        # Unix time the installed crlfile was last fetched and validated (0: none).
        # A CRL of the issuer already in place (`sync --once`, an earlier run) counts
        # from when it was written, so its age is known before the first fetch.
        self.installed_at = 0.0
        if installed_crl_number(settings.crlfile, issuer) is not None:
            with contextlib.suppress(OSError):
                self.installed_at = settings.crlfile.stat().st_mtime

    def refresh(self, want: Iterable[int] = ()) -> tuple[bool, set[int]]:
        """Fetch, validate and install the CRL if newer. Returns (installed, missing serials).

        ``missing`` are serials of ``want`` the fetched CRL does not list yet
        (the server re-signs its CRL shortly after a revocation).
        """
        s = self._settings
        data = fetch_crl(s.crl_url, s.crl_cafile or s.root_ca)
        installed = installed_crl_number(s.crlfile, self._issuer)
        crl = validate_crl(
            data, self._issuer, now=dt.datetime.now(dt.UTC), installed_number=installed
        )
        listed = {entry.serial_number for entry in crl}
        missing = set(want) - listed
        if installed is not None and crl_number(crl) == installed:
            self.installed_at = time.time()
            return False, missing
        write_public(s.crlfile, crl.public_bytes(Encoding.PEM))
        self.installed_at = time.time()
        # Only a crlfile Mosquitto reads needs a reload (and a reload re-checks every session).
        hupped = signal_broker(s.pid_file) if s.crl_backstop else False
        log.info(
            "installed CRL #%d (%d revoked)%s",
            crl_number(crl),
            len(listed),
            "; broker reloaded" if hupped else "",
            extra={
                "fields": {
                    "event": "crl_installed",
                    "crl_number": crl_number(crl),
                    "revoked": len(listed),
                    "broker_reloaded": hupped,
                }
            },
        )
        return True, missing


# -- MQTT link to the plugin --------------------------------------------------


class PluginLink:
    """The sidecar's MQTT connection to the broker (paho's network thread)."""

    def __init__(
        self,
        settings: MosquittoSettings,
        loop: asyncio.AbstractEventLoop,
        on_session: Callable[[bytes], None] | None = None,
    ) -> None:
        self._loop = loop
        # Called in paho's thread with each session announcement of the plugin (peers).
        self._on_session = on_session
        self.connected = asyncio.Event()
        self.on_connected: asyncio.Queue[None] = asyncio.Queue()
        client = sidecar_client(settings, settings.sidecar_cn, max_reconnect_delay=2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        # The plugin's last `stats` answer and when it came (monotonic).
        self.stats: dict[str, object] = {}
        self.stats_at: float | None = None
        self._host = settings.connect_host
        self._port = settings.listen_port

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect, and let the network thread go within STOP_SECONDS."""
        stop_clients([self._client], STOP_SECONDS)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("the broker refused the sidecar: %s", reason_code)
            return
        client.subscribe(STATS_TOPIC, qos=0)
        if self._on_session is not None:
            client.subscribe(SESSIONS_TOPIC, qos=0)
        self._loop.call_soon_threadsafe(self._connected)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == SESSIONS_TOPIC and self._on_session is not None:
            self._on_session(bytes(msg.payload))  # straight on, from this thread: latency
            return
        if msg.topic != STATS_TOPIC:
            return
        try:
            stats = json.loads(msg.payload)
        except ValueError:
            log.warning("unreadable stats from the plugin")
            return
        if isinstance(stats, dict):
            self._loop.call_soon_threadsafe(self._stats_received, stats)

    def _stats_received(self, stats: dict[str, object]) -> None:
        self.stats = stats
        self.stats_at = time.monotonic()

    def _connected(self) -> None:
        self.connected.set()
        self.on_connected.put_nowait(None)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self.connected.clear)
        log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def send(self, text: str) -> mqtt.MQTTMessageInfo | None:
        """Publish one control message (QoS 1); None when not connected."""
        if not self.connected.is_set():
            return None
        info = self._client.publish(CONTROL_TOPIC, text.encode(), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info


class PluginStatsCollector(Collector):
    """The plugin's counters, as of its last `stats` answer."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    def collect(self) -> Iterator[Metric]:
        link = self._sidecar.link
        stats = link.stats if link is not None else {}
        age = GaugeMetricFamily(
            "fleet_mosquitto_plugin_stats_age_seconds",
            "Seconds since the plugin last answered `stats` (NaN: never)",
        )
        at = link.stats_at if link is not None else None
        age.add_metric([], math.nan if at is None else time.monotonic() - at)
        yield age
        if not stats:
            return
        accepted = CounterMetricFamily(
            "fleet_mosquitto_connects_accepted", "Device connects the plugin accepted"
        )
        accepted.add_metric([], _number(stats.get("accepted")))
        yield accepted
        refused = CounterMetricFamily(
            "fleet_mosquitto_connects_refused",
            "Connects the plugin refused, by reason (fleet.kernel.reasons.BROKER_REFUSALS)",
            labels=["reason"],
        )
        by_reason = stats.get("refused_by_reason")
        if isinstance(by_reason, dict):
            for reason, count in sorted(by_reason.items()):
                refused.add_metric([str(reason)], _number(count))
        yield refused
        kicked = CounterMetricFamily(
            "fleet_mosquitto_sessions_kicked", "Live sessions the plugin closed on revocation"
        )
        kicked.add_metric([], _number(stats.get("kicked")))
        yield kicked
        taken_over = CounterMetricFamily(
            "fleet_mosquitto_sessions_taken_over",
            "Sessions the plugin closed because the device connected to a peer node since",
        )
        taken_over.add_metric([], _number(stats.get("taken_over")))
        yield taken_over
        seq = GaugeMetricFamily(
            "fleet_mosquitto_plugin_seq", "Highest revocation feed sequence the plugin applied"
        )
        seq.add_metric([], _number(stats.get("seq")))
        yield seq
        stale = GaugeMetricFamily(
            "fleet_mosquitto_plugin_stale",
            "1 if the plugin refuses devices as revocation_state_stale (no snapshot, or no "
            "heartbeat for max_staleness_seconds)",
        )
        stale.add_metric([], 1.0 if stats.get("stale") or not stats.get("loaded") else 0.0)
        yield stale
        age = GaugeMetricFamily(
            "fleet_mosquitto_plugin_revocation_age_seconds",
            "Seconds since the plugin's revocation state was last known current",
        )
        age.add_metric([], _number(stats.get("fresh_age")))
        yield age
        limit = GaugeMetricFamily(
            "fleet_mosquitto_plugin_max_staleness_seconds",
            "The plugin's max_staleness_seconds (0: no staleness policy, fails open)",
        )
        limit.add_metric([], _number(stats.get("max_staleness")))
        yield limit


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


# -- the sidecar -------------------------------------------------------------------


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
        write_cafile(self.settings)
        await self._follow_cacerts_once()
        self._merge_snapshot_file()
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

    async def run(self) -> None:
        write_cafile(self.settings)
        await self._follow_cacerts_once()
        self._merge_snapshot_file()
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
