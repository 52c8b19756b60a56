"""The broker-side settings file (TOML): every key, its checks and its defaults.

The mosquitto.conf generated from it is broker_plugins.mosquitto.generated_conf.

One file describes a Mosquitto node: where the fleet store is (its revocation
feed), the fleet CAs, the broker's TLS listener, the plugin and the sidecar's
identity. ``fleet-broker mosquitto config`` prints the mosquitto.conf,
``fleet-broker mosquitto sync`` runs the sidecar; both read the same file, so
the paths the plugin reads and the sidecar writes always agree. Relative paths
are relative to the settings file's directory. Example::

    [store]
    url = "sqlite:////var/lib/fleet/fleet.db"     # or postgresql://fleet@db/fleet, redis://host:6379/0

    [mosquitto]
    listen = "0.0.0.0:8883"
    server_cert = "tls/broker.pem"                # the broker's own TLS certificate
    server_key = "tls/broker.key"
    root_ca = "ca/root.pem"                       # fleet root (devices' chains end here)
    issuing_ca = "ca/issuing.pem"                 # the CA(s) whose leaves may connect (a
                                                  # bundle of several during a CA rotation)
    plugin = "fleet_plugin.so"                    # `fleet-broker mosquitto build --out .`
    state_dir = "state"                           # cafile, crlfile, snapshot (sidecar writes)
    pid_file = "state/mosquitto.pid"              # the sidecar SIGHUPs this PID for new CRLs
    crl_url = "https://est.example.com:8443/crl"  # fleet serve's CRL ("" = none; optional)
    crl_backstop = false                          # Mosquitto's TLS layer checks it too
    cacerts_url = "https://est.example.com:8443/.well-known/est/cacerts"  # follow issuing-
                                                  # CA rotations without a restart ("" = no)
    ca_refresh_seconds = 5.0                      # how often the sidecar reads cacerts_url
    log_format = "json"                           # the plugin's lines as JSON ("text")
    sidecar_cert = "sidecar.pem"                  # `fleet-broker mosquitto sidecar-cert`
    sidecar_key = "sidecar.key"
    metrics_address = "127.0.0.1:9883"           # sidecar /metrics (plugin counters too)
    max_staleness_seconds = 30                    # fail closed (see below); 0 = never
    heartbeat_seconds = 2.0                       # sidecar -> plugin "the feed is live"
    skew_seconds = 300                            # clock skew forgiven on validity
    max_packet_bytes = 1048576                    # largest MQTT packet a client may send
    broker_name = "mqtt-1"                        # console feed position (default node_name)
    node_name = "mqtt-a"                          # this node, among its peers (below)
    peers = ["10.0.0.12:8883", "10.0.0.13:8883"]  # the other broker nodes' listeners

``peers`` (with ``node_name``) keeps one session per device across broker
nodes, as MQTT requires for one client id: the plugin announces every device
it admits, and the sidecar passes the announcement to each peer's listener
(with the sidecar certificate, client id ``<sidecar_cn>@<node_name>``, trusting
``broker_cafile`` or ``root_ca`` for the peer's TLS), whose plugin closes an
older session of that device. The newest connection wins; a lost announcement
leaves the older session up until it ends by itself, it never refuses a
device. Announcement times are the nodes' clocks (keep them in NTP sync).
Every node lists every other node; there is no shared file between nodes.

Who refuses a revoked certificate: **the plugin**, by default. It holds the
revocation state (snapshot + live feed), refuses a revoked serial or device at
CONNECT with ``certificate_revoked`` / ``device_revoked`` and logs the refusal
once, with device id and serial, and it closes live sessions on revocation.
``crl_backstop = true`` (needs ``crl_url``) also gives Mosquitto the CRL as its
``crlfile``. The TLS layer runs before the plugin, so a serial listed there is
refused in the handshake, where only ``Client <unknown> disconnected: Protocol
error`` is logged: no device id, serial or reason. It adds safety only against
a plugin whose revocation state is wrong, which the fail-closed staleness
policy below already bounds; and it adds outage risks (an expired CRL refuses
every device, a reload re-checks every session). Off by default. With
``crl_url`` set and no backstop, the sidecar still fetches, validates and keeps
the CRL (``fleet_mosquitto_crl_age_seconds``), ready to be switched on.

Certificates the TLS layer refuses never reach the plugin, whatever the
setting: a device's factory (bootstrap) certificate, or any certificate that
does not chain to the fleet root in ``cafile``. Mosquitto logs them as
``OpenSSL Error[0]: ... certificate verify failed`` and ``Client <unknown>
disconnected: Protocol error`` (no subject). Letting them through to the
plugin would mean putting the manufacturer CAs into ``cafile``, which mixes
trust domains; so that line is all the broker can say. The device sees a TLS
alert (``fleet-agent status``: broker reason ``tls_failed``).

``log_format = "json"`` makes the plugin's lines (refusals, kicks) one JSON
object each, with the fields of fleet's other logs (``ts``, ``level``,
``logger``, ``msg``, ``event``, ``device_id``, ``serial``, ``reason``) and
turns Mosquitto's timestamp prefix off; Mosquitto's own lines stay text. The
sidecar logs JSON always.

``max_packet_bytes`` (default 1 MiB) becomes Mosquitto's ``max_packet_size``.
Mosquitto allocates a packet's announced length (up to 256 MiB) as soon as it
has read the fixed header, and reads a CONNECT whole before the plugin is
asked: without a limit any TLS client whose certificate chains to the root -
a revoked device included - holds that much broker memory per connection.
A larger packet closes the connection (MQTT 5: reason 149, packet too large).
The generated mosquitto.conf also bounds each client's queue and the life of
an unused persistent session (broker_plugins.mosquitto.generated_conf).

``user`` is the account Mosquitto drops to when started as root (it must be
able to write ``state_dir``, where its ``pid_file`` is). Mosquitto 2.0 started
as root without it drops to ``mosquitto`` and exits with "Unable to write pid
file" if that user cannot write there; ``fleet-broker mosquitto init`` picks
and prepares it.

``max_staleness_seconds`` (default 30) is the fail-closed policy (DESIGN.md
section 7): the plugin refuses every new device connection with
``revocation_state_stale`` once it has not heard from a live revocation feed
(the sidecar's heartbeat, or a revocation it pushed) for that long - for
instance while the sidecar is stopped, when it cannot reach the store, or
before the first snapshot loaded. Sessions admitted on good data stay up. A
revocation made in that window cannot reach the plugin, so it bounds how long
a revoked device can still (re)connect. It must be at least twice
``heartbeat_seconds``; 0 turns the policy off (the broker then fails open and
admits on data of any age - not recommended). The plugin's age of data is in
the sidecar's metrics (``fleet_mosquitto_plugin_revocation_age_seconds``,
``fleet_mosquitto_plugin_stale``) and the broker log says when refusing starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.kernel.acl import PLACEHOLDER as ACL_PLACEHOLDER
from fleet.kernel.acl import AclConfigError, TopicAcl
from fleet.kernel.certs import DEFAULT_SKEW
from fleet.kernel.device_id import is_device_id
from fleet.kernel.errors import ConfigError
from fleet.store.broker_positions import check_broker_name

DEFAULT_SIDECAR_CN = "fleet:sidecar"
DEFAULT_ACL_TEMPLATE = "devices/%u/#"
DEFAULT_MAX_STALENESS_SECONDS = 30
# Mosquitto's max_packet_size (its own default is none: 256 MiB, allocated before auth).
DEFAULT_MAX_PACKET_BYTES = 1024 * 1024
MQTT_MAX_PACKET_BYTES = 268_435_455 + 5  # the largest remaining length, plus a fixed header
# Room for the sidecar's control commands: a device revocation lists every serial.
MIN_PACKET_BYTES = 64 * 1024
LOG_FORMATS = ("text", "json")
CONTROL_TOPIC = "$CONTROL/fleet/v1"
# Where the plugin answers `stats`: delivered to the sidecar only (its ACL).
STATS_TOPIC = "$fleet/v1/stats"
# Where the plugin announces each device it admits ("<device_id> <unix ms>"), to the
# sidecar only, which passes it on to the peer nodes (one session per device).
SESSIONS_TOPIC = "$fleet/v1/sessions"

_PATHS = (
    "server_cert",
    "server_key",
    "root_ca",
    "issuing_ca",
    "plugin",
    "state_dir",
    "pid_file",
    "sidecar_cert",
    "sidecar_key",
    "crl_cafile",
    "broker_cafile",
)


@dataclasses.dataclass(frozen=True, slots=True)
class MosquittoSettings:
    store_url: str
    listen_host: str
    listen_port: int
    server_cert: Path
    server_key: Path
    root_ca: Path
    issuing_ca: Path
    plugin: Path
    state_dir: Path
    pid_file: Path
    sidecar_cert: Path
    sidecar_key: Path
    crl_url: str = ""  # fleet serve's /crl: fetched, validated, kept in state_dir
    # Also make Mosquitto's TLS layer check that CRL (crlfile). Off: the plugin decides
    # revocation, with the device id, serial and reason in the log (see the docstring).
    crl_backstop: bool = False
    crl_cafile: Path | None = None  # trust for crl_url's TLS; default root_ca
    broker_cafile: Path | None = None  # trust for the broker's TLS (sidecar); default root_ca
    sidecar_cn: str = DEFAULT_SIDECAR_CN
    pin_sidecar: bool = True  # pin the sidecar certificate's SHA-256 in the plugin
    acl_template: str = DEFAULT_ACL_TEMPLATE
    # Refuse new device connections when the plugin has not heard from a live
    # feed for this long (fail closed; 0 = no staleness policy, fails open).
    max_staleness_seconds: int = DEFAULT_MAX_STALENESS_SECONDS
    skew_seconds: int = int(DEFAULT_SKEW.total_seconds())
    # The largest MQTT packet Mosquitto reads from a client (max_packet_size).
    max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES
    heartbeat_seconds: float = 2.0
    crl_refresh_seconds: float = 600.0
    broker_host: str = ""  # where the sidecar connects; default: the listen host
    user: str = ""  # mosquitto's `user` (the account it drops to when started as root)
    log_type: tuple[str, ...] = ("error", "warning", "notice", "information")
    # "text" or "json": the plugin's lines (refusals, kicks) as JSON objects, like the
    # rest of fleet; Mosquitto's own lines stay text. The sidecar always logs JSON.
    log_format: str = "text"
    # HOST:PORT where the sidecar serves Prometheus /metrics ("" = none); keep it loopback.
    metrics_address: str = ""
    # fleet serve's EST /cacerts: the sidecar keeps the plugin's issuing CAs
    # (state_dir/issuing-set.pem) and a capath directory for Mosquitto's TLS
    # layer equal to it, and SIGHUPs the broker when it changes. Mosquitto
    # reads cafile only at start; capath is looked up at each handshake.
    cacerts_url: str = ""
    ca_refresh_seconds: float = 5.0
    # The name the sidecar reports this broker's feed position under (the admin
    # console's Overview); "" = node_name, else "mosquitto@<hostname>:<listen port>".
    broker_name: str = ""

    @property
    def reported_name(self) -> str:
        return (
            self.broker_name
            or self.node_name
            or f"mosquitto@{socket.gethostname()}:{self.listen_port}"
        )

    # The other broker nodes' listeners (HOST:PORT): announce sessions there, so that a
    # device connected to two nodes keeps only its newest session. Needs node_name.
    peers: tuple[str, ...] = ()
    node_name: str = ""  # this node among its peers (device id alphabet): the peer client id

    @property
    def peer_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(_parse_listen(peer, "peers") for peer in self.peers)

    @property
    def peer_client_id(self) -> str:
        """The client id this node's sidecar uses on its peers' listeners."""
        return f"{self.sidecar_cn}@{self.node_name}"

    @property
    def metrics_listen(self) -> tuple[str, int] | None:
        if not self.metrics_address:
            return None
        return _parse_listen(self.metrics_address, "metrics_address")

    @property
    def cafile(self) -> Path:
        """Root + issuing CA: Mosquitto needs the chain up to the root."""
        return self.state_dir / "cafile.pem"

    @property
    def issuing_set(self) -> Path:
        """With cacerts_url: the issuing CAs (and roots) the plugin trusts, kept by the sidecar."""
        return self.state_dir / "issuing-set.pem"

    @property
    def cadir(self) -> Path:
        """With cacerts_url: Mosquitto's capath (``<subject hash>.<n>`` files)."""
        return self.state_dir / "cadir"

    @property
    def plugin_issuing_ca(self) -> Path:
        return self.issuing_set if self.cacerts_url else self.issuing_ca

    @property
    def crlfile(self) -> Path:
        return self.state_dir / "fleet.crl"

    @property
    def snapshot_file(self) -> Path:
        return self.state_dir / "revocations.txt"

    @property
    def connect_host(self) -> str:
        host = self.broker_host or self.listen_host
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
        return wildcard.get(host, host)

    def sidecar_sha256(self) -> str:
        """Hex SHA-256 of the sidecar certificate (DER), as the plugin pins it."""
        try:
            cert = x509.load_pem_x509_certificate(self.sidecar_cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the sidecar certificate {self.sidecar_cert}: {exc}",
                hint="Create it with `fleet-broker mosquitto sidecar-cert`.",
            ) from exc
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def load_settings(path: Path) -> MosquittoSettings:
    """Read and check the settings file; ConfigError with a hint when it is wrong."""
    hint = "Write the broker settings file; broker_plugins/mosquitto/config.py shows an example."
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint=hint) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint=hint) from exc
    try:
        return settings_from_mapping(raw, base_dir=path.resolve().parent)
    except ConfigError as exc:
        if exc.hint != ConfigError.hint:
            raise
        # The generic hint names fleet.toml; the setting to fix is in this file.
        raise ConfigError(
            exc.message,
            hint=f"Fix the setting named above in {path} (every key: "
            "broker_plugins/mosquitto/config.py), then write mosquitto.conf again: "
            f"fleet-broker mosquitto config --config {path} > mosquitto.conf",
        ) from None


def settings_from_mapping(raw: Mapping[str, Any], *, base_dir: Path) -> MosquittoSettings:
    unknown = set(raw) - {"store", "mosquitto"}
    loose = sorted(key for key in unknown if not isinstance(raw[key], Mapping))
    if loose:
        raise ConfigError(
            f"{', '.join(loose)}: not in a section; broker settings go under [mosquitto] "
            "(the store's url under [store])"
        )
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    store = raw.get("store", {})
    section = dict(raw.get("mosquitto", {}))
    if not isinstance(store, Mapping) or not isinstance(store.get("url"), str):
        raise ConfigError(
            "[store] url is required (the fleet store whose revocation feed we follow)"
        )
    fields = {f.name for f in dataclasses.fields(MosquittoSettings)} - {
        "store_url",
        "listen_host",
        "listen_port",
    }
    listen = section.pop("listen", "127.0.0.1:8883")
    unknown = set(section) - fields
    if unknown:
        raise ConfigError(f"unknown [mosquitto] key(s): {', '.join(sorted(unknown))}")
    host, port = _parse_listen(listen)
    values: dict[str, Any] = {}
    for name, value in section.items():
        if name in _PATHS:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"[mosquitto] {name} must be a non-empty path")
            candidate = Path(value)
            values[name] = candidate if candidate.is_absolute() else base_dir / candidate
        elif name in ("log_type", "peers"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[mosquitto] {name} must be a list of strings")
            values[name] = tuple(value)
        else:
            values[name] = value
    missing = [
        name
        for name in _PATHS
        if name not in values
        and name not in ("crl_cafile", "broker_cafile", "state_dir", "pid_file")
    ]
    if missing:
        raise ConfigError(f"[mosquitto] is missing: {', '.join(missing)}")
    values.setdefault("state_dir", base_dir / "state")
    values.setdefault("pid_file", values["state_dir"] / "mosquitto.pid")
    try:
        settings = MosquittoSettings(
            store_url=store["url"], listen_host=host, listen_port=port, **values
        )
    except TypeError as exc:  # pragma: no cover - guarded by the key checks above
        raise ConfigError(f"[mosquitto]: {exc}") from exc
    _check(settings)
    return settings


def _parse_listen(listen: object, key: str = "listen") -> tuple[str, int]:
    if not isinstance(listen, str):
        raise ConfigError(f"[mosquitto] {key} must be HOST:PORT")
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        example = "0.0.0.0:8883" if key == "listen" else "127.0.0.1:9883"
        raise ConfigError(f"[mosquitto] {key} {listen!r} must be HOST:PORT, e.g. {example}")
    return host.strip("[]"), int(port)


def _check(s: MosquittoSettings) -> None:
    for name in (
        "crl_url", "sidecar_cn", "acl_template", "broker_host", "user", "cacerts_url",
        "broker_name",
    ):  # fmt: skip
        if not isinstance(getattr(s, name), str):
            raise ConfigError(f"[mosquitto] {name} must be a string")
    if not s.sidecar_cn or all(c.isalnum() or c in "._-" for c in s.sidecar_cn):
        # A sidecar CN inside the device id alphabet could be enrolled by a device.
        raise ConfigError(
            f"[mosquitto] sidecar_cn {s.sidecar_cn!r} must contain a character outside "
            "A-Z a-z 0-9 . _ - (e.g. 'fleet:sidecar'), so no device can ever hold it"
        )
    if any(c.isspace() for c in s.sidecar_cn + s.acl_template):
        raise ConfigError("[mosquitto] sidecar_cn and acl_template must not contain spaces")
    t = s.acl_template
    # The shape the C plugin matches, and then the kernel's template rule (the
    # embedded broker's too): %u a whole level, no '$' start, a valid filter.
    if t.count("%u") != 1 or not t.endswith("/#") or "+" in t or "#" in t[:-1]:
        raise ConfigError(
            f"[mosquitto] acl_template {t!r} must contain one %u, end in /# and have "
            "no other wildcard (e.g. devices/%u/#)"
        )
    try:
        TopicAcl((t.replace("%u", ACL_PLACEHOLDER),))
    except AclConfigError as exc:
        raise ConfigError(
            f"[mosquitto] acl_template: {exc}".replace(ACL_PLACEHOLDER, "%u")
        ) from exc
    if s.crl_url and not s.crl_url.startswith(("http://", "https://")):
        raise ConfigError(f"[mosquitto] crl_url {s.crl_url!r} is not an http(s) URL")
    for name in ("max_staleness_seconds", "skew_seconds"):
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"[mosquitto] {name} must be a whole number >= 0")
    limit = s.max_packet_bytes
    if (
        not isinstance(limit, int)
        or isinstance(limit, bool)
        or not (MIN_PACKET_BYTES <= limit <= MQTT_MAX_PACKET_BYTES)
    ):
        raise ConfigError(
            f"[mosquitto] max_packet_bytes must be a whole number from {MIN_PACKET_BYTES} "
            f"to {MQTT_MAX_PACKET_BYTES}"
        )
    if s.cacerts_url and not s.cacerts_url.startswith("https://"):
        raise ConfigError(f"[mosquitto] cacerts_url {s.cacerts_url!r} is not an https URL")
    for name in ("heartbeat_seconds", "crl_refresh_seconds", "ca_refresh_seconds"):
        value = getattr(s, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"[mosquitto] {name} must be a positive number")
    if s.max_staleness_seconds and s.max_staleness_seconds < 2 * s.heartbeat_seconds:
        raise ConfigError(
            "[mosquitto] max_staleness_seconds must be at least twice heartbeat_seconds"
        )
    if not isinstance(s.metrics_address, str):
        raise ConfigError("[mosquitto] metrics_address must be HOST:PORT")
    s.metrics_listen  # noqa: B018 - parses, raising ConfigError when malformed
    for name in ("pin_sidecar", "crl_backstop"):
        if not isinstance(getattr(s, name), bool):
            raise ConfigError(f"[mosquitto] {name} must be true or false")
    if s.crl_backstop and not s.crl_url:
        raise ConfigError("[mosquitto] crl_backstop needs crl_url (the CRL to check)")
    if not isinstance(s.node_name, str):
        raise ConfigError("[mosquitto] node_name must be a string")
    if s.peers:
        s.peer_addresses  # noqa: B018 - parses, raising ConfigError when malformed
        if not s.node_name:
            raise ConfigError(
                "[mosquitto] peers needs node_name (this node's name among its peers, unique)"
            )
    if s.node_name and not is_device_id(s.node_name):
        # The plugin checks the peer client id's node part with the device id rule.
        raise ConfigError(
            f"[mosquitto] node_name {s.node_name!r} must follow the device id rule "
            "(1-64 of A-Z a-z 0-9 . _ -)"
        )
    # After node_name: the reported name defaults to it.
    try:
        check_broker_name(s.reported_name)
    except ValueError as exc:
        raise ConfigError(f"[mosquitto] broker_name: {exc}") from None
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(f"[mosquitto] log_format must be one of {', '.join(LOG_FORMATS)}")
