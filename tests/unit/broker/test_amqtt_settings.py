"""`fleet-broker amqtt` settings: a refused setting's hint names where to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_plugins.amqtt.settings import load_settings
from fleet.kernel.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[listener]\naddress = "127.0.0.1:8884"\nfoo = 1\n', r"unknown setting \[listener\] foo"),
        ("node_name = 'x'\n", "must be a \\[section\\]"),
        ("[revocation]\nmax_staleness = 0\n", "max_staleness must be positive"),
    ],
)
def test_a_refused_broker_toml_names_that_file_not_fleet_toml(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(text)
    for name in ("tls.pem", "tls.key", "fleet-ca.pem"):
        (tmp_path / name).write_text("")
    flags = {
        "tls_cert": str(tmp_path / "tls.pem"),
        "tls_key": str(tmp_path / "tls.key"),
        "fleet_ca": str(tmp_path / "fleet-ca.pem"),
        "store_url": "sqlite:///x.db",
        "listen": "127.0.0.1:8884",
    }
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(config, flags)
    assert str(config) in info.value.hint
    assert "fleet-broker amqtt --help" in info.value.hint
    assert "fleet.toml" not in info.value.hint


def test_a_refused_flag_points_at_the_flags(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="listen address") as info:
        load_settings(None, {"listen": "nowhere"})
    assert "fleet-broker amqtt --help" in info.value.hint
    assert "fleet.toml" not in info.value.hint
