"""The HTTP/1.1 connection handler: aiohttp's, with fleet's answer to requests it cannot parse.

aiohttp answers a request it cannot parse (a request line over 8190 bytes,
a header too large, bytes that are not HTTP) itself, before any middleware:
a text/plain 400 that names no reason code and logs a traceback. Here those
answers take the shape the server promises (JSON with a reason on the admin
API, ``reason: message`` and ``X-Fleet-Reason`` elsewhere), with the status
that says what was wrong, and are logged as one line without a traceback.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_request import BaseRequest

from fleet.kernel.reasons import Reason
from fleet.server.answers import SERVER_HEADER, error_response

log = logging.getLogger("fleet.http")

# The start of a request line, or of its target, that addresses the admin API.
_API_LINE = re.compile(rb"^\s*(?:[A-Za-z]+\s+)?/api/")


class FleetRequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, UnicodeError):
            # Header bytes that are not UTF-8 met by aiohttp before any middleware
            # (its Expect handler quotes the value back): the client's, a 400.
            log.info("request from %s with a header that is not UTF-8", request.remote)
            refusal = error_response(
                400, Reason.REQUEST_MALFORMED, "a header is not UTF-8 text", api=False
            )
            refusal.force_close()
            return refusal
        if not isinstance(exc, HttpProcessingError):
            response = super().handle_error(request, status, exc, message)
            response.headers["Server"] = SERVER_HEADER
            return response
        status, reason = parse_error_status(exc)
        level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
        log.log(level, "unparseable request from %s: %s", request.remote, _first_line(exc))
        text = f"{HTTPStatus(status).phrase}: {_first_line(exc)}"
        response = error_response(status, reason, text, api=_is_api_request(exc))
        response.force_close()
        return response


def parse_error_status(exc: HttpProcessingError) -> tuple[int, Reason]:
    if isinstance(exc, LineTooLong):
        if _is_request_line(exc):
            return 414, Reason.URI_TOO_LONG
        return 431, Reason.HEADERS_TOO_LARGE
    return 400, Reason.REQUEST_MALFORMED


def _line(exc: HttpProcessingError) -> bytes:
    # LineTooLong carries the first 100 bytes of the offending line (the request
    # target from the C parser, the whole request line from the Python one).
    first = exc.args[0] if exc.args else b""
    if isinstance(first, bytes | bytearray):
        return bytes(first)
    return str(first).encode("latin-1", "replace")


def _is_request_line(exc: HttpProcessingError) -> bool:
    line = _line(exc)
    return line.startswith(b"/") or _API_LINE.match(line) is not None or b" /" in line[:16]


def _is_api_request(exc: HttpProcessingError) -> bool:
    # Only a too-long request line says which path it was for; other parse errors
    # come before or without it, and get the EST (text/plain) shape.
    return isinstance(exc, LineTooLong) and _API_LINE.match(_line(exc)) is not None


def _first_line(exc: HttpProcessingError) -> str:
    text = exc.message if isinstance(exc.message, str) else str(exc)
    return text.splitlines()[0][:160] if text else type(exc).__name__
