"""Error answers in the two shapes the server promises, and the Server header.

The admin API (``/api/...``) answers errors as JSON ``{"error": reason,
"message": ...}``; EST and the rest answer text/plain ``reason: message``
(RFC 7030 section 4.2.3). Both carry the reason in ``X-Fleet-Reason``.
"""

from __future__ import annotations

from aiohttp import web

API_PREFIX = "/api/"
# Names no software version: a version only helps whoever scans for known bugs.
SERVER_HEADER = "fleet"


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIX)


def error_response(status: int, reason: str, message: str, *, api: bool) -> web.Response:
    headers = {"X-Fleet-Reason": reason, "Server": SERVER_HEADER}
    if api:
        return web.json_response(
            {"error": reason, "message": message.strip()}, status=status, headers=headers
        )
    body = f"{reason}: {message.strip()}\n" if status != 202 else f"{message.strip()}\n"
    return web.Response(status=status, text=body, content_type="text/plain", headers=headers)


async def name_the_server(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response of the app says ``Server: fleet``."""
    response.headers["Server"] = SERVER_HEADER
