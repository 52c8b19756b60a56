"""`fleet-broker amqtt` against a real fleet server: who gets in, where they may publish,
and revocation reaching live sessions. Real TLS, paho-mqtt clients, certificates
enrolled over EST (or minted with keys the server never uses that way, for attacks).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator

import pytest

from tests.support.amqtt_broker import (
    AmqttEnv,
    amqtt_env,
    client_context,
    expect_refused,
    make_ca,
    mint_client_cert,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmqttEnv]:
    with amqtt_env(tmp_path_factory.mktemp("amqtt")) as running:
        yield running


def refused_with(env: AmqttEnv, reason: str, client_id: str, cert: object, key: object) -> None:
    assert env.broker is not None
    before = env.broker.refused(reason)
    expect_refused(env.device(client_id, cert, key))  # type: ignore[arg-type]
    assert env.broker.refused(reason) == before + 1


def test_valid_device_connects_and_is_confined_to_its_topics(env: AmqttEnv) -> None:
    a_id, a_cert, a_key = env.enroll()
    b_id, b_cert, b_key = env.enroll()
    a = env.connected(a_id, a_cert, a_key)
    b = env.connected(b_id, b_cert, b_key)
    try:
        assert a.subscribe(f"devices/{a_id}/#") == [1]
        assert a.subscribe(f"devices/{a_id}/+/cmd") == [1]
        assert b.subscribe(f"devices/{b_id}/#") == [1]
        # Wider or foreign filters are refused (SUBACK 0x80).
        for bad in ("#", "devices/#", "devices/+/cmd", f"devices/{b_id}/#", "$SYS/#", "+/#"):
            assert a.subscribe(bad) == [0x80], bad
        a.publish(f"devices/{a_id}/x/cmd", b"mine")
        assert a.receive() == (f"devices/{a_id}/x/cmd", b"mine")
        assert a.receive() == (f"devices/{a_id}/x/cmd", b"mine")  # both filters match
        # A publishes into B's tree: dropped, B receives nothing.
        a.publish(f"devices/{b_id}/cmd", b"intrusion")
        assert b.receive(timeout=0.5) is None
    finally:
        a.close()
        b.close()


def test_no_certificate_is_refused(env: AmqttEnv) -> None:
    device_id, _, _ = env.enroll()
    expect_refused(env.device(device_id, None, None))


def test_certificate_from_a_rogue_ca_is_refused(env: AmqttEnv) -> None:
    device_id, _, _ = env.enroll()
    rogue_cert, rogue_key = make_ca("Rogue CA")
    cert, key = mint_client_cert(
        env.work, "rogue", common_name=device_id, issuer_cert=rogue_cert, issuer_key=rogue_key
    )
    expect_refused(env.device(device_id, cert, key))


def test_certificate_from_a_sibling_sub_ca_is_refused(env: AmqttEnv) -> None:
    # The admin CA chains to the same root, so TLS accepts it; only the issuer check refuses.
    ca_dir = env.fleet.server.data_dir / "ca"
    cert, key = mint_client_cert(
        env.work,
        "sibling",
        common_name="dev-sibling",
        issuer_cert=ca_dir / "admin.pem",
        issuer_key=ca_dir / "admin.key",
    )
    refused_with(env, "unknown_issuer", "dev-sibling", cert, key)


def test_revoked_device_is_refused(env: AmqttEnv) -> None:
    device_id, cert, key = env.enroll()
    seq = env.revoke_device(device_id)
    assert env.broker is not None
    assert env.broker.call(lambda: env.broker.broker.cache.wait_for_seq(seq, 5))  # type: ignore[union-attr]
    refused_with(env, "certificate_revoked", device_id, cert, key)


def test_expired_certificate_is_refused_beyond_the_skew(env: AmqttEnv) -> None:
    now = dt.datetime.now(dt.UTC)
    long_ago = now - dt.timedelta(days=2)
    cert, key = env.issuing(
        "expired", "dev-expired", not_before=long_ago, not_after=now - dt.timedelta(hours=1)
    )
    refused_with(env, "certificate_expired", "dev-expired", cert, key)
    # Expired a minute ago: inside the 5-minute skew allowance.
    cert, key = env.issuing(
        "skew", "dev-skew", not_before=long_ago, not_after=now - dt.timedelta(minutes=1)
    )
    env.connected("dev-skew", cert, key).close()


def test_wrong_client_id_is_refused(env: AmqttEnv) -> None:
    _device_id, cert, key = env.enroll()
    other_id, _, _ = env.enroll()
    refused_with(env, "client_id_mismatch", other_id, cert, key)
    refused_with(env, "client_id_mismatch", "", cert, key)


@pytest.mark.parametrize("cn", ["dev/../other", "dev+", "dev#", "admin", "dév"])
def test_hostile_device_id_is_refused(env: AmqttEnv, cn: str) -> None:
    cert, key = env.issuing(f"hostile-{abs(hash(cn))}", cn)
    refused_with(env, "device_id_invalid", cn, cert, key)


def test_certificate_without_client_auth_is_refused(env: AmqttEnv) -> None:
    cert, key = env.issuing("no-eku", "dev-no-eku", client_auth=False)
    refused_with(env, "not_client_cert", "dev-no-eku", cert, key)


def test_refusals_are_logged_with_device_serial_and_reason(
    env: AmqttEnv, caplog: pytest.LogCaptureFixture
) -> None:
    device_id, cert, key = env.enroll()
    caplog.set_level(logging.INFO, logger="fleet.broker")
    expect_refused(env.device("someone-else", cert, key))
    refusals = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "fields", {}).get("event") == "connect_refused"
    ]
    assert refusals
    last = refusals[-1]
    assert last["reason"] == "client_id_mismatch"
    assert last["device_id"] == device_id
    assert isinstance(last["serial"], str)
    assert int(last["serial"], 16) > 0


def test_revoke_while_connected_closes_the_session_and_refuses_reconnect(
    env: AmqttEnv, caplog: pytest.LogCaptureFixture
) -> None:
    device_id, cert, key = env.enroll()
    device = env.connected(device_id, cert, key, clean_session=False)
    assert device.subscribe(f"devices/{device_id}/#") == [1]
    caplog.set_level(logging.INFO, logger="fleet.broker")
    started = time.monotonic()
    env.revoke_device(device_id)
    assert device.disconnected.wait(1.0), "revoked session still open after 1 s"
    elapsed = time.monotonic() - started
    device.close()
    assert elapsed < 1.0
    kicks = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "fields", {}).get("event") == "session_kicked"
    ]
    assert kicks[-1]["reason"] == "device_revoked"
    assert kicks[-1]["device_id"] == device_id
    refused_with(env, "certificate_revoked", device_id, cert, key)
    # Its persistent session (and queue) is gone too.
    assert env.broker is not None
    deadline = time.monotonic() + 2
    while device_id in env.broker.broker.broker.sessions and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    assert device_id not in env.broker.broker.broker.sessions  # type: ignore[union-attr]


def test_broker_restart_resyncs_and_keeps_revoked_devices_out(env: AmqttEnv) -> None:
    before_id, before_cert, before_key = env.enroll()
    during_id, during_cert, during_key = env.enroll()
    env.revoke_device(before_id)
    env.stop_broker()
    env.revoke_device(during_id)  # while no broker is running
    env.start_broker()
    assert env.broker is not None
    refused_with(env, "certificate_revoked", before_id, before_cert, before_key)
    refused_with(env, "certificate_revoked", during_id, during_cert, during_key)
    ok_id, ok_cert, ok_key = env.enroll()
    env.connected(ok_id, ok_cert, ok_key).close()


def test_tls_context_requires_client_certificates(env: AmqttEnv) -> None:
    import ssl

    assert env.settings().ssl_context().verify_mode == ssl.CERT_REQUIRED
    # And a client offering none never completes a session.
    device_id, _, _ = env.enroll()
    assert env.broker is not None
    from tests.support.amqtt_broker import raw_connect

    try:
        sock, rc = raw_connect(env.broker.port, client_context(env.ca), device_id)
        sock.close()
    except (OSError, ssl.SSLError):
        rc = None
    assert rc is None
