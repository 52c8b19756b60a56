"""`fleet-broker mosquitto init`: an enforcing Mosquitto node from a fleet data directory.

Writes, into one broker directory (BROKERDIR)::

    broker.toml                     the settings (commented; config.py documents them)
    mosquitto.conf                  generated from broker.toml (`fleet-broker mosquitto config`)
    fleet_plugin.so                 the compiled plugin (`fleet-broker mosquitto build`)
    ca/root.pem, ca/issuing.pem     the fleet's CA certificates (public)
    tls/broker.pem, tls/broker.key  the broker's TLS server certificate, fleet root, SANs
    sidecar.pem, sidecar.key        the sidecar's client certificate, issuing CA
    state/                          cafile, crlfile, snapshot, pid file (sidecar and mosquitto)
    systemd/fleet-broker-sync.service             the sidecar (sync --once, then sync)
    systemd/mosquitto.service.d/fleet.conf        mosquitto after the sidecar, this config

Keys are 0600. Nothing that exists is overwritten unless ``force``. Where the
fleet's CA keys are not (a broker host), ``csr_only`` writes the keys and
CSRs instead of the two certificates; ``fleet broker-cert sign`` on the CA host
signs them, and ``fleet-broker mosquitto config`` writes mosquitto.conf once
they are back.

Mosquitto drops to ``user`` when started as root: init chooses ``mosquitto``
when that account exists and can reach BROKERDIR (it then owns ``state/`` and
the server key), otherwise the invoking user; ``root`` only as a last resort,
with a warning.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pwd
import shutil
import stat
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from broker_plugins.mosquitto.build import PLUGIN_NAME, build_plugin
from broker_plugins.mosquitto.config import DEFAULT_SIDECAR_CN, load_settings
from broker_plugins.mosquitto.generated_conf import mosquitto_conf
from broker_plugins.mosquitto.identity import (
    issue_server_certificate,
    issue_sidecar_certificate,
    new_key,
    write_csr,
    write_key,
)
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import PUBLIC_MODE, write_atomic

BROKER_TOML = "broker.toml"
MOSQUITTO_CONF = "mosquitto.conf"
SERVER_CERT, SERVER_KEY, SERVER_CSR = "tls/broker.pem", "tls/broker.key", "tls/broker.csr"
SIDECAR_CERT, SIDECAR_KEY, SIDECAR_CSR = "sidecar.pem", "sidecar.key", "sidecar.csr"
ROOT_CA, ISSUING_CA = "ca/root.pem", "ca/issuing.pem"
STATE_DIR = "state"
SYNC_UNIT = "systemd/fleet-broker-sync.service"
MOSQUITTO_DROP_IN = "systemd/mosquitto.service.d/fleet.conf"
DEFAULT_LISTEN = "0.0.0.0:8883"
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
MOSQUITTO_USER = "mosquitto"


@dataclasses.dataclass(frozen=True)
class InitResult:
    broker_dir: Path
    written: tuple[Path, ...]
    user: str
    user_note: str
    csr_only: bool
    server_names: tuple[str, ...]


def fleet_store_url(fleet_data: Path) -> str:
    """The store URL of the fleet data directory's fleet.toml, made absolute."""
    config = fleet_data / "fleet.toml"
    try:
        raw = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read {config}: {exc}",
            hint="Give --store-url (the fleet store whose revocation feed the sidecar follows).",
        ) from exc
    store = raw.get("store", {})
    url = store.get("url", "sqlite:fleet.db") if isinstance(store, dict) else "sqlite:fleet.db"
    if not isinstance(url, str):
        raise ConfigError(f"{config}: [store] url must be a string")
    if url.startswith("sqlite:") and not url.startswith("sqlite:///"):
        url = f"sqlite:///{(fleet_data / url.removeprefix('sqlite:')).resolve()}"
    return url


def _reachable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Can ``uid`` traverse every directory down to ``path``? (mode bits only)"""
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except OSError:
            continue  # not created yet: init creates it world-traversable
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


def choose_user(broker_dir: Path) -> tuple[str, str]:
    """(mosquitto's `user`, why). It must be able to write state/ (the pid file)."""
    if os.geteuid() != 0:
        name = pwd.getpwuid(os.geteuid()).pw_name
        return name, f"not root: mosquitto runs as {name}, which owns {broker_dir}"
    try:
        account = pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return "root", f"no {MOSQUITTO_USER} account: mosquitto would run as root"
    gids = {account.pw_gid, *os.getgrouplist(MOSQUITTO_USER, account.pw_gid)}
    if not _reachable_by(broker_dir.resolve(), account.pw_uid, gids):
        return "root", (
            f"warning: user {MOSQUITTO_USER} cannot reach {broker_dir} (a parent directory "
            "is not traversable), so mosquitto runs as root; put BROKERDIR elsewhere "
            f"(e.g. /etc/fleet-broker) to run it as {MOSQUITTO_USER}"
        )
    return MOSQUITTO_USER, f"{MOSQUITTO_USER} owns {STATE_DIR}/ and the server key"


def broker_toml(*, store_url: str, listen: str, user: str, server_names: Sequence[str]) -> str:
    return f'''# fleet-broker: one Mosquitto node (written by `fleet-broker mosquitto init`).
# Every key is documented in broker_plugins/mosquitto/config.py. Relative paths are
# relative to this file. After editing, regenerate mosquitto.conf:
#     fleet-broker mosquitto config --config broker.toml > mosquitto.conf

[store]
# The fleet store whose revocation feed the sidecar follows (the server's [store] url).
url = "{store_url}"

[mosquitto]
listen = "{listen}"                 # the devices' mutual-TLS MQTT listener
# The broker's TLS server certificate: signed by the fleet root, which devices already
# trust; SANs: {", ".join(server_names)} (init --server-name; devices must dial one of them).
server_cert = "{SERVER_CERT}"
server_key = "{SERVER_KEY}"         # 0600
root_ca = "{ROOT_CA}"               # the fleet root (devices' chains end here)
issuing_ca = "{ISSUING_CA}"         # the CA(s) whose leaves may connect
plugin = "{PLUGIN_NAME}"            # `fleet-broker mosquitto build`
state_dir = "{STATE_DIR}"           # cafile, snapshot, crlfile, pid file
sidecar_cert = "{SIDECAR_CERT}"     # the sidecar's identity (CN fleet:sidecar, pinned)
sidecar_key = "{SIDECAR_KEY}"
user = "{user}"                     # mosquitto drops to it when started as root
log_format = "json"                 # the plugin's refusals and kicks as JSON lines
max_staleness_seconds = 30          # refuse devices when revocation data is older (fail closed)
# broker_name = "mosquitto-1"       # its feed position, as the admin console shows it
#                                   # (default mosquitto@<hostname>:<listen port>)
# metrics_address = "127.0.0.1:9883" # sidecar /metrics (plugin counters too); keep it loopback
# crl_url = "https://est.example.com:8443/crl"  # keep fleet serve's CRL here too (optional)
# crl_backstop = false              # true: Mosquitto's TLS layer checks that CRL as well; its
#                                   # refusals carry no device id or reason (see config.py)
# cacerts_url = "https://est.example.com:8443/.well-known/est/cacerts"  # follow issuing-CA
#                                   # rotations without a restart (README, CA lifetime)
# Several broker nodes: one session per device (the newest connection wins).
# node_name = "mqtt-a"              # unique among the nodes
# peers = ["10.0.0.12:8883"]        # the other nodes' listeners
'''


def sync_unit(broker_dir: Path, fleet_broker: str) -> str:
    config = broker_dir / BROKER_TOML
    return f"""# The fleet sidecar: revocation feed -> Mosquitto plugin (by fleet-broker init).
# Install: cp {broker_dir / SYNC_UNIT} /etc/systemd/system/
[Unit]
Description=fleet revocation sidecar for Mosquitto
After=network-online.target
Wants=network-online.target
Before=mosquitto.service

[Service]
Type=simple
# cafile, revocation snapshot (and CRL) before mosquitto starts
ExecStartPre={fleet_broker} mosquitto sync --config {config} --once
ExecStart={fleet_broker} mosquitto sync --config {config}
Restart=always
RestartSec=2
TimeoutStopSec=10

[Install]
WantedBy=multi-user.target
"""


def mosquitto_drop_in(broker_dir: Path, mosquitto: str) -> str:
    return f"""# Mosquitto with the fleet plugin, after the sidecar (written by fleet-broker init).
# Install: mkdir -p /etc/systemd/system/mosquitto.service.d &&
#          cp {broker_dir / MOSQUITTO_DROP_IN} /etc/systemd/system/mosquitto.service.d/
[Unit]
After=fleet-broker-sync.service
Wants=fleet-broker-sync.service

[Service]
ExecStart=
ExecStart={mosquitto} -c {broker_dir / MOSQUITTO_CONF}
"""


def _planned(csr_only: bool) -> list[str]:
    files = [BROKER_TOML, PLUGIN_NAME, ROOT_CA, ISSUING_CA, SERVER_KEY, SIDECAR_KEY, SYNC_UNIT]
    files.append(MOSQUITTO_DROP_IN)
    if csr_only:
        files += [SERVER_CSR, SIDECAR_CSR]
    else:
        files += [SERVER_CERT, SIDECAR_CERT, MOSQUITTO_CONF]
    return files


def init_broker_dir(
    fleet_data: Path,
    broker_dir: Path,
    *,
    now: dt.datetime,
    listen: str = DEFAULT_LISTEN,
    store_url: str | None = None,
    server_names: Sequence[str] = (),
    csr_only: bool = False,
    force: bool = False,
    passphrase: bytes | None = None,
) -> InitResult:
    names = tuple(dict.fromkeys(server_names or DEFAULT_SERVER_NAMES))
    for name in (ROOT_CA, ISSUING_CA):
        if not (fleet_data / name).is_file():
            raise ConfigError(
                f"{fleet_data / name} is missing",
                hint="--fleet-data is the directory `fleet init` wrote (at least its ca/root.pem "
                "and ca/issuing.pem; the CA keys too unless --csr-only).",
            )
    if not csr_only:
        for name in ("ca/root.key", "ca/issuing.key"):
            if not (fleet_data / name).is_file():
                raise ConfigError(
                    f"{fleet_data / name} is missing: the broker's certificates are signed "
                    "by the fleet's CAs",
                    hint="On a broker host without the CA keys use --csr-only, then "
                    "`fleet broker-cert sign` on the CA host.",
                )
    url = store_url or fleet_store_url(fleet_data)
    if not force:
        for name in _planned(csr_only):
            if (broker_dir / name).exists():
                raise ConfigError(
                    f"{broker_dir / name} exists; refusing to overwrite it",
                    hint="Choose an empty --out directory, or add --force to replace its files.",
                )
    broker_dir.mkdir(parents=True, exist_ok=True)
    broker_dir = broker_dir.resolve()
    written: list[Path] = []
    user, note = choose_user(broker_dir)

    for name in (ROOT_CA, ISSUING_CA):
        target = broker_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, (fleet_data / name).read_bytes(), mode=PUBLIC_MODE)
        written.append(target)
    if csr_only:
        for key_name, csr_name, kind, cn, san in (
            (SERVER_KEY, SERVER_CSR, "server", names[0], names),
            (SIDECAR_KEY, SIDECAR_CSR, "sidecar", DEFAULT_SIDECAR_CN, ()),
        ):
            key = new_key()
            write_key(broker_dir / key_name, key)
            write_csr(broker_dir / csr_name, key, kind, cn, san)  # type: ignore[arg-type]
            written += [broker_dir / key_name, broker_dir / csr_name]
    else:
        issue_server_certificate(
            root_cert=fleet_data / ROOT_CA, root_key=fleet_data / "ca/root.key",
            passphrase=passphrase, names=names,
            out_cert=broker_dir / SERVER_CERT, out_key=broker_dir / SERVER_KEY, now=now,
        )  # fmt: skip
        issue_sidecar_certificate(
            issuing_cert=fleet_data / ISSUING_CA, issuing_key=fleet_data / "ca/issuing.key",
            passphrase=passphrase, common_name=DEFAULT_SIDECAR_CN,
            out_cert=broker_dir / SIDECAR_CERT, out_key=broker_dir / SIDECAR_KEY, now=now,
        )  # fmt: skip
        written += [broker_dir / n for n in (SERVER_CERT, SERVER_KEY, SIDECAR_CERT, SIDECAR_KEY)]
    written.append(build_plugin(broker_dir))
    settings_path = broker_dir / BROKER_TOML
    write_atomic(
        settings_path,
        broker_toml(store_url=url, listen=listen, user=user, server_names=names).encode(),
        mode=PUBLIC_MODE,
    )
    written.append(settings_path)
    settings = load_settings(settings_path)  # checks what we wrote, as the sidecar will
    state = broker_dir / STATE_DIR
    state.mkdir(mode=0o755, exist_ok=True)
    if not csr_only:
        conf = broker_dir / MOSQUITTO_CONF
        conf_text = mosquitto_conf(settings, sidecar_sha256=settings.sidecar_sha256())
        write_atomic(conf, conf_text.encode(), mode=PUBLIC_MODE)
        written.append(conf)
    fleet_broker = Path(sys.executable).with_name("fleet-broker")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    for name, text in (
        (
            SYNC_UNIT,
            sync_unit(broker_dir, str(fleet_broker) if fleet_broker.exists() else "fleet-broker"),
        ),
        (MOSQUITTO_DROP_IN, mosquitto_drop_in(broker_dir, mosquitto)),
    ):
        target = broker_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, text.encode(), mode=PUBLIC_MODE)
        written.append(target)
    if os.geteuid() == 0 and user not in ("root", ""):
        account = pwd.getpwnam(user)
        # Mosquitto writes its pid file in state/ and reads the key again at a reload.
        os.chown(state, account.pw_uid, account.pw_gid)
        os.chown(broker_dir / SERVER_KEY, account.pw_uid, account.pw_gid)
    return InitResult(broker_dir, tuple(written), user, note, csr_only, names)
