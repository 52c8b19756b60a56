"""Path parameters of the admin API and the console: each one checked once, at the door.

A route's ``{name}`` is hostile text until the parser of that name here has
accepted it. The guard of every admin endpoint (the API's ``needs``, the
console's ``guard``) calls :func:`check_path_params` right after identifying
the caller and before the role check, so a malformed parameter

- is a 400 that names it, with its reason code — not a 403 (which tells an
  admin "you may not") and not a 404 ("no such thing" for what cannot exist);
- never reaches the store, the use-cases or the audit log (a refused role
  check records the device id of the path: only a valid one).

A route whose parameter has no parser here fails loudly (LookupError, a 500
that the route test catches) instead of passing the text on unchecked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from fleet.kernel.device_id import validate_device_id
from fleet.kernel.errors import ConfigError, DeviceIdInvalid, RequestInvalid
from fleet.kernel.fingerprint import normalize_fingerprint
from fleet.kernel.reasons import Reason
from fleet.serials import parse_serial

_CHECKED = "fleet.path_params"
_ECHO = 80  # characters of a refused value repeated in a message
_MAX_FINGERPRINT_TEXT = 200  # "AB:CD:..." with spaces is 191 characters


def _shown(text: str) -> str:
    return repr(text if len(text) <= _ECHO else text[:_ECHO] + "...")


def parse_device_id(text: str, name: str = "device_id") -> str:
    """``text`` if it is a valid device id; otherwise a 400 (``device_id_invalid``).

    The kernel's DeviceIdInvalid is a refusal (403) where a device *presents*
    an id; an admin *naming* an impossible device made a request mistake."""
    try:
        return validate_device_id(text)
    except DeviceIdInvalid as exc:
        raise RequestInvalid(
            exc.message,  # echoes at most the 64 characters of an id of legal length
            reason=Reason.DEVICE_ID_INVALID,
            hint=DeviceIdInvalid.hint,
        ) from None


def parse_sha256(text: str, name: str = "sha256") -> str:
    """A SHA-256 fingerprint in any spelling ``fleet trust`` takes, as lowercase hex."""
    if len(text) > _MAX_FINGERPRINT_TEXT:
        raise RequestInvalid(
            f"{name} is {len(text)} characters long; a SHA-256 fingerprint is 64 hex digits",
            reason=Reason.FINGERPRINT_INVALID,
        )
    try:
        return normalize_fingerprint(text)
    except ConfigError as exc:
        raise RequestInvalid(f"{name}: {exc.message}", reason=Reason.FINGERPRINT_INVALID) from None


PARSERS: Mapping[str, Callable[[str, str], Any]] = {
    "device_id": parse_device_id,
    "serial": parse_serial,
    "sha256": parse_sha256,
}


def check_path_params(request: web.Request) -> None:
    """Parse every path parameter of ``request``; 400 for the first
    malformed one. The parsed values are what :func:`path_param` returns."""
    parsed: dict[str, Any] = {}
    for name, text in request.match_info.items():
        parser = PARSERS.get(name)
        if parser is None:
            raise LookupError(f"path parameter {{{name}}} has no parser in fleet.http.path_params")
        parsed[name] = parser(text, name)
    request[_CHECKED] = parsed


def path_param(request: web.Request, name: str) -> Any:
    """The parsed value of path parameter ``name`` (check_path_params ran in the guard)."""
    return request[_CHECKED][name]


def device_id(request: web.Request) -> str:
    value: str = path_param(request, "device_id")
    return value


def serial(request: web.Request) -> int:
    value: int = path_param(request, "serial")
    return value


def sha256(request: web.Request) -> str:
    value: str = path_param(request, "sha256")
    return value
