"""`fleet init`: a complete, working data directory in one step.

Layout (directories 0700, private keys 0600)::

    DIR/fleet.toml          settings (no secrets)
    DIR/fleet.db            SQLite store (the embedded default)
    DIR/ca/root.pem         fleet root CA(s) — devices pin the SHA-256 of the first (the
                            signing root); during a root rollover the old root follows it
    DIR/ca/root.key         absent with --offline-root DIR (then DIR/root.key, on removable
                            media) or with a PKCS#11 token; needed only to sign a new CA
    DIR/ca/links.pem        during a root rollover only: OldWithNew, NewWithOld (`fleet ca
                            rotate-root`), served by /cacerts
    DIR/ca/issuing.pem      issuing CA (pathlen 0): signs device certificates
    DIR/ca/issuing.key
    DIR/ca/issuing-set.pem  every trusted issuing CA (fleet.ca_registry keeps it current)
    DIR/ca/admin.pem        admin CA (pathlen 0): signs admin client certificates only
    DIR/ca/admin.key
    DIR/tls/server.pem      server TLS certificate (signed by the root, no CRL DP)
    DIR/tls/server.key

With ``--pkcs11-uri`` the root, issuing and admin keys are generated inside the
token instead (labels ``fleet-root``, ``fleet-issuing``, ``fleet-admin``, each
with a random CKA_ID) and no ``ca/*.key`` file is written: fleet.toml records
their URIs. The server TLS key stays a file, because the server must start
unattended and its TLS stack signs handshakes in-process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from fleet.ca_registry import ISSUING_SET
from fleet.config import CONFIG_FILENAME
from fleet.kernel.domains import FleetAuthorities
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import PUBLIC_MODE, SECRET_MODE, ensure_private_dir, write_atomic
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.keys import KeyType
from fleet.pki.ca import (
    CertifiedKey,
    certificate_to_pem,
    create_issuing_ca,
    create_root_ca,
    create_server_certificate,
)
from fleet.pki.ceremony import ISSUING_VALIDITY
from fleet.pki.keys import PrivateKey, private_key_to_pem
from fleet.pki.keystore import KeyRole, token_uri_of

# Everything `fleet init` creates, so that --force removes exactly that.
_MANAGED = (
    "fleet.toml", "fleet.db", "fleet.db-wal", "fleet.db-shm", "ca", "tls", "ui-session.key",
)  # fmt: skip

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
# README "CA lifetime": a root outlives any device (10-15 years in the field)
# with room for one planned rollover; issuing CAs rotate within a device's life.
ROOT_VALIDITY = dt.timedelta(days=20 * 365)
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)


@dataclasses.dataclass(frozen=True, slots=True)
class TokenInit:
    """`fleet init --pkcs11-uri`: make the CA keys with ``make`` and record where they are."""

    make: Callable[[KeyRole, KeyType], PrivateKey]
    module: Path
    pin_file: Path | None  # None: the PIN comes from FLEET_PKCS11_PIN


@dataclasses.dataclass(frozen=True, slots=True)
class InitResult:
    data_dir: Path
    config_path: Path
    root_fingerprint: str
    server_names: tuple[str, ...]


def init_data_dir(
    data_dir: Path,
    *,
    now: dt.datetime,
    server_names: Sequence[str] = (),
    key_type: KeyType = KeyType.EC_P256,
    force: bool = False,
    passphrase: bytes | None = None,
    token: TokenInit | None = None,
    offline_root: Path | None = None,
) -> InitResult:
    """Create CA material, server TLS certificate and fleet.toml in ``data_dir``.

    The SQLite database is created by the caller through the store (wiring
    picks backends), so this module stays free of storage code.
    """
    data_dir = data_dir.resolve()
    existing = [name for name in _MANAGED if (data_dir / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"{data_dir} already holds a fleet data directory ({', '.join(existing)})",
            reason="data_dir_exists",
            hint="Use another directory, or pass --force to DESTROY its CA and database.",
        )
    names = _dedupe([*DEFAULT_SERVER_NAMES, *server_names])
    dns_names, ips = _split_names(names)

    ensure_private_dir(data_dir)
    for name in existing:
        target = data_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

    if offline_root is not None:
        if token is not None:
            raise ConfigError(
                "--offline-root and --pkcs11-uri both name a place for the root key",
                hint="Keep the root offline (removable media) or in the token, not both.",
            )
        offline_root = offline_root.resolve()
        if offline_root == data_dir or data_dir in offline_root.parents:
            raise ConfigError(
                f"--offline-root {offline_root} is inside the data directory",
                hint="Give a directory on removable media, outside the data directory.",
            )
        if (offline_root / "root.key").exists() and not force:
            raise ConfigError(
                f"{offline_root} already holds a root key",
                reason="data_dir_exists",
                hint="Use other media, or pass --force to replace that root.",
            )

    def key(role: KeyRole) -> PrivateKey | None:
        return token.make(role, key_type) if token is not None else None

    root = create_root_ca(
        "fleet root CA", now=now, key_type=key_type, validity=ROOT_VALIDITY, key=key(KeyRole.ROOT)
    )
    issuing = create_issuing_ca(
        root,
        "fleet device issuing CA",
        now=now,
        key_type=key_type,
        validity=ISSUING_VALIDITY,
        key=key(KeyRole.ISSUING),
    )
    server = create_server_certificate(
        root,
        common_name=names[0],
        dns_names=dns_names,
        ip_addresses=ips,
        now=now,
        key_type=key_type,
    )
    admin_ca = create_issuing_ca(
        root, "fleet admin CA", now=now, key_type=key_type, key=key(KeyRole.ADMIN)
    )
    # The kernel's trust-domain rule, checked before anything is written.
    FleetAuthorities(
        roots=(root.certificate,), issuing=(issuing.certificate,), admin=(admin_ca.certificate,)
    )
    if offline_root is None:
        _write_pair(data_dir / "ca", "root", root, passphrase)
    else:
        # The root key goes only to the offline directory; the data directory
        # gets the certificate, which is all the online server needs.
        _write_pair(offline_root, "root", root, passphrase)
        ensure_private_dir(data_dir / "ca")
        write_atomic(
            data_dir / "ca" / "root.pem", certificate_to_pem(root.certificate), mode=PUBLIC_MODE
        )
    _write_pair(data_dir / "ca", "issuing", issuing, passphrase)
    _write_pair(data_dir / "ca", "admin", admin_ca, passphrase)
    write_atomic(
        data_dir / "ca" / ISSUING_SET, certificate_to_pem(issuing.certificate), mode=PUBLIC_MODE
    )
    _write_pair(data_dir / "tls", "server", server, None)  # the server must start unattended
    config_path = data_dir / CONFIG_FILENAME
    text = _config_text(names)
    if token is not None:
        text = _with_token_keys(text, token, root=root, issuing=issuing, admin=admin_ca)
    write_atomic(config_path, text.encode(), mode=0o640)
    return InitResult(
        data_dir=data_dir,
        config_path=config_path,
        root_fingerprint=sha256_fingerprint(root.certificate),
        server_names=tuple(names),
    )


def _write_pair(directory: Path, stem: str, pair: CertifiedKey, passphrase: bytes | None) -> None:
    ensure_private_dir(directory)
    if token_uri_of(pair.private_key) is None:  # a token key stays in the token
        write_atomic(
            directory / f"{stem}.key",
            private_key_to_pem(pair.private_key, passphrase),
            mode=SECRET_MODE,
        )
    write_atomic(directory / f"{stem}.pem", certificate_to_pem(pair.certificate), mode=PUBLIC_MODE)


def _with_token_keys(
    text: str, token: TokenInit, *, root: CertifiedKey, issuing: CertifiedKey, admin: CertifiedKey
) -> str:
    """fleet.toml with the token keys' URIs, the module and where the PIN comes from."""

    def uri(pair: CertifiedKey) -> str:
        return _toml_string(str(token_uri_of(pair.private_key)))

    pin = (
        f"pkcs11_pin_file = {_toml_string(str(token.pin_file.resolve()))}"
        if token.pin_file is not None
        else '# pkcs11_pin_file = "..."      # the PIN comes from FLEET_PKCS11_PIN'
    )
    ca_lines = f"""\
# The CA keys are in a PKCS#11 token (RFC 7512 URIs; never extractable).
key_store = {uri(issuing)}
root_key_store = {uri(root)}
pkcs11_module = {_toml_string(str(token.module.absolute()))}
{pin}
"""
    text = text.replace('issuing_key = "ca/issuing.key"\n', ca_lines, 1)
    return (
        text
        + f"""
[admin]
key_store = {uri(admin)}
"""
    )


def _toml_string(value: str) -> str:
    # Basic TOML string: URIs and paths here are printable; escape what TOML needs.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dedupe(names: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name not in seen:
            seen.append(name)
    return seen


def _split_names(
    names: Sequence[str],
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for name in names:
        try:
            ips.append(ipaddress.ip_address(name))
        except ValueError:
            if not _is_dns_name(name):
                raise ConfigError(
                    f"--server-name {name!r} is neither an IP address nor a DNS name",
                    hint="Give a host name such as est.example.com or an address such as 10.0.0.5.",
                ) from None
            dns.append(name.lower())
    return dns, ips


def _is_dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)


def _config_text(server_names: Sequence[str]) -> str:
    names = ", ".join(f'"{n}"' for n in server_names)
    return f"""\
# fleet configuration, written by `fleet init`. Relative paths are relative to
# this file. FLEET_<SECTION>_<KEY> environment variables override any setting,
# e.g. FLEET_STORE_URL=postgresql://fleet@127.0.0.1:5432/fleet. Secrets do not belong here:
# the CA key passphrase comes from FLEET_CA_KEY_PASSPHRASE or [ca] key_passphrase_file.
# Server certificate names: {names}

[store]
# sqlite:PATH (embedded default, one machine); postgresql://USER@HOST:PORT/DB
# (several nodes; run `fleet db upgrade` first; see the README's "Scale out");
# redis://HOST:PORT/DB only if durable: appendonly yes + appendfsync always, or
# [store.redis] min_replicas = N (allow_volatile = true: tests and demos only).
url = "sqlite:fleet.db"

[server]
listen = "127.0.0.1:8443"
tls_cert = "tls/server.pem"
tls_key = "tls/server.key"
workers = 1

[ca]
root_cert = "ca/root.pem"
issuing_cert = "ca/issuing.pem"
issuing_key = "ca/issuing.key"
reload_seconds = 2            # running servers pick up `fleet ca promote` within this (or SIGHUP)

[profile]
# Operational device certificates.
validity_days = 30
backdate_minutes = 5          # tolerate device clocks a little behind
key_types = ["ec-p256", "ec-p384", "ed25519"]
organization = ""
crl_url = ""                  # public URL of /crl, put in issued certificates when set;
                              # ".../crl/{{issuer}}": each certificate names its own issuer's CRL
ocsp_url = ""                 # public URL of /ocsp, put in issued certificates when set

[policy]
unknown_devices = "hold"      # hold (202, wait for `fleet device approve`) | reject (403)
bootstrap_reuse = "hold"      # bootstrap cert used again on an active device: hold (a pending
                              # replacement request beside it) | reject (403); never changes it
renewal_overlap = "previous"  # previous (old cert good until the new one is used) | none
device_id_source = "cn"       # cn | serialNumber of the bootstrap certificate subject
retry_after_seconds = 60
max_chain_depth = 3           # intermediate CAs allowed below a manufacturer root

[est]
base64_line_length = 64       # 0 = one line (strongSwan < 5.9.11 needs that; libest
                              # breaks on lines over 1,024: give old strongSwan a label)
require_pop = false           # tls-unique in challengePassword (TLS 1.2 only)
serverkeygen = false
# strongSwan's `pki --est` sends simplereenroll whenever it presents a certificate,
# its factory certificate included. true: a simplereenroll authenticated by a
# trusted manufacturer (bootstrap) certificate is a first enrollment, under the
# same manifest and bootstrap_reuse policy; one with an operational certificate
# stays a renewal. false: only operational certificates may use simplereenroll.
bootstrap_on_reenroll = true

# EST labels: /.well-known/est/NAME/... (and NAME/.well-known/est/..., which is
# what `pki --est --url https://HOST/NAME` asks for), each with its own profile
# settings (as in [profile]) and optionally its own base64_line_length.
# [labels.oldswan]
# base64_line_length = 0      # strongSwan before 5.9.11

[ui]
# The admin console at https://HOST:PORT/ui/ : sign in with an admin token
# (`fleet admin token NAME --role ROLE`) or an admin client certificate
# (`fleet admin create`); roles as in the admin API. false turns it off.
enabled = true
session_minutes = 480         # then sign in again; `fleet admin disable` ends sessions at once
session_key_file = "ui-session.key"  # cookie signing key shared by all workers; made if missing
"""
