"""JSON request bodies: the one reader, with a size and a nesting limit.

Python's json module recurses once per nesting level, so a body of a few
thousand ``[`` exhausts the interpreter's stack (RecursionError, a 500). The
depth is measured before parsing, in one linear pass that skips strings;
nothing the admin API accepts nests deeper than :data:`MAX_JSON_DEPTH`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from fleet.http.body import read_body
from fleet.kernel.decoding import decoding
from fleet.kernel.errors import EncodingInvalid, RequestInvalid
from fleet.kernel.reasons import Reason

MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32


async def read_json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when ``optional`` and empty); 4xx otherwise."""
    return parse_json_object(await read_body(request, MAX_JSON_BYTES), optional=optional)


def parse_json_object(raw: bytes, *, optional: bool = False) -> dict[str, Any]:
    if not raw.strip():
        if optional:
            return {}
        raise RequestInvalid("a JSON object body is required")
    depth = nesting_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise RequestInvalid(
            f"the JSON body nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}",
            reason=Reason.JSON_TOO_DEEP,
        )
    with decoding("the request body as JSON", EncodingInvalid):
        body = json.loads(raw)
    if not isinstance(body, dict):
        raise RequestInvalid("the request body must be a JSON object")
    return body


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (strings skipped; not validated)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest
