"""EST body encoding as deployed clients send and expect it (RFC 8951 §3.1)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.kernel.errors import EncodingInvalid
from fleet.kernel.wire import decode_base64_body, encode_base64_body


@given(st.binary(min_size=1, max_size=2000), st.integers(min_value=0, max_value=200))
def test_round_trip_at_any_line_length(der: bytes, line_length: int) -> None:
    body = encode_base64_body(der, line_length)
    assert decode_base64_body(body) == der
    lines = body.split(b"\r\n")[:-1]
    if line_length:
        assert all(len(line) <= line_length for line in lines)
    else:
        assert len(lines) == 1


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.replace(b"\r\n", b"\n"),
        lambda b: b" \t" + b.replace(b"\r\n", b" \r\n\t") + b"\r\n\r\n",
        lambda b: b + b"\x00\x00",  # stray bytes after the body
        lambda b: b.rstrip(b"\r\n").rstrip(b"="),  # missing padding
    ],
)
def test_whitespace_padding_and_stray_bytes_are_tolerated(mangle: object) -> None:
    der = bytes(range(256)) * 3 + b"x"
    body = mangle(encode_base64_body(der, 64))  # type: ignore[operator]
    assert decode_base64_body(body) == der


@pytest.mark.parametrize("body", [b"", b"   \r\n", b"!!!!", b"@@base64", b"A"])
def test_not_base64_is_refused(body: bytes) -> None:
    with pytest.raises(EncodingInvalid):
        decode_base64_body(body)


def test_standard_base64_decodes() -> None:
    assert decode_base64_body(base64.encodebytes(b"hello world")) == b"hello world"
