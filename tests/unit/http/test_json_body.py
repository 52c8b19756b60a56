"""JSON bodies: nesting is measured before parsing, so a deep body is a 400, not a 500."""

from __future__ import annotations

import pytest

from fleet.http.json_body import MAX_JSON_DEPTH, nesting_depth, parse_json_object
from fleet.kernel.errors import RequestInvalid


def test_json_nesting_is_measured_outside_strings_and_limited() -> None:
    assert nesting_depth(b'{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert nesting_depth(b'"\\"[[["') == 0
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(RequestInvalid) as caught:
        parse_json_object(deep)
    assert caught.value.reason == "json_too_deep"
    assert "a" in parse_json_object(b'{"a": ' + b"[" * 30 + b"]" * 30 + b"}")
