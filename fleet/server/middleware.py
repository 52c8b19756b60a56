"""aiohttp middlewares: request id and access log, overload shedding, error mapping."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from fleet.kernel.errors import (
    CredentialsRequired,
    EnrollmentPending,
    FleetError,
    RequestInvalid,
    TokenInvalid,
    UnsupportedMediaType,
)
from fleet.kernel.reasons import Reason
from fleet.server.answers import error_response, is_api_path
from fleet.server.errors import status_for
from fleet.server.logs import AccessLog, request_id_var
from fleet.server.metrics import Metrics

log = logging.getLogger("fleet.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
# Store outages and overload clear up quickly; tell clients when to retry.
RETRY_AFTER_UNAVAILABLE = 5
# nginx's code for "the client closed the connection before the answer": logs
# and metrics only, since nobody receives it.
CLIENT_CLOSED_REQUEST = 499


def build_middlewares(metrics: Metrics, *, max_in_flight: int) -> list[web.middleware]:  # type: ignore[valid-type]
    in_flight = 0
    access_log = AccessLog()

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        supplied = request.headers.get("X-Request-Id", "")
        request_id = supplied if _REQUEST_ID.fullmatch(supplied) else secrets.token_hex(16)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        response: web.StreamResponse | None = None
        if in_flight >= max_in_flight:
            metrics.rejected_overload.inc()
            response = _text(503, "overloaded", "server is saturated; retry later")
            response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE)
        else:
            in_flight += 1
            metrics.in_flight.inc()
            try:
                response = await _answer(request, handler)
            finally:
                in_flight -= 1
                metrics.in_flight.dec()
        response.headers["X-Request-Id"] = request_id
        elapsed = time.perf_counter() - started
        operation = request.get("operation")
        reason = request.get("reason", "")
        if operation is not None:
            outcome = _outcome(response.status)
            metrics.observe_request(operation, outcome, reason or outcome, elapsed)
        if access_log.enabled:
            access_log.write(
                f"{request.method} {request.path} {response.status}",
                {
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "ms": round(elapsed * 1000, 2),
                    "remote": request.remote,
                },
                request.get("device_id"),
                reason or None,
            )
        request_id_var.reset(token)
        return response

    return [observe]


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = is_api_path(request.path)
    try:
        _refuse_undecodable_headers(request)
        _refuse_content_coding(request)
        return await handler(request)
    except FleetError as error:
        request["reason"] = error.reason
        status = status_for(error)
        if status >= 500:
            log.error("server error: %s", error.diagnostics())
        else:
            log.debug("refused: %s", error.message)
        response = error_response(status, error.reason, error.message, api=api)
        if isinstance(error, UnsupportedMediaType) and "Content-Encoding" in request.headers:
            response.headers["Accept-Encoding"] = "identity"  # RFC 7694
        elif isinstance(error, EnrollmentPending):
            response.headers["Retry-After"] = str(error.retry_after)
        elif isinstance(error, CredentialsRequired | TokenInvalid):
            challenge = 'Bearer realm="fleet-admin"' if api else 'Basic realm="fleet"'
            response.headers["WWW-Authenticate"] = challenge
        elif status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE)
        return response
    except web.HTTPRedirection as exc:
        # A redirect is an answer, not an error: keep its status and Location.
        request["reason"] = "redirect"
        return web.Response(
            status=exc.status, headers={"Location": exc.headers.get("Location", "")}
        )
    except web.HTTPException as exc:
        # aiohttp's own answers (404 no route, 405, 413 body too large, 408).
        request["reason"] = _slug(exc.reason)
        response = error_response(exc.status, request["reason"], exc.text or exc.reason, api=api)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except (
        ConnectionError, HttpProcessingError, RequestPayloadError, asyncio.IncompleteReadError
    ) as exc:  # fmt: skip
        if _client_gone(request):
            # Nobody is left to answer: not an error of ours, so no traceback and no 5xx.
            request["reason"] = Reason.CLIENT_GONE
            log.info("client closed the connection before it was answered: %s", _message(exc))
            return error_response(CLIENT_CLOSED_REQUEST, Reason.CLIENT_GONE, _message(exc), api=api)
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            # A body aiohttp cannot parse (bad chunked encoding, say) on a live connection.
            request["reason"] = Reason.REQUEST_MALFORMED
            log.info("malformed request body: %s", _message(exc))
            return error_response(400, Reason.REQUEST_MALFORMED, _message(exc), api=api)
        return _internal_error(request, api)
    except Exception:
        return _internal_error(request, api)


def _refuse_undecodable_headers(request: web.Request) -> None:
    """400 for a header value that is not UTF-8: no header fleet reads carries other bytes.

    aiohttp hands such bytes on as lone surrogates, which fail far from here
    when the value is first encoded (hashing a bearer token, say): a 500.
    """
    for name, value in request.headers.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestInvalid(
                f"the {name} header is not UTF-8 text", reason=Reason.REQUEST_MALFORMED
            ) from None


def _refuse_content_coding(request: web.Request) -> None:
    """No request body is compressed: 415 for any Content-Encoding but identity.

    No EST client, browser form or admin client compresses a request body,
    so the server is built with ``auto_decompress=False`` and says so: left
    to aiohttp, a gzip or deflate body was inflated (CPU for a bomb) and one
    that did not inflate failed deep in aiohttp as a 500 with a traceback.
    """
    codings = request.headers.getall("Content-Encoding", [])
    if any(c.strip().lower() not in ("", "identity") for v in codings for c in v.split(",")):
        raise UnsupportedMediaType(
            f"Content-Encoding {', '.join(codings)[:60]!r} is not accepted; send the body as is",
            hint="Send the request body uncompressed (no Content-Encoding).",
        )


def _internal_error(request: web.Request, api: bool) -> web.Response:
    request["reason"] = "internal_error"
    log.exception("unexpected error")
    return error_response(500, "internal_error", "internal error; see the server log", api=api)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200]


def _text(status: int, reason: str, message: str) -> web.Response:
    return error_response(status, reason, message, api=False)


def _outcome(status: int) -> str:
    if status == CLIENT_CLOSED_REQUEST:
        return "client_gone"
    if status == 200:
        return "issued"
    if status == 202:
        return "pending"
    if status < 500:
        return "refused"
    return "error"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "http_error"
