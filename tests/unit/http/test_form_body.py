"""Console forms: any body is a dict of text or a FleetError (a 4xx), never another exception."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fleet.http.form_body import MAX_FORM_FIELDS, parse_form
from fleet.kernel.errors import FleetError

fields = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=10)


def refusal(raw: bytes) -> str | None:
    """The reason ``raw`` is refused with, or None when it is read as a form of text."""
    try:
        form = parse_form(raw)
    except FleetError as error:
        return error.reason
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in form.items())
    return None


@given(st.binary(max_size=300))
def test_any_body_is_a_form_or_a_refusal(raw: bytes) -> None:
    assert refusal(raw) in {None, "encoding_invalid", "request_invalid"}


@given(fields)
def test_what_a_browser_encodes_is_read_back(values: dict[str, str]) -> None:
    assert parse_form(urllib.parse.urlencode(values).encode()) == values


@given(st.binary(min_size=1, max_size=8))
def test_percent_escapes_that_are_not_utf8_are_refused(data: bytes) -> None:
    try:
        data.decode("utf-8")
        assume(False)
    except UnicodeDecodeError:
        pass
    assert refusal(b"csrf=" + b"".join(b"%%%02X" % b for b in data)) == "encoding_invalid"


def test_a_form_has_a_bounded_number_of_fields() -> None:
    raw = "&".join(f"f{i}=1" for i in range(MAX_FORM_FIELDS + 1)).encode()
    with pytest.raises(FleetError) as refused:
        parse_form(raw)
    assert refused.value.reason == "request_invalid"
