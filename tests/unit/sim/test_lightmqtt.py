"""The light MQTT client's wire format, and the wave size for fleet-scale runs."""

from __future__ import annotations

import asyncio

from firmware_sim.bench import light_wave_size
from firmware_sim.lightmqtt import (
    DISCONNECT,
    connect_packet,
    publish_packet,
    read_packet,
    remaining_length,
)


def test_remaining_length_is_mqtt_varint() -> None:
    assert remaining_length(0) == b"\x00"
    assert remaining_length(127) == b"\x7f"
    assert remaining_length(128) == b"\x80\x01"
    assert remaining_length(16_383) == b"\xff\x7f"
    assert remaining_length(2_097_152) == b"\x80\x80\x80\x01"


def test_connect_packet_is_mqtt_311_clean_session() -> None:
    packet = connect_packet("sensor-0001", keepalive=60)
    assert packet[0] == 0x10
    body = packet[2:]
    assert packet[1] == len(body)
    assert body[:6] == b"\x00\x04MQTT"
    assert body[6] == 4  # protocol level 3.1.1
    assert body[7] == 0x02  # clean session, no username / password
    assert body[8:10] == b"\x00\x3c"
    assert body[10:] == b"\x00\x0bsensor-0001"


def test_publish_packet_is_qos1_with_packet_id() -> None:
    packet = publish_packet("devices/a/status", b"{}", 7)
    assert packet[0] == 0x32
    assert packet[2:20] == b"\x00\x10devices/a/status"
    assert packet[20:22] == b"\x00\x07"
    assert packet[22:] == b"{}"
    assert DISCONNECT == b"\xe0\x00"


def test_read_packet_parses_what_a_broker_sends() -> None:
    async def parse() -> list[tuple[int, bytes]]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"\x20\x02\x00\x00" + b"\x40\x02\x00\x01")
        reader.feed_eof()
        return [await read_packet(reader), await read_packet(reader)]

    assert asyncio.run(parse()) == [(0x20, b"\x00\x00"), (0x40, b"\x00\x01")]


def test_wave_size_fits_the_descriptor_limit() -> None:
    assert light_wave_size(5) == 5
    size = light_wave_size(10**7)
    assert 1 <= size < 10**7
