"""Request bodies read whole, up to a limit: the one reader for bodies a handler reads itself.

``StreamReader.read(n)`` returns as soon as *any* bytes are buffered, so one
call sees only the first TCP segment (or chunk) of a body sent in several: a
JSON body split in two was refused as invalid, and a manifest import silently
kept its first few lines. Reading until EOF (or one byte past the limit) is
the only way to see what the client sent.
"""

from __future__ import annotations

from aiohttp import web


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body; 413 as soon as it is longer than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    return b"".join(chunks)
