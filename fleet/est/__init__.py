"""EST (RFC 7030 with RFC 8951's corrections): the wire format and its aiohttp routes."""
