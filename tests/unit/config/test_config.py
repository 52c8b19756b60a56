"""fleet.toml parsing: defaults, relative paths, env overrides, and refusals."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fleet.config import load_config
from fleet.kernel.errors import ConfigError
from fleet.kernel.keys import KeyType


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_empty_file_gives_safe_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), environ={})
    assert config.store_url == f"sqlite:///{tmp_path.resolve() / 'fleet.db'}"
    assert config.server.listen == "127.0.0.1:8443"
    assert config.server.tls_cert == tmp_path.resolve() / "tls/server.pem"
    assert config.policy.unknown_devices == "hold"
    assert config.est.base64_line_length == 64
    assert config.profile.validity == dt.timedelta(days=30)
    assert config.profile.allowed_key_types == {KeyType.EC_P256, KeyType.EC_P384, KeyType.ED25519}


def test_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[store]\nurl = "sqlite:data/x.db"\n'), environ={})
    assert config.store_url == f"sqlite:///{tmp_path.resolve() / 'data/x.db'}"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[policy]\nunknown_devices = "hold"\n')
    config = load_config(
        path,
        environ={
            "FLEET_POLICY_UNKNOWN_DEVICES": "reject",
            "FLEET_STORE_URL": "redis://127.0.0.1:6390/0",
            "FLEET_EST_BASE64_LINE_LENGTH": "0",
            "FLEET_STRICT": "1",  # not a setting: ignored
            "FLEET_CA_KEY_PASSPHRASE": "secret",  # a secret, never a config override
        },
    )
    assert config.policy.unknown_devices == "reject"
    assert config.store_url == "redis://127.0.0.1:6390/0"
    assert config.est.base64_line_length == 0


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[policy]\nunknown_device = 'hold'\n", "unknown setting(s) unknown_device"),
        ("[policy]\nunknown_devices = 'allow'\n", "must be one of hold, reject"),
        ("[server]\nworkers = 0\n", "workers must be >= 1"),
        ("[server]\nworkers = true\n", "workers must be int"),
        ("[est]\nbase64_line_length = -1\n", "base64_line_length must be >= 0"),
        ("[profile]\nkey_types = ['rsa-1024']\n", "rsa-1024"),
        ("[profile]\nkey_types = []\n", "non-empty list"),
        ("[bogus]\n", "unknown setting(s) bogus"),
        ("policy = 3\n", "[policy] must be a table"),
        ("this is not toml", "cannot read"),
        # Found from outside: only the prefix was checked; the notifier's _redact()
        # then raised ValueError on the port when it first logged the URL (start-up).
        ("[webhooks]\nurls = ['http://hooks.example:99999/x']\n", "not a valid URL"),
        ("[webhooks]\nurls = ['https://[::1/x']\n", "not a valid URL"),
        ("[webhooks]\nurls = ['http://h:-1/x']\n", "not a valid URL"),
        ("[webhooks]\nurls = ['https:///no-host']\n", "with a host"),
        ("[webhooks]\nurls = ['ftp://h/x']\n", "with a host"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(
    tmp_path: Path, text: str, complaint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert complaint in info.value.message


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", environ={})
    assert "fleet init" in info.value.diagnostics()


def test_a_label_may_set_its_own_base64_line_length(tmp_path: Path) -> None:
    text = (
        "[est]\nbase64_line_length = 76\n"
        "[labels.oldswan]\nbase64_line_length = 0\n"
        "[labels.sensors]\nvalidity_days = 7\n"
    )
    config = load_config(write(tmp_path, text), environ={})
    assert config.base64_line_length_for("oldswan") == 0
    assert config.base64_line_length_for("sensors") == 76  # the [est] default
    assert config.base64_line_length_for(None) == 76
    assert config.est.bootstrap_on_reenroll is True


@pytest.mark.parametrize("value", ["-1", "true", '"64"'])
def test_a_bad_label_line_length_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[labels.oldswan\] base64_line_length"):
        load_config(write(tmp_path, f"[labels.oldswan]\nbase64_line_length = {value}\n"), {})


def test_max_chain_depth_matches_the_front_ends_and_is_bounded(tmp_path: Path) -> None:
    import re

    config = load_config(write(tmp_path, ""), environ={})
    repo = Path(__file__).resolve().parents[3]
    nginx = (repo / "docs/nginx/fleet-est.conf").read_text()
    apache = (repo / "docs/apache/fleet-est.conf").read_text()
    depth = config.policy.max_chain_depth
    assert re.search(rf"^\s*ssl_verify_depth {depth};", nginx, re.MULTILINE)
    assert re.search(rf"^\s*SSLVerifyDepth {depth}$", apache, re.MULTILINE)
    deeper = load_config(write(tmp_path, ""), environ={"FLEET_POLICY_MAX_CHAIN_DEPTH": "5"})
    assert deeper.policy.max_chain_depth == 5
    with pytest.raises(ConfigError, match="max_chain_depth"):
        load_config(write(tmp_path, ""), environ={"FLEET_POLICY_MAX_CHAIN_DEPTH": "9"})
