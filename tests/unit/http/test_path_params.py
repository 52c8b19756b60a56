"""Path parameters: every text is either the one valid value or a 400 with a reason code."""

from __future__ import annotations

import re
import string
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from fleet.admin.routes import AdminApi
from fleet.http.path_params import PARSERS, parse_device_id, parse_sha256
from fleet.http.statuses import status_for
from fleet.kernel.device_id import is_device_id
from fleet.kernel.errors import FleetError, RequestInvalid
from fleet.serials import parse_serial
from fleet.ui.routes import console_routes

# Device-id characters, their neighbours, and what URLs smuggle in (%00, %2F, Unicode).
_TEXT = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + "._-/+#% \x00\n\u00e9\u0130")
    | st.characters(),
    max_size=80,
)


def _refusal(parse: Any, text: str) -> FleetError:
    with pytest.raises(RequestInvalid) as caught:
        parse(text, "param")
    return caught.value


@given(_TEXT | st.sampled_from(["admin", "ADMIN", "..", "a" * 65, "", "sensor-0001"]))
def test_a_device_id_in_a_path_is_the_id_or_a_400_device_id_invalid(text: str) -> None:
    if is_device_id(text):
        assert parse_device_id(text) == text
        return
    error = _refusal(parse_device_id, text)
    assert (status_for(error), error.reason) == (400, "device_id_invalid")
    assert len(error.message) < 300


@given(
    _TEXT
    | st.sampled_from(["0x10", "1_0", " a", "+a", "-1", "0", "f" * 41, "F" * 40, "0a:ff", "a:b"])
    | st.lists(st.sampled_from(["00", "7f", "AB", "c"]), min_size=1, max_size=21).map(":".join)
)
def test_a_serial_is_hex_digits_or_openssl_pairs_or_a_400(text: str) -> None:
    """One rule for the API's path and `fleet cert revoke` (fleet.serials)."""
    plain = re.fullmatch(r"[0-9a-fA-F]{1,40}", text, re.ASCII)
    pairs = re.fullmatch(r"[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{2}){1,19}", text, re.ASCII)
    if (plain or pairs) and int(text.replace(":", ""), 16) > 0:
        assert parse_serial(text, "serial") == int(text.replace(":", ""), 16)
        return
    error = _refusal(parse_serial, text)
    assert (status_for(error), error.reason) == (400, "request_invalid")
    assert len(error.message) < 300


@given(_TEXT | st.sampled_from(["A" * 5000, "ab:" * 32]))
def test_a_fingerprint_in_a_path_is_lowercase_hex_or_a_short_400(text: str) -> None:
    cleaned = re.sub(r"[\s:]", "", text).lower().rsplit("=", 1)[-1]
    if re.fullmatch("[0-9a-f]{64}", cleaned, re.ASCII) and len(text) <= 200:
        assert parse_sha256(text, "sha256") == cleaned
        return
    error = _refusal(parse_sha256, text)
    assert (status_for(error), error.reason) == (400, "fingerprint_invalid")
    assert len(error.message) < 400


class _AnyHandler:
    """Stands in for the objects whose handlers a route table names: only paths are read."""

    def __getattr__(self, name: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            raise AssertionError("not called")

        return handler

    def guard(self, handler: Any, role: Any) -> Any:
        return self.__getattr__("guarded")


def test_every_admin_and_console_path_parameter_has_a_parser() -> None:
    """A new route whose {name} has no parser would pass hostile text on unchecked."""
    api = AdminApi.routes(_AnyHandler())  # type: ignore[arg-type]
    console = console_routes(_AnyHandler())  # type: ignore[arg-type]
    names = {
        name
        for route in [*api, *console]
        if isinstance(route, web.RouteDef)
        for name in re.findall(r"{(\w+)", route.path)
    }
    assert names == set(PARSERS), names
