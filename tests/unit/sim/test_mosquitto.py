"""The Mosquitto side of the simulator without a broker: metrics parsing, log reading, exit 3."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from firmware_sim import demo, mosquitto
from firmware_sim.mosquitto import MosquittoNode, parse_metrics

METRICS = """# HELP fleet_mosquitto_connects_accepted_total Device connects the plugin accepted
# TYPE fleet_mosquitto_connects_accepted_total counter
fleet_mosquitto_connects_accepted_total 4.0
fleet_mosquitto_connects_refused_total{reason="revoked"} 1.0
fleet_mosquitto_plugin_stats_age_seconds NaN
"""


def test_parse_metrics_reads_samples_with_labels() -> None:
    samples = parse_metrics(METRICS)
    assert samples[("fleet_mosquitto_connects_accepted_total", "")] == 4.0
    assert samples[("fleet_mosquitto_connects_refused_total", '{reason="revoked"}')] == 1.0
    assert ("fleet_mosquitto_plugin_stats_age_seconds", "") in samples


def test_broker_log_gives_connections_and_publishes(tmp_path: Path) -> None:
    node = MosquittoNode(tmp_path, data_dir=tmp_path, store_url="sqlite:///x")
    node.broker_log.write_text(
        "1: New client connected from 127.0.0.1:4242 as sensor-0001 "
        "(p2, c1, k60, u'sensor-0001').\n"
        "2: Received PUBLISH from sensor-0001 (d0, q1, r0, m1, 'devices/sensor-0001/telemetry',"
        " ... (57 bytes))\n"
        "3: Denied PUBLISH from sensor-0002 (d0, q1, r0, m1, 'devices/sensor-0001/x', "
        "... (1 bytes))\n"
    )
    assert node.connected_clients() == {"sensor-0001"}
    assert node.published() == {("sensor-0001", "devices/sensor-0001/telemetry")}
    assert node.published(after=node.log_mark()) == set()


def test_demo_on_mosquitto_without_it_exits_3_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "missing_requirements", lambda: ["the mosquitto binary"])
    code = demo.run_demo(demo.DemoOptions(devices=3, broker="mosquitto", out=io.StringIO()))
    assert code == demo.EXIT_NOT_AVAILABLE
    err = capsys.readouterr().err
    assert "the mosquitto binary missing" in err
    assert mosquitto.INSTALL_COMMAND in err
    assert "apt-get install -y mosquitto" in err
