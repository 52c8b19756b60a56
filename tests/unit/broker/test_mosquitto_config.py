"""The broker settings file: defaults that fail closed, and the mosquitto.conf they imply."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_plugins.mosquitto.config import load_settings, settings_from_mapping
from broker_plugins.mosquitto.generated_conf import mosquitto_conf
from fleet.kernel.certs import DEFAULT_SKEW
from fleet.kernel.errors import ConfigError

PATHS = {
    "server_cert": "tls/broker.pem",
    "server_key": "tls/broker.key",
    "root_ca": "ca/root.pem",
    "issuing_ca": "ca/issuing.pem",
    "plugin": "fleet_plugin.so",
    "sidecar_cert": "sidecar.pem",
    "sidecar_key": "sidecar.key",
}


def _settings(**extra: object) -> dict[str, object]:
    return {"store": {"url": "sqlite:///x.db"}, "mosquitto": {**PATHS, **extra}}


def test_by_default_a_stale_plugin_fails_closed_after_30_seconds(tmp_path: Path) -> None:
    settings = settings_from_mapping(_settings(), base_dir=tmp_path)
    assert settings.max_staleness_seconds == 30
    conf = mosquitto_conf(settings)
    assert "\nplugin_opt_max_staleness_seconds 30\n" in conf
    # The generated file says what the option does.
    assert "revocation_state_stale" in conf
    assert "0 = never (fails open)" in conf


def test_the_plugin_gets_the_roots_and_the_kernel_skew(tmp_path: Path) -> None:
    conf = mosquitto_conf(settings_from_mapping(_settings(), base_dir=tmp_path))
    assert f"\nplugin_opt_issuing_ca {tmp_path / 'ca/issuing.pem'}\n" in conf
    assert f"\nplugin_opt_root_ca {tmp_path / 'ca/root.pem'}\n" in conf
    assert f"\nplugin_opt_skew_seconds {int(DEFAULT_SKEW.total_seconds())}\n" in conf
    custom = settings_from_mapping(_settings(skew_seconds=60), base_dir=tmp_path)
    assert "\nplugin_opt_skew_seconds 60\n" in mosquitto_conf(custom)


@pytest.mark.parametrize(
    "extra",
    [
        {"max_staleness_seconds": -1},
        {"max_staleness_seconds": 3, "heartbeat_seconds": 2.0},  # < 2 heartbeats
        {"max_staleness_seconds": 2.5},
        {"skew_seconds": -5},
    ],
)
def test_bad_staleness_or_skew_is_refused(tmp_path: Path, extra: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        settings_from_mapping(_settings(**extra), base_dir=tmp_path)


def test_zero_turns_the_staleness_policy_off_explicitly(tmp_path: Path) -> None:
    settings = settings_from_mapping(_settings(max_staleness_seconds=0), base_dir=tmp_path)
    assert "\nplugin_opt_max_staleness_seconds 0\n" in mosquitto_conf(settings)


def test_the_sidecar_reports_under_a_stable_broker_name(tmp_path: Path) -> None:
    default = settings_from_mapping(_settings(listen="127.0.0.1:8884"), base_dir=tmp_path)
    assert default.reported_name.startswith("mosquitto@")
    assert default.reported_name.endswith(":8884")
    named = settings_from_mapping(_settings(broker_name="edge-7"), base_dir=tmp_path)
    assert named.reported_name == "edge-7"
    with pytest.raises(ConfigError, match="broker_name"):
        settings_from_mapping(_settings(broker_name="edge 7/x"), base_dir=tmp_path)


def test_peers_make_the_plugin_announce_sessions(tmp_path: Path) -> None:
    alone = settings_from_mapping(_settings(), base_dir=tmp_path)
    assert "announce_sessions" not in mosquitto_conf(alone)
    clustered = settings_from_mapping(
        _settings(node_name="mqtt-a", peers=["10.0.0.12:8883", "[fd00::13]:8883"]),
        base_dir=tmp_path,
    )
    assert "\nplugin_opt_announce_sessions true\n" in mosquitto_conf(clustered)
    assert clustered.peer_addresses == (("10.0.0.12", 8883), ("fd00::13", 8883))
    assert clustered.peer_client_id == "fleet:sidecar@mqtt-a"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"peers": ["10.0.0.12:8883"]}, "peers needs node_name"),
        ({"peers": "10.0.0.12:8883", "node_name": "a"}, "peers must be a list"),
        ({"peers": ["10.0.0.12"], "node_name": "a"}, "must be HOST:PORT"),
        ({"peers": ["10.0.0.12:8883"], "node_name": "a/b"}, "device id rule"),
        ({"node_name": "x" * 65}, "device id rule"),
        ({"node_name": 7}, "node_name must be a string"),
    ],
)
def test_bad_peers_or_node_name_are_refused(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(_settings(**extra), base_dir=tmp_path)


def test_a_key_outside_a_section_is_named_and_the_hint_names_this_file(tmp_path: Path) -> None:
    # The README's peers snippet appended above [store]: a top-level key.
    path = tmp_path / "broker.toml"
    path.write_text(
        'node_name = "mqtt-a"\n[store]\nurl = "sqlite:///x.db"\n[mosquitto]\n'
        + "".join(f'{key} = "{value}"\n' for key, value in PATHS.items())
    )
    with pytest.raises(ConfigError, match=r"node_name: not in a section.*\[mosquitto\]") as info:
        load_settings(path)
    assert str(path) in info.value.hint
    assert "fleet.toml" not in info.value.hint  # the broker's file, not the server's


def test_the_broker_bounds_the_packets_it_reads(tmp_path: Path) -> None:
    # Without it Mosquitto allocates up to 256 MiB per connection before the plugin is asked.
    conf = mosquitto_conf(settings_from_mapping(_settings(), base_dir=tmp_path))
    assert "\nmax_packet_size 1048576\n" in conf
    assert "\nmax_queued_bytes 16777216\n" in conf
    assert "\npersistent_client_expiration 30d\n" in conf
    custom = settings_from_mapping(_settings(max_packet_bytes=65536), base_dir=tmp_path)
    assert "\nmax_packet_size 65536\n" in mosquitto_conf(custom)
    for bad in (0, 1024, 65535, 2**28 + 5, "1M", True):
        with pytest.raises(ConfigError, match="max_packet_bytes"):
            settings_from_mapping(_settings(max_packet_bytes=bad), base_dir=tmp_path)


@pytest.mark.parametrize(
    "template", ["devices/dev-%u/#", "$devices/%u/#", "devices/%ux/#", "%u/#x/#"]
)
def test_acl_templates_the_kernel_refuses_are_refused_here_too(
    tmp_path: Path, template: str
) -> None:
    # One template rule (fleet.kernel.acl) for both brokers; the C plugin's shape on top.
    with pytest.raises(ConfigError, match="acl_template"):
        settings_from_mapping(_settings(acl_template=template), base_dir=tmp_path)


def test_the_default_acl_template_is_accepted(tmp_path: Path) -> None:
    settings = settings_from_mapping(_settings(acl_template="devices/%u/#"), base_dir=tmp_path)
    assert "\nplugin_opt_acl_template devices/%u/#\n" in mosquitto_conf(settings)
