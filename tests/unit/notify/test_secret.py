"""The webhook secret: private file or FLEET_WEBHOOK_SECRET, refused otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import WebhookConfig
from fleet.kernel.errors import ConfigError
from fleet.notify.secret import webhook_secret

URLS = ("http://127.0.0.1:9/hook",)
SECRET = "0123456789abcdef0123"


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_from_private_file_stripped(tmp_path: Path) -> None:
    config = WebhookConfig(urls=URLS, secret_file=secret_file(tmp_path, SECRET + "\n"))
    assert webhook_secret(config, {}) == SECRET.encode()


def test_file_wins_over_environment(tmp_path: Path) -> None:
    config = WebhookConfig(urls=URLS, secret_file=secret_file(tmp_path, SECRET))
    assert webhook_secret(config, {"FLEET_WEBHOOK_SECRET": "x" * 32}) == SECRET.encode()


def test_from_environment() -> None:
    assert webhook_secret(WebhookConfig(urls=URLS), {"FLEET_WEBHOOK_SECRET": SECRET}) == (
        SECRET.encode()
    )


def test_missing_secret_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="no webhook secret") as info:
        webhook_secret(WebhookConfig(urls=URLS), {})
    assert "FLEET_WEBHOOK_SECRET" in info.value.diagnostics()
    assert "secret_file" in info.value.diagnostics()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    config = WebhookConfig(urls=URLS, secret_file=secret_file(tmp_path, SECRET, mode))
    with pytest.raises(ConfigError, match="readable by other users") as info:
        webhook_secret(config, {})
    assert SECRET not in info.value.diagnostics()


def test_missing_file_is_refused(tmp_path: Path) -> None:
    config = WebhookConfig(urls=URLS, secret_file=tmp_path / "absent")
    with pytest.raises(ConfigError, match="cannot read webhook secret file"):
        webhook_secret(config, {})


@pytest.mark.parametrize("text", ["", "   \n", "short"])
def test_empty_or_short_secret_is_refused(tmp_path: Path, text: str) -> None:
    config = WebhookConfig(urls=URLS, secret_file=secret_file(tmp_path, text))
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        webhook_secret(config, {})
