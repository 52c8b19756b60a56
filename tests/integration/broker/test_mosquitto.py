"""Mosquitto 2.0 with the fleet plugin and sidecar, against a real fleet server.

Two broker nodes follow the same store: ``crl`` is the production shape
(crlfile kept by the sidecar, so Mosquitto's TLS layer refuses revoked serials
too), ``plain`` has no crlfile, so every refusal there is the plugin's own and
its log line can be checked. Both fail closed after a few seconds without the
sidecar (a small ``max_staleness_seconds``, so tests need not wait 30 s). Certificates are enrolled
over EST from a real `fleet serve`; attack certificates are minted with keys
of the fleet data directory. Clients are paho-mqtt over real TLS.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker_plugins.mosquitto.crl_keeper import fetch_crl, parse_crl
from fleet.pki.ca import CertifiedKey, certificate_to_pem, create_issuing_ca
from fleet.pki.keys import PrivateKey
from fleet.records import RevocationReason
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.binaries import need_binary
from tests.support.mosquitto_broker import (
    BrokerNode,
    BrokerNodes,
    Session,
    fleet_broker,
    load_ca,
    mint_client_cert,
    rogue_ca,
)
from tests.support.ports import free_port

pytestmark = [
    pytest.mark.needs_binary("mosquitto"),
    pytest.mark.needs_binary("gcc"),
    pytest.mark.needs_binary("openssl"),
    pytest.mark.needs_binary("curl"),
]

KICK_DEADLINE = 1.0  # seconds from revoke to a closed session
# Seconds from the sidecar's start to kick, refusal and crlfile: ~0.3 s unloaded (the
# test prints it); the bound catches the regression it guards (nothing applied until
# the next CRL refresh, minutes) with room for a loaded 2-core CI machine.
RESYNC_DEADLINE = 3.0
MAX_STALENESS = 3  # the nodes' max_staleness_seconds (heartbeat 0.5 s)


@dataclasses.dataclass
class Enrolled:
    device_id: str
    cert: Path
    key: Path
    serial: int


@dataclasses.dataclass
class Env:
    fleet: Fleet
    crl: BrokerNode
    plain: BrokerNode
    nodes: BrokerNodes  # how more nodes of this fleet are made
    plain_metrics: str = ""  # the plain node's sidecar /metrics URL

    @property
    def root(self) -> Path:
        return self.fleet.server.root_pem

    def enroll(self, device_id: str | None = None) -> Enrolled:
        device = self.fleet.new_device(device_id=device_id)
        key, csr = self.fleet.csr(device.device_id)
        cert = self.fleet.issued(self.fleet.enroll(device, csr), device.device_id)
        serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        return Enrolled(device.device_id, cert, key, serial)

    def session(
        self, node: BrokerNode, cert: Path | None, key: Path | None, client_id: str
    ) -> Session:
        return Session(node.port, ca=self.root, cert=cert, key=key, client_id=client_id)

    def connect(self, node: BrokerNode, device: Enrolled, client_id: str | None = None) -> Session:
        session = self.session(node, device.cert, device.key, client_id or device.device_id)
        assert session.open(), f"{device.device_id} could not connect: {session.connack}"
        return session

    def refused(
        self, node: BrokerNode, cert: Path | None, key: Path | None, client_id: str
    ) -> None:
        session = self.session(node, cert, key, client_id)
        try:
            assert not session.open(), f"{client_id} was let in"
        finally:
            session.close()

    def revoke_device(self, device_id: str) -> None:
        now = dt.datetime.now(dt.UTC)
        event = self.fleet.server.store(
            lambda s: s.revoke_device(device_id, RevocationReason.KEY_COMPROMISE, now)
        )
        assert event is not None

    def revoke_certificate(self, serial: int) -> None:
        now = dt.datetime.now(dt.UTC)
        event = self.fleet.server.store(
            lambda s: s.revoke_certificate(serial, RevocationReason.KEY_COMPROMISE, now)
        )
        assert event is not None


@pytest.fixture(scope="session")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_binary("gcc")
    out = tmp_path_factory.mktemp("plugin")
    path = Path(fleet_broker("mosquitto", "build", "--out", out).stdout.strip())
    assert path == out / "fleet_plugin.so"
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, plugin: Path) -> Iterator[Env]:
    need_binary("mosquitto")
    base = tmp_path_factory.mktemp("mosquitto")
    with running_fleet(base) as fleet:
        nodes_of_fleet = BrokerNodes.issue(fleet.server.data_dir, base, plugin)
        stale_after = f"max_staleness_seconds = {MAX_STALENESS}"
        crl = nodes_of_fleet.node(
            base / "crl",
            crl_url=f"{fleet.server.base}/crl",
            extra=f"{stale_after}\ncrl_backstop = true",
        )
        metrics_port = free_port()
        plain = nodes_of_fleet.node(
            base / "plain",
            extra=f'{stale_after}\nmetrics_address = "127.0.0.1:{metrics_port}"',
        )
        nodes = (crl, plain)
        try:
            for node in nodes:
                fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
                node.start_broker()
                node.start_sidecar()
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            yield Env(fleet, crl, plain, nodes_of_fleet, metrics)
        finally:
            for node in nodes:
                node.stop()


@pytest.fixture(params=["crl", "plain"])
def node(request: pytest.FixtureRequest, env: Env) -> BrokerNode:
    chosen: BrokerNode = getattr(env, request.param)
    return chosen


def test_generated_config_is_the_documented_shape(env: Env) -> None:
    conf = env.crl.conf.read_text()
    assert "require_certificate true" in conf
    assert "use_identity_as_username false" in conf
    assert "set_tcp_nodelay true" in conf
    assert f"crlfile {env.crl.directory / 'state/fleet.crl'}" in conf
    assert "plugin_opt_sidecar_sha256 " in conf
    assert "\ncrlfile " not in env.plain.conf.read_text()
    cafile = (env.crl.directory / "state/cafile.pem").read_bytes()
    assert len(x509.load_pem_x509_certificates(cafile)) == 2  # issuing CA + root


def test_the_plugin_exports_only_its_entry_points(plugin: Path) -> None:
    # Its units share functions (fleet_plugin.h hides them): an exported one
    # could be bound to a same-named symbol of the broker or of another plugin.
    nm = need_binary("nm")
    listing = subprocess.run(
        [nm, "-D", "--defined-only", str(plugin)], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1] for line in listing.splitlines() if line.split()[1:2] == ["T"]}
    assert exported == {
        "mosquitto_plugin_version", "mosquitto_plugin_init", "mosquitto_plugin_cleanup"
    }  # fmt: skip


def test_valid_device_connects(env: Env, node: BrokerNode) -> None:
    device = env.enroll()
    session = env.connect(node, device)
    session.close()


def test_no_certificate_is_refused(env: Env, node: BrokerNode) -> None:
    device = env.enroll()
    env.refused(node, None, None, device.device_id)


def test_certificate_of_a_rogue_ca_is_refused(env: Env, node: BrokerNode) -> None:
    device = env.enroll()
    cert, key = mint_client_cert(
        env.fleet.work, "rogue", common_name=device.device_id, issuer=rogue_ca("fleet root CA")
    )
    env.refused(node, cert, key, device.device_id)


def test_certificate_of_the_roots_other_sub_ca_is_refused(env: Env, node: BrokerNode) -> None:
    # The admin CA chains to the fleet root, which cafile must contain: TLS alone lets it in.
    device = env.enroll()
    admin_ca = load_ca(env.fleet.server.data_dir, "admin")
    cert, key = mint_client_cert(
        env.fleet.work, "sibling", common_name=device.device_id, issuer=admin_ca
    )
    mark = node.log_mark()
    env.refused(node, cert, key, device.device_id)
    if node is env.plain:  # with a crlfile, TLS already fails (no CRL for the admin CA)
        node.wait_broker_log(f"device={device.device_id} .*reason=unknown_issuer", after=mark)


def _issuing(env: Env) -> CertifiedKey:
    return load_ca(env.fleet.server.data_dir, "issuing")


def _refused_for(env: Env, node: BrokerNode, reason: str, name: str, **mint: Any) -> None:
    """A certificate of the fleet issuing CA, minted with ``mint``, is refused for ``reason``."""
    device_id = f"{name}-{secrets.token_hex(4)}"
    cert, key = mint_client_cert(
        env.fleet.work, device_id, common_name=device_id, issuer=_issuing(env), **mint
    )
    mark = node.log_mark()
    env.refused(node, cert, key, device_id)
    node.wait_broker_log(f"device={device_id} serial=[0-9a-f]+ reason={reason}$", after=mark)


def test_expired_certificate_is_refused(env: Env, node: BrokerNode) -> None:
    # Beyond the 300 s skew. TLS used to refuse it without a word in the log.
    now = dt.datetime.now(dt.UTC)
    _refused_for(
        env, node, "certificate_expired", "expired",
        not_before=now - dt.timedelta(days=3), not_after=now - dt.timedelta(minutes=6),
    )  # fmt: skip


def test_certificate_not_yet_valid_is_refused(env: Env, node: BrokerNode) -> None:
    now = dt.datetime.now(dt.UTC)
    _refused_for(
        env, node, "certificate_not_yet_valid", "future",
        not_before=now + dt.timedelta(minutes=6), not_after=now + dt.timedelta(days=1),
    )  # fmt: skip


def test_validity_within_the_skew_is_admitted(env: Env, node: BrokerNode) -> None:
    # A device whose clock is a minute ahead of the CA's got a certificate "from the future".
    now = dt.datetime.now(dt.UTC)
    device_id = f"skewed-{secrets.token_hex(4)}"
    cert, key = mint_client_cert(
        env.fleet.work, device_id, common_name=device_id, issuer=_issuing(env),
        not_before=now + dt.timedelta(minutes=1), not_after=now + dt.timedelta(days=1),
    )  # fmt: skip
    session = env.session(node, cert, key, device_id)
    try:
        assert session.open(), f"refused within the skew: {session.connack}"
    finally:
        session.close()


def test_certificate_without_client_auth_eku_is_refused(env: Env, node: BrokerNode) -> None:
    # No EKU at all: TLS takes that as "any purpose"; the kernel requires clientAuth.
    _refused_for(env, node, "not_client_cert", "no-eku", client_auth=False)


def test_ca_certificate_as_a_client_is_refused(env: Env, node: BrokerNode) -> None:
    # cA=TRUE with EKU clientAuth passes the TLS handshake (no keyUsage to object).
    _refused_for(env, node, "not_client_cert", "is-ca", ca=True)


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), id="ec-p521"),
        pytest.param(lambda: rsa.generate_private_key(65537, 4096), id="rsa-4096"),
    ],
)
def test_key_type_outside_the_kernel_list_is_refused(
    env: Env, node: BrokerNode, make_key: Callable[[], PrivateKey]
) -> None:
    _refused_for(env, node, "key_not_allowed", "odd-key", key=make_key())


def test_wrong_client_id_is_refused(env: Env, node: BrokerNode) -> None:
    device = env.enroll()
    mark = node.log_mark()
    env.refused(node, device.cert, device.key, f"{device.device_id}-other")
    node.wait_broker_log(f"device={device.device_id} .*reason=client_id_mismatch", after=mark)


def _sample(url: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our loopback URL
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return float(sample.value)
    return None


def _wait_sample(url: str, name: str, labels: dict[str, str] | None, want: float) -> None:
    deadline = time.monotonic() + 10
    while (value := _sample(url, name, labels)) != want:
        assert time.monotonic() < deadline, f"{name}{labels} is {value}, expected {want}"
        time.sleep(0.1)


def test_plugin_counters_reach_the_sidecar_metrics(env: Env) -> None:
    node, url = env.plain, env.plain_metrics
    refused = "fleet_mosquitto_connects_refused_total"
    mismatch = {"reason": "client_id_mismatch"}
    accepted = "fleet_mosquitto_connects_accepted_total"
    # The sidecar asks the plugin every heartbeat; wait for a first answer.
    deadline = time.monotonic() + 10
    while _sample(url, accepted) is None:
        assert time.monotonic() < deadline, "no plugin counters on the sidecar's /metrics"
        time.sleep(0.1)
    device = env.enroll()
    time.sleep(1.5)  # counters settle (other tests' connects on this node are done)
    before_refused = _sample(url, refused, mismatch)
    before_revoked = _sample(url, refused, {"reason": "device_revoked"})
    before_accepted = _sample(url, accepted)
    assert before_refused is not None
    assert before_accepted is not None
    env.refused(node, device.cert, device.key, f"{device.device_id}-other")
    _wait_sample(url, refused, mismatch, before_refused + 1)
    env.connect(node, device).close()
    _wait_sample(url, accepted, None, before_accepted + 1)
    assert _sample(url, refused, {"reason": "device_revoked"}) == before_revoked
    # The sidecar's own figures are there too.
    assert (_sample(url, "fleet_broker_revocation_feed_seq") or 0) >= 0
    assert _sample(url, "fleet_broker_revocation_staleness_seconds") is not None
    assert _sample(url, "fleet_mosquitto_plugin_stale") == 0
    assert _sample(url, "fleet_mosquitto_plugin_max_staleness_seconds") == MAX_STALENESS
    age = _sample(url, "fleet_mosquitto_plugin_revocation_age_seconds")
    assert age is not None
    assert 0 <= age <= MAX_STALENESS
    assert _sample(url, "fleet_mosquitto_crl_age_seconds") is not None  # NaN: no crl_url


@pytest.mark.parametrize("common_name", ["dev/evil", "dev+1", "admin", "a" * 65])
def test_device_id_outside_the_alphabet_is_refused(
    env: Env, node: BrokerNode, common_name: str
) -> None:
    # Only a CA mistake could issue these; a '/' would escape devices/<id>/#.
    cert, key = mint_client_cert(
        env.fleet.work,
        "bad-id",
        common_name=common_name,
        issuer=load_ca(env.fleet.server.data_dir, "issuing"),
    )
    mark = node.log_mark()
    env.refused(node, cert, key, common_name)
    node.wait_broker_log(r"reason=device_id_invalid", after=mark)


def test_revoked_device_is_refused(env: Env, node: BrokerNode) -> None:
    device = env.enroll()
    env.revoke_device(device.device_id)
    node.wait_broker_log(f"revoked device={device.device_id}", timeout=5)
    mark = node.log_mark()
    env.refused(node, device.cert, device.key, device.device_id)
    if node is env.plain:  # with a crlfile, TLS refuses the listed serial first
        node.wait_broker_log(
            f"device={device.device_id} serial={device.serial:x} reason=certificate_revoked",
            after=mark,
        )
    # Any other certificate of that device (one the store never recorded) is refused too.
    cert, key = mint_client_cert(
        env.fleet.work, f"{device.device_id}-other", common_name=device.device_id,
        issuer=_issuing(env),
    )  # fmt: skip
    mark = node.log_mark()
    env.refused(node, cert, key, device.device_id)
    node.wait_broker_log(f"device={device.device_id} .*reason=device_revoked", after=mark)


def test_a_kick_then_a_reload_logs_one_refusal_with_identity(env: Env, node: BrokerNode) -> None:
    """A reload (a new CRL, logrotate, `systemctl reload`) re-checks every session:
    a kicked one must not come back as `device=- serial=- reason=no_certificate`,
    and the live ones are neither refused nor counted again."""
    bystander = env.enroll()
    other = env.connect(node, bystander)
    accepted = _plugin_counter(env, node, "accepted") if node is env.plain else None
    try:
        mark = node.log_mark()
        for _ in range(3):
            device = env.enroll()
            session = env.connect(node, device)
            env.revoke_device(device.device_id)
            assert node.broker is not None
            # The reload races the kick, as a CRL install right after a revocation does.
            while not session.disconnected.is_set():
                node.broker.send_signal(signal.SIGHUP)
                time.sleep(0.002)
            node.broker.send_signal(signal.SIGHUP)
            session.close()
            env.refused(node, device.cert, device.key, device.device_id)
            if node is env.plain:  # with a crlfile, TLS refuses the listed serial first
                node.wait_broker_log(
                    f"device={device.device_id} serial={device.serial:x} "
                    "reason=certificate_revoked",
                    after=mark,
                )
        time.sleep(0.3)  # a re-check would be logged right after a reload
        text = node.broker_log.read_bytes()[mark:].decode(errors="replace")
        refusals = [line for line in text.splitlines() if "refused connection" in line]
        assert not [r for r in refusals if "device=- " in r or "serial=- " in r], refusals
        assert not other.disconnected.is_set()
        if accepted is not None:  # three devices connected, the bystander not again
            assert _plugin_counter(env, node, "accepted") == accepted + 3
    finally:
        other.close()


def _plugin_counter(env: Env, node: BrokerNode, name: str) -> float:
    """The plugin's counter, through the plain node's sidecar /metrics (a fresh answer)."""
    metric = f"fleet_mosquitto_connects_{name}_total"
    deadline = time.monotonic() + 5
    previous = None
    while True:
        with urllib.request.urlopen(env.plain_metrics, timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        values = [
            float(line.split()[1]) for line in text.splitlines() if line.startswith(metric + " ")
        ]
        value = values[0] if values else None
        if value is not None and value == previous:
            return value
        assert time.monotonic() < deadline, text
        previous = value
        time.sleep(1.0)  # the sidecar asks the plugin for stats every heartbeat


def test_each_device_is_confined_to_its_topics(env: Env) -> None:
    a_dev, b_dev = env.enroll(), env.enroll()
    a, b = env.connect(env.crl, a_dev), env.connect(env.crl, b_dev)
    try:
        a_root, b_root = f"devices/{a_dev.device_id}", f"devices/{b_dev.device_id}"
        assert a.subscribe(f"{a_root}/#")
        assert b.subscribe(f"{b_root}/#")
        for wider in ("#", "devices/#", "devices/+/cmd", f"{b_root}/#", "$SYS/#", "$CONTROL/#"):
            assert not a.subscribe(wider), wider
        a.publish(f"{a_root}/telemetry", b"mine")
        a.publish(f"{b_root}/cmd", b"intrusion")
        a.publish("elsewhere", b"intrusion")
        time.sleep(0.3)
        assert a.messages == [(f"{a_root}/telemetry", b"mine")]
        assert b.messages == []
    finally:
        a.close()
        b.close()


def test_a_device_cannot_send_control_commands(env: Env) -> None:
    victim, attacker = env.enroll(), env.enroll()
    v = env.connect(env.crl, victim)
    a = env.connect(env.crl, attacker)
    try:
        a.publish("$CONTROL/fleet/v1", f"revoke 999 device {victim.device_id}".encode())
        a.publish("$CONTROL/fleet/v1", b"reload")
        time.sleep(0.5)
        assert not v.disconnected.is_set()
        assert f"revoked device={victim.device_id}" not in env.crl.broker_log.read_text()
    finally:
        v.close()
        a.close()


def test_a_forged_sidecar_certificate_is_refused(env: Env) -> None:
    # Same CN, same issuing CA, but not the pinned certificate.
    cert, key = mint_client_cert(
        env.fleet.work,
        "forged-sidecar",
        common_name="fleet:sidecar",
        issuer=load_ca(env.fleet.server.data_dir, "issuing"),
    )
    mark = env.crl.log_mark()
    env.refused(env.crl, cert, key, "fleet:sidecar")
    env.crl.wait_broker_log("reason=sidecar_pin_mismatch", after=mark)


def test_client_id_takeover_by_another_device_is_refused(env: Env) -> None:
    owner, thief = env.enroll(), env.enroll()
    session = env.connect(env.crl, owner)
    try:
        env.refused(env.crl, thief.cert, thief.key, owner.device_id)
        time.sleep(0.3)
        assert not session.disconnected.is_set(), "the real device was kicked off"
    finally:
        session.close()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _assert_kicked(env: Env, node: BrokerNode, session: Session, device: Enrolled) -> None:
    assert session.disconnected.wait(5), (
        f"the session was not closed\n--- broker:\n{_tail(node.broker_log)}"
        f"\n--- sidecar:\n{_tail(node.sidecar_log)}"
    )
    env.refused(node, device.cert, device.key, device.device_id)


@pytest.mark.parametrize("what", ["device", "certificate"])
def test_revoke_while_connected_closes_the_session_within_a_second(
    env: Env, node: BrokerNode, what: str
) -> None:
    device, bystander = env.enroll(), env.enroll()
    session = env.connect(node, device)
    other = env.connect(node, bystander)
    try:
        started = time.monotonic()
        if what == "device":
            env.revoke_device(device.device_id)
        else:
            env.revoke_certificate(device.serial)
        assert session.disconnected.wait(5)
        assert session.disconnected_at - started <= KICK_DEADLINE
        env.refused(node, device.cert, device.key, device.device_id)
        assert not other.disconnected.is_set()
    finally:
        session.close()
        other.close()


def test_revocations_reach_the_crlfile(env: Env) -> None:
    device = env.enroll()
    env.revoke_device(device.device_id)
    crlfile = env.crl.directory / "state/fleet.crl"
    deadline = time.monotonic() + 10
    while True:
        crl = x509.load_pem_x509_crl(crlfile.read_bytes())
        if crl.get_revoked_certificate_by_serial_number(device.serial) is not None:
            break
        assert time.monotonic() < deadline, "the CRL never listed the revoked serial"
        time.sleep(0.1)


def _crl_lists(crl: bytes, serial: int) -> bool:
    return parse_crl(crl).get_revoked_certificate_by_serial_number(serial) is not None


def _wait_server_crl_lists(env: Env, serial: int) -> None:
    deadline = time.monotonic() + 10
    while not _crl_lists(fetch_crl(f"{env.fleet.server.base}/crl", env.root), serial):
        assert time.monotonic() < deadline, "the fleet server's CRL never listed the serial"
        time.sleep(0.05)


def test_sidecar_return_applies_what_was_revoked_meanwhile_at_once(env: Env) -> None:
    node = env.crl
    crlfile = node.directory / "state/fleet.crl"
    device = env.enroll()
    session = env.connect(node, device)
    try:
        node.stop_sidecar()
        env.revoke_device(device.device_id)
        # The server's CRL lists it already: what is measured is the sidecar alone.
        _wait_server_crl_lists(env, device.serial)
        assert not _crl_lists(crlfile.read_bytes(), device.serial)
        assert not session.disconnected.is_set()  # nobody told the broker yet
        started = time.monotonic()
        node.start_sidecar(wait=False)
        crl_at: float | None = None
        while crl_at is None or not session.disconnected.is_set():
            if crl_at is None and _crl_lists(crlfile.read_bytes(), device.serial):
                crl_at = time.monotonic()
            assert time.monotonic() - started < 10, (
                f"kicked: {session.disconnected.is_set()}, crlfile updated: {crl_at is not None}"
                f"\n--- sidecar:\n{_tail(node.sidecar_log)}"
            )
            time.sleep(0.01)
        kicked_after, crl_after = session.disconnected_at - started, crl_at - started
        # The plugin applies the revocations (kick, then refuse) with one `reload`.
        assert kicked_after <= RESYNC_DEADLINE, f"kicked {kicked_after:.2f} s after the start"
        assert crl_after <= RESYNC_DEADLINE, f"crlfile updated {crl_after:.2f} s after the start"
        env.refused(node, device.cert, device.key, device.device_id)
        env.refused(env.plain, device.cert, device.key, device.device_id)
    finally:
        session.close()
        if node.sidecar is None:
            node.start_sidecar()


def test_device_revoked_while_the_sidecar_is_away_is_refused_after_max_staleness(
    env: Env,
) -> None:
    # The attack: stop (or cut off) the sidecar, so a revocation never reaches the plugin;
    # a revoked device must not get back in once the plugin's data is too old to trust.
    node = env.crl
    device = env.enroll()
    session = env.connect(node, device)
    node.stop_sidecar()
    stopped = time.monotonic()
    try:
        env.revoke_device(device.device_id)
        session.close()  # the device drops its connection and keeps reconnecting
        while True:
            mark = node.log_mark()
            attempt = env.session(node, device.cert, device.key, device.device_id)
            admitted = attempt.open()
            attempt.close()
            if not admitted:
                break
            assert time.monotonic() - stopped < MAX_STALENESS + 2, (
                f"the revoked device still got in {MAX_STALENESS + 2} s after the sidecar stopped"
            )
            time.sleep(0.2)
        node.wait_broker_log(
            f"device={device.device_id} serial={device.serial:x} reason=revocation_state_stale",
            after=mark,
        )
        node.wait_broker_log(r"revocation state is \d+s old .*refusing new device connections")
    finally:
        node.start_sidecar()
    env.refused(node, device.cert, device.key, device.device_id)  # now as revoked


def test_several_issuing_cas_are_trusted_during_a_rotation(env: Env, tmp_path: Path) -> None:
    # issuing_ca is a bundle of the current and the next issuing CA (both under the root).
    data = env.fleet.server.data_dir
    now = dt.datetime.now(dt.UTC)
    next_ca = create_issuing_ca(load_ca(data, "root"), "fleet issuing CA 2", now=now)
    bundle = tmp_path / "issuing-bundle.pem"
    bundle.write_bytes(
        (data / "ca/issuing.pem").read_bytes() + certificate_to_pem(next_ca.certificate)
    )
    node = env.nodes.node(tmp_path / "rotation", issuing_ca=bundle)
    try:
        fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
        node.start_broker()
        node.start_sidecar()
        env.connect(node, env.enroll()).close()  # a device of the current CA
        device_id = f"rotated-{secrets.token_hex(4)}"
        cert, key = mint_client_cert(tmp_path, device_id, common_name=device_id, issuer=next_ca)
        session = env.session(node, cert, key, device_id)
        assert session.open(), f"a device of the next CA was refused: {session.connack}"
        session.close()
        admin = load_ca(data, "admin")  # still not an issuing CA
        cert, key = mint_client_cert(tmp_path, "admin-leaf", common_name=device_id, issuer=admin)
        mark = node.log_mark()
        env.refused(node, cert, key, device_id)
        node.wait_broker_log(f"device={device_id} .*reason=unknown_issuer", after=mark)
    finally:
        node.stop()


def test_broker_restart_keeps_revoked_devices_out(env: Env) -> None:
    node = env.crl
    device, other = env.enroll(), env.enroll()
    node.stop_broker()
    try:
        env.revoke_device(device.device_id)  # while the broker is down
        time.sleep(0.5)  # the sidecar writes the snapshot and CRL meanwhile
    finally:
        mark = node.log_mark()
        node.start_broker()
    node.wait_broker_log("fleet: loaded snapshot", after=mark)
    env.refused(node, device.cert, device.key, device.device_id)
    env.connect(node, other).close()
    # The sidecar reconnected by itself and resynced the plugin.
    node.wait_sidecar_log("resynced the plugin", timeout=10)


def test_stale_feed_refuses_new_connections_until_the_sidecar_is_back(env: Env) -> None:
    node = env.plain  # max_staleness_seconds = 3
    connected_before = env.connect(node, env.enroll())
    device = env.enroll()
    node.stop_sidecar()
    try:
        deadline = time.monotonic() + 10
        while True:
            mark = node.log_mark()
            session = env.session(node, device.cert, device.key, device.device_id)
            admitted = session.open()
            session.close()
            if not admitted:
                node.wait_broker_log("reason=revocation_state_stale", after=mark)
                break
            assert time.monotonic() < deadline, "a stale plugin kept admitting devices"
            time.sleep(0.5)
        # Sessions admitted on good data stay up (policy: refuse new ones only).
        assert not connected_before.disconnected.is_set()
    finally:
        node.start_sidecar()
        connected_before.close()
    env.connect(node, device).close()


def test_redis_restart_empty_keeps_revoked_devices_out(tmp_path: Path, plugin: Path) -> None:
    """The store is a Redis without persistence: a restart forgets every revocation.

    Neither the live plugin, nor a restarted sidecar (which rewrites the snapshot
    file from the now empty store), nor a broker restarted on that file may let
    the revoked device back in.
    """
    from tests.support.redis_server import RedisServer

    need_binary("mosquitto")
    redis = RedisServer(tmp_path / "redis", durable=False)  # restarted empty: store loss
    redis.start()
    node: BrokerNode | None = None
    try:
        with running_fleet(
            tmp_path / "fleet",
            env={"FLEET_STORE_URL": redis.url, "FLEET_STORE_REDIS_ALLOW_VOLATILE": "true"},
        ) as fleet:
            nodes_of_fleet = BrokerNodes.issue(
                fleet.server.data_dir, tmp_path, plugin, store_url=redis.url
            )
            node = nodes_of_fleet.node(tmp_path / "node")
            fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
            node.start_broker()
            node.start_sidecar()
            env = Env(fleet, node, node, nodes_of_fleet)
            device, other = env.enroll(), env.enroll()
            session = env.connect(node, device)
            env.revoke_device(device.device_id)
            assert session.disconnected.wait(5), "revoked session still open"
            session.close()

            port = redis.port
            redis.stop()
            redis.start(port=port)  # empty
            time.sleep(1.5)  # the sidecar notices the reset and resyncs
            env.refused(node, device.cert, device.key, device.device_id)

            node.stop_sidecar()
            node.start_sidecar()  # rewrites the snapshot file from the empty store
            env.refused(node, device.cert, device.key, device.device_id)

            node.stop_broker()
            mark = node.log_mark()
            node.start_broker()  # loads that snapshot file
            node.wait_broker_log("fleet: loaded snapshot", after=mark)
            node.wait_sidecar_log("resynced the plugin", timeout=10)
            env.refused(node, device.cert, device.key, device.device_id)
            env.connect(node, other).close()
    finally:
        if node is not None:
            node.stop()
        redis.stop()
