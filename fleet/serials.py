"""Certificate serials as people and tools write them: one rule for the CLI and the API.

Plain hex, as fleet prints them (``fleet device show``, the API), or with colons
between byte pairs, as openssl prints them (``AB:CD:...``). Nothing else: no
``0x`` prefix, sign, ``_`` or space (which ``int(text, 16)`` quietly takes), no
non-ASCII digits; at most 20 octets (RFC 5280 section 4.1.2.2), never zero.
"""

from __future__ import annotations

import re

from fleet.kernel.errors import RequestInvalid

_SERIAL = re.compile(r"[0-9a-fA-F]{1,40}|[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{2}){1,19}", re.ASCII)
_ECHO = 80  # characters of a refused serial repeated in a message


def parse_serial(text: str, name: str = "serial") -> int:
    """The serial ``text`` spells; RequestInvalid naming ``name`` otherwise."""
    if not _SERIAL.fullmatch(text):
        shown = text if len(text) <= _ECHO else text[:_ECHO] + "..."
        raise RequestInvalid(
            f"{name} {shown!r} is not a certificate serial: 1-40 hex digits "
            "(or openssl's AB:CD:... form)"
        )
    serial = int(text.replace(":", ""), 16)
    if serial == 0:
        raise RequestInvalid(f"{name} is out of range (serials are positive)")
    return serial
