"""Session announcements from the plugin: only a well-formed one is passed to the peers."""

from __future__ import annotations

import pytest

from broker_plugins.mosquitto.peers import session_command


def test_an_announcement_becomes_a_session_command() -> None:
    assert session_command(b"dev-0001 1796521646123") == "session dev-0001 1796521646123"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"dev-0001",
        b"dev-0001 12 34",
        b"dev/0001 1796521646123",  # outside the device id alphabet
        b"admin 1796521646123",  # reserved
        b"dev-0001 -5",
        b"dev-0001 1e9",
        b"dev-0001 9999999999999999",  # beyond any real time in ms
        b"dev-0001 179652164612\n3",
        "d\u00e9v 1".encode(),
        b"dev-0001 1" + b" " * 200,
    ],
)
def test_a_malformed_announcement_is_dropped(payload: bytes) -> None:
    assert session_command(payload) is None
