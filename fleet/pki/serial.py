"""Certificate serial numbers.

RFC 5280 section 4.1.2.2 caps serials at 20 octets and requires them positive;
CA/Browser Forum rules want at least 64 unpredictable bits. 159 random bits fill
the 20 octets without the top bit (which would make DER add a 21st sign octet).
"""

from __future__ import annotations

import os

SERIAL_BITS = 159


def random_serial() -> int:
    """A positive, unpredictable serial that encodes in at most 20 DER octets."""
    while True:
        # 160 bits from the OS CSPRNG, top bit dropped (what secrets.randbits
        # does, in one call instead of a Python-level detour, on every issuance).
        serial = int.from_bytes(os.urandom(20), "big") >> (160 - SERIAL_BITS)
        if serial:  # zero is not a valid serial; the odds are 2**-159, but be exact
            return serial
