"""fleet.toml, validated once into frozen typed objects.

Only CLIs call :func:`load_config`; everything else receives a
:class:`FleetConfig`. ``FLEET_<SECTION>_<KEY>`` environment variables override
the file (``FLEET_STORE_URL=redis://...``). Relative paths are relative to the
directory holding fleet.toml. Secrets never live here: the CA key passphrase
comes from a file named here or from ``FLEET_CA_KEY_PASSPHRASE``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from fleet.kernel.errors import ConfigError
from fleet.kernel.keys import KeyType, parse_key_type
from fleet.kernel.reasons import Reason
from fleet.pki.pkcs11_uri import parse_pkcs11_uri
from fleet.pki.profile import DeviceProfile
from fleet.store.redis_durability import RedisDurability

CONFIG_FILENAME = "fleet.toml"
# Secrets read from the environment by name; never config overrides.
SECRET_ENV = frozenset(
    {
        "FLEET_CA_KEY_PASSPHRASE",
        "FLEET_ADMIN_TOKEN",
        "FLEET_WEBHOOK_SECRET",
        "FLEET_ADMIN_TOKEN_FILE",
        "FLEET_PKCS11_PIN",
    }
)

_T = TypeVar("_T")
# A manufacturer chain deeper than this is a mistake, not a hierarchy.
MAX_CHAIN_DEPTH_LIMIT = 8
_SECTIONS = (
    "store", "server", "ca", "policy", "est", "profile", "revocation", "admin", "webhooks", "ui",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:8443"
    tls_cert: Path = Path("tls/server.pem")
    tls_key: Path = Path("tls/server.key")
    workers: int = 1
    # "tls": fleet terminates TLS itself. "proxy": a reverse proxy (nginx)
    # terminates TLS and forwards the client certificate in a header, which is
    # believed only from trusted_proxies; fleet then listens on plain HTTP.
    mode: str = "tls"
    trusted_proxies: tuple[str, ...] = ()
    client_cert_header: str = "X-SSL-Client-Cert"
    max_in_flight: int = 256  # per worker; beyond it: 503 + Retry-After
    body_timeout_seconds: int = 10
    handshake_timeout_seconds: int = 10
    # Also the idle keep-alive timeout: aiohttp closes a connection that has
    # not completed a request's headers within it (slowloris).
    header_timeout_seconds: int = 10


@dataclasses.dataclass(frozen=True, slots=True)
class CaConfig:
    root_cert: Path = Path("ca/root.pem")
    issuing_cert: Path = Path("ca/issuing.pem")
    issuing_key: Path = Path("ca/issuing.key")
    # A file holding the issuing key's passphrase; empty = key not encrypted
    # (or FLEET_CA_KEY_PASSPHRASE set).
    key_passphrase_file: Path | None = None
    # Where the CA keys live: "file" (issuing_key; the root key beside root_cert)
    # or an RFC 7512 URI naming a key in a PKCS#11 token. key_store is the issuing
    # CA key, which also signs the CRL and OCSP answers.
    key_store: str = "file"
    root_key_store: str = "file"
    # The token's PKCS#11 library; its user PIN comes from pkcs11_pin_file
    # (mode 0600 or 0400) or FLEET_PKCS11_PIN, never from fleet.toml.
    pkcs11_module: Path | None = None
    pkcs11_pin_file: Path | None = None
    # How often a running server checks the issuing-CA set (fleet ca promote,
    # rotate-issuing, retire) for a change; SIGHUP checks at once.
    reload_seconds: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.reload_seconds <= 3600:
            raise ConfigError(f"[ca] reload_seconds must be 1..3600, got {self.reload_seconds}")


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyConfig:
    unknown_devices: str = "hold"  # hold | reject
    bootstrap_reuse: str = "hold"  # hold | reject
    # previous: a renewed certificate stays good until its successor is used or it
    # expires; none: it is superseded (revoked) as soon as its successor is issued.
    renewal_overlap: str = "previous"  # previous | none
    device_id_source: str = "cn"  # cn | serialNumber
    retry_after_seconds: int = 60
    # Intermediate CAs allowed between a trusted manufacturer root and a
    # bootstrap certificate (IEEE 802.1AR hierarchies); 0 = signed by the root.
    max_chain_depth: int = 3


@dataclasses.dataclass(frozen=True, slots=True)
class EstConfig:
    base64_line_length: int = 64
    # strongSwan's `pki --est` sends simplereenroll whenever it presents a
    # certificate, its bootstrap certificate included: such a request,
    # authenticated by a trusted manufacturer certificate, is a first enrollment.
    bootstrap_on_reenroll: bool = True
    require_pop: bool = False
    serverkeygen: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RevocationConfig:
    # An expired CRL makes brokers refuse the whole fleet: nextUpdate is far
    # ahead, and the CRL is re-signed long before it (and on every revocation).
    crl_next_update_hours: int = 48
    crl_refresh_minutes: int = 60
    ocsp_next_update_minutes: int = 60


@dataclasses.dataclass(frozen=True, slots=True)
class AdminConfig:
    # Admin client certificates come from their own CA (a fourth trust domain).
    ca_cert: Path = Path("ca/admin.pem")
    ca_key: Path = Path("ca/admin.key")
    key_store: str = "file"  # or a PKCS#11 URI, as [ca] key_store (same module and PIN)
    # Bulk operations touching more devices than this need --confirm.
    bulk_confirm_threshold: int = 100


@dataclasses.dataclass(frozen=True, slots=True)
class UiConfig:
    # The admin console at /ui/ (same credentials and roles as the admin API).
    enabled: bool = True
    # A signed-in session lasts this long (then sign in again); a disabled
    # admin credential ends its sessions at their next request anyway.
    session_minutes: int = 480
    # HMAC key of the session cookies, shared by every worker; `fleet serve`
    # creates it (32 random bytes, mode 0600) when it is missing.
    session_key_file: Path = Path("ui-session.key")


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookConfig:
    urls: tuple[str, ...] = ()
    # HMAC-SHA256 key for the X-Fleet-Signature header; or FLEET_WEBHOOK_SECRET.
    secret_file: Path | None = None
    max_attempts: int = 8


@dataclasses.dataclass(frozen=True, slots=True)
class FleetConfig:
    data_dir: Path
    store_url: str
    server: ServerConfig
    ca: CaConfig
    policy: PolicyConfig
    est: EstConfig
    profile: DeviceProfile
    revocation: RevocationConfig = RevocationConfig()
    admin: AdminConfig = AdminConfig()
    webhooks: WebhookConfig = WebhookConfig()
    ui: UiConfig = UiConfig()
    # [store.redis]: what a Redis system of record must guarantee.
    store_redis: RedisDurability = dataclasses.field(default_factory=RedisDurability)
    # EST labels (/.well-known/est/<label>/...): each selects a profile.
    labels: Mapping[str, DeviceProfile] = dataclasses.field(default_factory=dict)
    # A label's own [labels.NAME] base64_line_length, where it sets one: EST
    # clients disagree (strongSwan < 5.9.11 needs one line, libest <= 1 KB).
    label_line_lengths: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def profile_for(self, label: str | None) -> DeviceProfile | None:
        """The profile of an EST label (None: the default); None if unknown."""
        return self.profile if label is None else self.labels.get(label)

    def base64_line_length_for(self, label: str | None) -> int:
        """How EST responses on ``label`` wrap their base64 (0 = one line)."""
        if label is None:
            return self.est.base64_line_length
        return self.label_line_lengths.get(label, self.est.base64_line_length)


_CHOICES = {
    ("server", "mode"): ("tls", "proxy"),
    ("policy", "unknown_devices"): ("hold", "reject"),
    ("policy", "bootstrap_reuse"): ("hold", "reject"),
    ("policy", "renewal_overlap"): ("previous", "none"),
    ("policy", "device_id_source"): ("cn", "serialNumber"),
}


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> FleetConfig:
    """Read, override from the environment, and validate fleet.toml."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no config file at {path}",
            hint="Create one with `fleet init --dir DIR`, then pass --config DIR/fleet.toml.",
        ) from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    _apply_env_overrides(raw, environ)
    return parse_config(raw, base_dir=path.resolve().parent)


def _check_webhook_url(url: str) -> None:
    """An http(s) URL with a host and a valid port, or ConfigError: checked once here, so
    the notifier (which splits it for every log line) never meets one it cannot read."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0-65535
    except ValueError as exc:
        raise ConfigError(f"[webhooks] urls: {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"[webhooks] urls: {url!r} is not an http(s) URL with a host")


def parse_config(raw: Mapping[str, Any], *, base_dir: Path) -> FleetConfig:
    known = {
        "store", "server", "ca", "policy", "est", "profile", "labels",
        "revocation", "admin", "webhooks", "ui",
    }  # fmt: skip
    _refuse_unknown("fleet.toml", raw, known)
    store = _section(raw, "store")
    _refuse_unknown("[store]", store, {"url", "redis", *_FLAT_REDIS_KEYS})
    store_url = _typed(store, "store", "url", str, f"sqlite:{base_dir / 'fleet.db'}")
    store_redis = _store_redis(store)
    if store_url.startswith("sqlite:") and not store_url.startswith("sqlite:///"):
        relative = store_url.removeprefix("sqlite:")
        store_url = f"sqlite:///{(base_dir / relative).resolve()}"

    server = _dataclass_section(raw, "server", ServerConfig, base_dir)
    ca = _dataclass_section(raw, "ca", CaConfig, base_dir)
    policy = _dataclass_section(raw, "policy", PolicyConfig, base_dir)
    est = _dataclass_section(raw, "est", EstConfig, base_dir)
    revocation = _dataclass_section(raw, "revocation", RevocationConfig, base_dir)
    admin = _dataclass_section(raw, "admin", AdminConfig, base_dir)
    webhooks = _dataclass_section(raw, "webhooks", WebhookConfig, base_dir)
    ui = _dataclass_section(raw, "ui", UiConfig, base_dir)
    if not 5 <= ui.session_minutes <= 7 * 24 * 60:
        raise ConfigError("[ui] session_minutes must be from 5 to 10080 (a week)")
    for name, value in dataclasses.asdict(revocation).items():
        if value < 1:
            raise ConfigError(f"[revocation] {name} must be >= 1")
    if revocation.crl_refresh_minutes >= revocation.crl_next_update_hours * 60:
        raise ConfigError(
            "[revocation] crl_refresh_minutes must be well below crl_next_update_hours, "
            "or brokers see an expired CRL"
        )
    if admin.bulk_confirm_threshold < 1 or webhooks.max_attempts < 1:
        raise ConfigError("[admin] bulk_confirm_threshold and [webhooks] max_attempts must be >= 1")
    for url in webhooks.urls:
        _check_webhook_url(url)
    if server.workers < 1:
        raise ConfigError(f"[server] workers must be >= 1, got {server.workers}")
    limits = ("body_timeout_seconds", "handshake_timeout_seconds", "header_timeout_seconds")
    for key in ("max_in_flight", *limits):
        if getattr(server, key) < 1:
            raise ConfigError(f"[server] {key} must be >= 1")
    _check_proxies(server.trusted_proxies)
    _check_key_stores(ca, admin)
    if est.base64_line_length < 0:
        raise ConfigError("[est] base64_line_length must be >= 0 (0 = one line)")
    labels, line_lengths = _labels(_section(raw, "labels"))
    if policy.retry_after_seconds < 1:
        raise ConfigError("[policy] retry_after_seconds must be >= 1")
    if not 0 <= policy.max_chain_depth <= MAX_CHAIN_DEPTH_LIMIT:
        raise ConfigError(f"[policy] max_chain_depth must be 0-{MAX_CHAIN_DEPTH_LIMIT}")
    return FleetConfig(
        data_dir=base_dir,
        store_url=store_url,
        server=server,
        ca=ca,
        policy=policy,
        est=est,
        profile=_profile(_section(raw, "profile")),
        revocation=revocation,
        admin=admin,
        webhooks=webhooks,
        ui=ui,
        store_redis=store_redis,
        labels=labels,
        label_line_lengths=line_lengths,
    )


# FLEET_STORE_REDIS_MIN_REPLICAS arrives as [store] redis_min_replicas.
_FLAT_REDIS_KEYS = ("redis_min_replicas", "redis_allow_volatile")


def _store_redis(store: Mapping[str, Any]) -> RedisDurability:
    table = store.get("redis", {})
    if not isinstance(table, dict):
        raise ConfigError("[store] redis must be a table ([store.redis])")
    merged = {
        **table,
        **{k.removeprefix("redis_"): store[k] for k in _FLAT_REDIS_KEYS if k in store},
    }
    _refuse_unknown("[store.redis]", merged, {"min_replicas", "allow_volatile"})
    min_replicas = _typed(merged, "store.redis", "min_replicas", int, 0)
    allow_volatile = _typed(merged, "store.redis", "allow_volatile", bool, False)
    return RedisDurability(min_replicas=min_replicas, allow_volatile=allow_volatile)


_LABEL = re.compile(r"[A-Za-z0-9_-]{1,32}", re.ASCII)
# Path segments that are EST operations cannot be labels (RFC 7030 3.2.2).
_EST_OPERATIONS = {"cacerts", "simpleenroll", "simplereenroll", "csrattrs", "serverkeygen"}


def _labels(section: Mapping[str, Any]) -> tuple[dict[str, DeviceProfile], dict[str, int]]:
    labels: dict[str, DeviceProfile] = {}
    line_lengths: dict[str, int] = {}
    for name, table in section.items():
        if not _LABEL.fullmatch(name) or name in _EST_OPERATIONS:
            raise ConfigError(
                f"[labels.{name}]: a label is 1-32 of A-Z a-z 0-9 _ - and not an EST operation"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"[labels.{name}] must be a table")
        if "base64_line_length" in table:
            table = dict(table)
            length = table.pop("base64_line_length")
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise ConfigError(
                    f"[labels.{name}] base64_line_length must be an integer >= 0 (0 = one line), "
                    f"got {length!r}"
                )
            line_lengths[name] = length
        labels[name] = _profile(table, name=name, extra={"base64_line_length"})
    return labels, line_lengths


def _profile(
    section: Mapping[str, Any],
    name: str = "default",
    extra: frozenset[str] | set[str] = frozenset(),
) -> DeviceProfile:
    keys = {"validity_days", "backdate_minutes", "key_types", "organization", "crl_url", "ocsp_url"}
    where = "[profile]" if name == "default" else f"[labels.{name}]"
    _refuse_unknown(where, section, keys | extra)
    validity = _typed(section, "profile", "validity_days", int, 30)
    backdate = _typed(section, "profile", "backdate_minutes", int, 5)
    names = section.get("key_types", ["ec-p256", "ec-p384", "ed25519"])
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError("[profile] key_types must be a non-empty list of key type names")
    key_types = frozenset(parse_key_type(n) for n in names)
    preferred = KeyType.EC_P256 if KeyType.EC_P256 in key_types else parse_key_type(names[0])
    return DeviceProfile(
        name=name,
        validity=dt.timedelta(days=validity),
        backdate=dt.timedelta(minutes=backdate),
        allowed_key_types=key_types,
        preferred_key_type=preferred,
        organization=_typed(section, "profile", "organization", str, "") or None,
        crl_url=_typed(section, "profile", "crl_url", str, "") or None,
        ocsp_url=_typed(section, "profile", "ocsp_url", str, "") or None,
    )


def _dataclass_section(raw: Mapping[str, Any], name: str, cls: type[_T], base_dir: Path) -> _T:
    section = _section(raw, name)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _refuse_unknown(f"[{name}]", section, set(fields))
    values: dict[str, Any] = {}
    for key, value in section.items():
        default = fields[key].default
        if isinstance(default, Path) or key.endswith(("_file", "_cert", "_key", "_module")):
            if not isinstance(value, str):
                raise ConfigError(f"[{name}] {key} must be a path string, got {value!r}")
            values[key] = (base_dir / value).resolve() if value else None
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[{name}] {key} must be a list of strings, got {value!r}")
            values[key] = tuple(value)
        else:
            values[key] = _typed(section, name, key, type(default), default)
        allowed = _CHOICES.get((name, key))
        if allowed is not None and values[key] not in allowed:
            raise ConfigError(f"[{name}] {key} must be one of {', '.join(allowed)}, got {value!r}")
    for key, field in fields.items():
        if key not in values and isinstance(field.default, Path):
            values[key] = (base_dir / field.default).resolve()
    return cls(**values)


def _check_key_stores(ca: CaConfig, admin: AdminConfig) -> None:
    stores = {
        "[ca] key_store": ca.key_store,
        "[ca] root_key_store": ca.root_key_store,
        "[admin] key_store": admin.key_store,
    }
    in_token = [name for name, value in stores.items() if value != "file"]
    for name in in_token:
        parse_pkcs11_uri(stores[name], setting=name, key_required=True)
    if in_token and ca.pkcs11_module is None:
        raise ConfigError(
            f"{in_token[0]} names a PKCS#11 key but [ca] pkcs11_module is not set",
            reason=Reason.PKCS11_MODULE_UNAVAILABLE,
            hint="Set [ca] pkcs11_module to the token's library, e.g. "
            '"/usr/lib/softhsm/libsofthsm2.so".',
        )


def _check_proxies(proxies: tuple[str, ...]) -> None:
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"[server] trusted_proxies: {proxy!r} is not an IP address or network"
            ) from None


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = raw.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    return section


def _typed(section: Mapping[str, Any], name: str, key: str, kind: type[_T], default: _T) -> _T:
    value = section.get(key, default)
    # bool is an int in Python; a port or count given as `true` is a mistake.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"[{name}] {key} must be {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _refuse_unknown(where: str, section: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}",
            hint=f"Known settings here: {', '.join(sorted(known))}. Check for typos.",
        )


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """FLEET_<SECTION>_<KEY>=value, parsed as TOML when it looks like a value."""
    sections = _SECTIONS
    for name, text in environ.items():
        if not name.startswith("FLEET_") or name in SECRET_ENV:
            continue
        rest = name.removeprefix("FLEET_").lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest.removeprefix(section + "_")
        raw.setdefault(section, {})[key] = _env_value(name, text)


def _env_value(name: str, text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if any(c in text for c in "\n\"'"):
            raise ConfigError(f"environment variable {name} is not a valid value") from None
        return text  # a bare string such as a URL or a path
