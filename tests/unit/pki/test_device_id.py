from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from fleet.kernel.device_id import (
    RESERVED_DEVICE_IDS,
    device_id_from_certificate,
    validate_device_id,
)
from fleet.kernel.errors import ConfigError, DeviceIdInvalid
from fleet.kernel.keys import KeyType
from fleet.pki.keys import PrivateKey
from fleet.pki.serial import random_serial

_SPEC = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)


@pytest.mark.parametrize("good", ["a", "dev-001", "Sensor_7.B", "x" * 64, "-", "_", "..."])
def test_valid_ids_pass_unchanged(good: str) -> None:
    assert validate_device_id(good) == good


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("a/b", "'/'"),
        ("a+b", "'\\+'"),
        ("#", "'#'"),
        ("", "empty"),
        ("x" * 65, "65 characters"),
        ("admin", "reserved"),
        ("ADMIN", "reserved"),
        ("$SYS", "'\\$'"),
        ("..", "reserved"),
        (".", "reserved"),
        ("dév", "U\\+00E9"),
        ("x\n", "U\\+000A"),
        ("a\x00b", "U\\+0000"),
        ("a b", "' '"),
        ("\uff44\uff45\uff56", "U\\+FF44"),  # fullwidth "dev"
    ],
)
def test_invalid_ids_say_what_is_wrong(bad: str, says: str) -> None:
    with pytest.raises(DeviceIdInvalid, match=says):
        validate_device_id(bad)


def test_reserved_list_covers_the_documented_names() -> None:
    required = {"admin", "root", "fleet", "broker", "sidecar", "system", "mosquitto"}
    assert required | {"anonymous", "$sys", ".", ".."} <= RESERVED_DEVICE_IDS
    for name in ("Root", "FLEET", "Mosquitto"):
        with pytest.raises(DeviceIdInvalid, match="reserved"):
            validate_device_id(name)


@given(st.text(max_size=70) | st.from_regex(_SPEC, fullmatch=True))
def test_accepts_exactly_the_regex_minus_reserved(text: str) -> None:
    expected = bool(_SPEC.fullmatch(text)) and text.lower() not in RESERVED_DEVICE_IDS
    if expected:
        assert validate_device_id(text) == text
    else:
        with pytest.raises(DeviceIdInvalid):
            validate_device_id(text)


def _cert(subject: list[x509.NameAttribute[str]], key: PrivateKey) -> x509.Certificate:
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    name = x509.Name(subject)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, None)
    )


def test_device_id_from_cn_or_serial_number(key_of: Callable[[KeyType], PrivateKey]) -> None:
    key = key_of(KeyType.ED25519)
    cert = _cert(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "sensor-1"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN.0042"),
        ],
        key,
    )
    assert device_id_from_certificate(cert) == "sensor-1"
    assert device_id_from_certificate(cert, "serialNumber") == "SN.0042"
    with pytest.raises(ConfigError, match="source"):
        device_id_from_certificate(cert, "email")


def test_device_id_from_certificate_refusals(key_of: Callable[[KeyType], PrivateKey]) -> None:
    key = key_of(KeyType.ED25519)
    no_cn = _cert([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")], key)
    with pytest.raises(DeviceIdInvalid, match="no cn"):
        device_id_from_certificate(no_cn)
    two = _cert(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "a"),
            x509.NameAttribute(NameOID.COMMON_NAME, "b"),
        ],
        key,
    )
    with pytest.raises(DeviceIdInvalid, match="2 cn attributes"):
        device_id_from_certificate(two)
    slash = _cert([x509.NameAttribute(NameOID.COMMON_NAME, "devices/+/x")], key)
    with pytest.raises(DeviceIdInvalid, match="'/'"):
        device_id_from_certificate(slash)
