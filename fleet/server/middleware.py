"""aiohttp middlewares: request id and access log, overload shedding, error mapping."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from fleet.kernel.errors import CredentialsRequired, EnrollmentPending, FleetError, TokenInvalid
from fleet.server.errors import status_for
from fleet.server.logs import AccessLog, request_id_var
from fleet.server.metrics import Metrics

log = logging.getLogger("fleet.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
# Store outages and overload clear up quickly; tell clients when to retry.
RETRY_AFTER_UNAVAILABLE = 5


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
    try:
        return await handler(request)
    except FleetError as error:
        request["reason"] = error.reason
        status = status_for(error)
        if status >= 500:
            log.error("server error: %s", error.diagnostics())
        else:
            log.debug("refused: %s", error.message)
        response = _error(request, status, error.reason, error.message)
        if isinstance(error, EnrollmentPending):
            response.headers["Retry-After"] = str(error.retry_after)
        elif isinstance(error, CredentialsRequired | TokenInvalid):
            admin = request.path.startswith("/api/")
            challenge = 'Bearer realm="fleet-admin"' if admin else 'Basic realm="fleet"'
            response.headers["WWW-Authenticate"] = challenge
        elif status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE)
        return response
    except web.HTTPException as exc:
        # aiohttp's own answers (404 no route, 405, 413 body too large, 408).
        request["reason"] = _slug(exc.reason)
        response = _error(request, exc.status, request["reason"], exc.text or exc.reason)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        request["reason"] = "internal_error"
        log.exception("unexpected error")
        return _error(request, 500, "internal_error", "internal error; see the server log")


def _error(request: web.Request, status: int, reason: str, message: str) -> web.Response:
    """The admin API answers JSON; EST clients get text/plain (RFC 7030 §4.2.3)."""
    if request.path.startswith("/api/"):
        return web.json_response(
            {"error": reason, "message": message.strip()},
            status=status,
            headers={"X-Fleet-Reason": reason},
        )
    return _text(status, reason, message)


def _text(status: int, reason: str, message: str) -> web.Response:
    body = f"{reason}: {message.strip()}\n" if status != 202 else f"{message.strip()}\n"
    return web.Response(
        status=status,
        text=body,
        content_type="text/plain",
        headers={"X-Fleet-Reason": reason},
    )


def _outcome(status: int) -> str:
    if status == 200:
        return "issued"
    if status == 202:
        return "pending"
    if status < 500:
        return "refused"
    return "error"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "http_error"
