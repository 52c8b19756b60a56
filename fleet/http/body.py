"""Request bodies read whole, up to a limit and a deadline: the one reader of request bodies.

``StreamReader.read(n)`` returns as soon as *any* bytes are buffered, so one
call sees only the first TCP segment (or chunk) of a body sent in several: a
JSON body split in two was refused as invalid, and a manifest import silently
kept its first lines. Reading until EOF (or one byte past the limit) is
the only way to see what the client sent.

The deadline bounds the whole read: a client that announces a body and then
sends it slowly, or not at all, otherwise holds one of the worker's
``max_in_flight`` slots for as long as it likes, and a few hundred such
connections to an unauthenticated route (OCSP, the console's sign-in) made
every other request a 503. It is ``[server] body_timeout_seconds`` (set on
the application by the server wiring) plus the time the bytes received so
far take at :data:`MIN_BODY_RATE`: a stalled body gets the timeout alone,
a large manifest on a slow link still arrives.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

BODY_TIMEOUT = web.AppKey("body_timeout_seconds", float)
DEFAULT_BODY_TIMEOUT = 10.0
MIN_BODY_RATE = 64 * 1024  # bytes per second a client is expected to manage, at least


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body; 413 as soon as it is longer than ``limit`` bytes, 408 past the deadline."""
    chunks: list[bytes] = []
    size = 0
    grace = request.config_dict.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    start = asyncio.get_running_loop().time()
    try:
        # asyncio.timeout, not wait_for: no extra task per request.
        async with asyncio.timeout_at(start + grace) as deadline:
            while size <= limit:
                chunk = await request.content.read(limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                deadline.reschedule(start + grace + size / MIN_BODY_RATE)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="request body not received in time\n") from None
    if size > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    return b"".join(chunks)
