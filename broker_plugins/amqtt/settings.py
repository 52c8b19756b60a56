"""`fleet-broker amqtt` settings: one TOML file and/or flags, validated once into a frozen object.

Example ``broker.toml`` (paths are relative to the file)::

    [listener]
    address = "127.0.0.1:8883"
    tls_cert = "tls/broker.pem"     # server certificate (+ chain)
    tls_key = "tls/broker.key"
    fleet_ca = "ca/fleet-ca.pem"    # fleet issuing CA(s) + root: who may sign devices
    # Optional: follow issuing-CA rotations from the fleet server (re-read every
    # ca_refresh_seconds; only CAs signed by a root already in fleet_ca are taken).
    # cacerts_url = "https://fleet.example:8443/.well-known/est/cacerts"

    [store]
    url = "sqlite:///var/lib/fleet/fleet.db"   # or postgresql://fleet@db/fleet, redis://host:6379/0

    [revocation]
    max_staleness = 30    # seconds without contact with the feed ...
    fail_open = false     # ... then refuse every connect (false) or keep deciding (true)
    snapshot_file = "revocations.snapshot"   # the default: beside broker.toml
    broker_name = "mqtt-1"   # its feed position, as the admin console shows it

    [acl]
    templates = ["devices/{device_id}/#"]

    [session]
    expiry_seconds = 86400   # persistent sessions of disconnected devices
    skew_seconds = 300       # certificate validity allowance

    [metrics]
    address = "127.0.0.1:9883"   # optional Prometheus endpoint

Revocation state (DESIGN.md §7):

* **Fail closed, after 30 s by default.** When the broker has had no answer
  from the store's revocation feed for ``max_staleness`` seconds, every new
  connect is refused with reason ``revocation_state_stale`` (the refusal log
  line and ``fleet_broker_connects_refused_total{reason="revocation_state_stale"}``
  say so; ``fleet_broker_revocation_usable`` is 0 and
  ``fleet_broker_revocation_staleness_seconds`` shows how long). Sessions
  already admitted stay up. ``fail_open = true`` keeps deciding on the last
  data known instead; what was revoked stays out either way.
* **Persisted.** Every revoked serial and device id the broker learns is
  written to ``snapshot_file`` (0600, atomically and durably, at most ~0.2 s
  plus two writes after the revocation; see broker_plugins/revocation_persistence.py)
  and merged back at start before anything is admitted: losing the store's
  contents (a Redis without persistence restarted, a FLUSHALL) never
  re-admits a revoked certificate or device, whatever the order in which
  store and broker restart. Relative paths are relative to broker.toml; the
  default is ``revocations.snapshot`` beside it (beside ``fleet_ca`` when
  there is no config file). Keep the file: deleting it is what would let a
  revoked device back in after a store loss. A damaged file stops the start.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import ssl
import tomllib
from pathlib import Path
from typing import Any

from cryptography import x509

from fleet.kernel.acl import DEFAULT_TEMPLATE, AclConfigError, TopicAcl
from fleet.kernel.admission import TrustPolicy
from fleet.kernel.errors import ConfigError
from fleet.kernel.tls_policy import TLS12_CIPHERS, X509_V_FLAG_NO_CHECK_TIME
from fleet.store.broker_positions import check_broker_name

DEFAULT_SNAPSHOT_NAME = "revocations.snapshot"


@dataclasses.dataclass(frozen=True, slots=True)
class AmqttSettings:
    host: str
    port: int
    tls_cert: Path
    tls_key: Path
    fleet_ca: Path
    store_url: str
    max_staleness: float = 30.0
    fail_open: bool = False
    topic_templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    session_expiry_seconds: int = 86400
    skew_seconds: float = 300.0
    metrics_host: str | None = None
    metrics_port: int | None = None
    # None: DEFAULT_SNAPSHOT_NAME beside fleet_ca (load_settings puts it beside broker.toml).
    snapshot_file: Path | None = None
    # The fleet server's EST /cacerts: fleet_ca follows issuing-CA rotations
    # (broker_plugins.ca_refresh); None = fleet_ca is only re-read when it changes.
    cacerts_url: str | None = None
    ca_refresh_seconds: float = 5.0
    # The name this broker reports its feed position under (the admin console's
    # Overview); None: "amqtt@<hostname>:<port>".
    broker_name: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"listener port {self.port} is out of range")
        try:
            check_broker_name(self.reported_name)
        except ValueError as exc:
            raise ConfigError(f"revocation.broker_name: {exc}") from None
        if self.max_staleness <= 0:
            raise ConfigError("revocation.max_staleness must be positive")
        if not 0.1 <= self.ca_refresh_seconds <= 86400:
            raise ConfigError("listener.ca_refresh_seconds must be between 0.1 and 86400")
        if self.skew_seconds < 0 or self.session_expiry_seconds < 0:
            raise ConfigError("session.skew_seconds and expiry_seconds must not be negative")
        for path in (self.tls_cert, self.tls_key, self.fleet_ca):
            if not path.is_file():
                raise ConfigError(f"{path} does not exist", hint="Check the path in broker.toml.")
        try:
            TopicAcl(self.topic_templates)
        except AclConfigError as exc:
            raise ConfigError(str(exc)) from exc

    def acl(self) -> TopicAcl:
        return TopicAcl(self.topic_templates)

    @property
    def reported_name(self) -> str:
        return self.broker_name or f"amqtt@{socket.gethostname()}:{self.port}"

    @property
    def revocation_snapshot_file(self) -> Path:
        """Where the revocation state survives restarts (never None: it is not optional)."""
        if self.snapshot_file is not None:
            return self.snapshot_file
        return self.fleet_ca.parent / DEFAULT_SNAPSHOT_NAME

    def trust_policy(self) -> TrustPolicy:
        try:
            certs = x509.load_pem_x509_certificates(self.fleet_ca.read_bytes())
            return TrustPolicy.from_bundle(certs, skew=dt.timedelta(seconds=self.skew_seconds))
        except ValueError as exc:
            raise ConfigError(f"fleet CA bundle {self.fleet_ca}: {exc}") from exc

    def ssl_context(self) -> ssl.SSLContext:
        """Server context that REQUIRES a client certificate chaining to the fleet CA bundle."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHERS)  # as strict as the EST server: forward-secret AEAD only
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
            ctx.load_verify_locations(cafile=str(self.fleet_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the broker TLS files: {exc}") from exc
        # Validity is judged at admission, with the broker's clock and a logged reason.
        ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        return ctx


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} {text!r} must be HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_settings(config: Path | None, overrides: dict[str, Any]) -> AmqttSettings:
    """Settings from ``config`` (TOML), then non-None ``overrides`` (flags) on top."""
    try:
        return _load_settings(config, overrides)
    except ConfigError as exc:
        if exc.hint != ConfigError.hint:
            raise
        # The generic hint names fleet.toml; the setting to fix is the broker's.
        where = f"in {config} or its flag" if config is not None else "(a flag)"
        raise ConfigError(
            exc.message,
            hint=f"Fix the setting named above {where}: fleet-broker amqtt --help; every "
            "broker.toml key: broker_plugins/amqtt/settings.py.",
        ) from None


def _load_settings(config: Path | None, overrides: dict[str, Any]) -> AmqttSettings:
    values: dict[str, Any] = {}
    base = Path.cwd()
    if config is not None:
        try:
            data = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {config}: {exc}") from exc
        base = config.parent
        values = _flatten(data)
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    known = {f.name for f in dataclasses.fields(AmqttSettings)} | {"listen", "metrics_listen"}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown broker settings: {', '.join(sorted(unknown))}")
    if "listen" in values:
        values["host"], values["port"] = parse_address(str(values.pop("listen")), "listen address")
    if values.get("metrics_listen"):
        values["metrics_host"], values["metrics_port"] = parse_address(
            str(values.pop("metrics_listen")), "metrics address"
        )
    values.pop("metrics_listen", None)
    if config is not None:
        values.setdefault("snapshot_file", DEFAULT_SNAPSHOT_NAME)
    for key in ("tls_cert", "tls_key", "fleet_ca", "snapshot_file"):
        if key in values:
            values[key] = (base / Path(values[key])).resolve()
    missing = [
        k for k in ("host", "tls_cert", "tls_key", "fleet_ca", "store_url") if k not in values
    ]
    if missing:
        raise ConfigError(
            f"missing broker settings: {', '.join(missing)}",
            hint="Give them in broker.toml or as --listen/--tls-cert/--tls-key/--fleet-ca/"
            "--store-url.",
        )
    if "topic_templates" in values:
        values["topic_templates"] = tuple(values["topic_templates"])
    try:
        return AmqttSettings(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid broker settings: {exc}") from exc


_TOML_KEYS = {
    ("listener", "address"): "listen",
    ("listener", "tls_cert"): "tls_cert",
    ("listener", "tls_key"): "tls_key",
    ("listener", "fleet_ca"): "fleet_ca",
    ("listener", "cacerts_url"): "cacerts_url",
    ("listener", "ca_refresh_seconds"): "ca_refresh_seconds",
    ("store", "url"): "store_url",
    ("revocation", "max_staleness"): "max_staleness",
    ("revocation", "fail_open"): "fail_open",
    ("revocation", "snapshot_file"): "snapshot_file",
    ("revocation", "broker_name"): "broker_name",
    ("acl", "templates"): "topic_templates",
    ("session", "expiry_seconds"): "session_expiry_seconds",
    ("session", "skew_seconds"): "skew_seconds",
    ("metrics", "address"): "metrics_listen",
}


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"broker.toml: {section!r} must be a [section]")
        for key, value in table.items():
            name = _TOML_KEYS.get((section, key))
            if name is None:
                raise ConfigError(f"broker.toml: unknown setting [{section}] {key}")
            values[name] = value
    return values
