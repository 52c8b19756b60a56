"""The Store contract for listing cursors by prefix, as the brokers' feed positions use it."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.store.broker_positions import (
    BrokerPosition,
    check_broker_name,
    read_positions,
    report_position,
)
from fleet.store.protocol import Store


async def test_brokers_report_and_are_read_back_by_name(store: Store, now: dt.datetime) -> None:
    at = now.replace(microsecond=0)
    await store.set_cursor("notifier.webhooks", 7)  # not a broker
    await report_position(store, "mqtt-b", 4, at)
    await report_position(store, "mqtt-a", 2, at - dt.timedelta(seconds=30))
    await report_position(store, "mqtt-a", 3, at)  # a later report replaces it
    assert await read_positions(store) == [
        BrokerPosition("mqtt-a", 3, at),
        BrokerPosition("mqtt-b", 4, at),
    ]
    assert await store.list_cursors("notifier.") == {"notifier.webhooks": 7}
    assert await store.list_cursors("nothing.") == {}


@pytest.mark.parametrize("name", ["", "a b", "a/b", "x" * 81, "é"])
def test_a_broker_name_is_a_safe_cursor_name(name: str) -> None:
    with pytest.raises(ValueError, match="broker name"):
        check_broker_name(name)
