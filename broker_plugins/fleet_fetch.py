"""Fetching from the fleet server (its /crl, EST /cacerts): the one place that knows how
a fetch fails.

What comes back is judged by the caller (a CRL's signature, the kernel's CA-bundle
rule); until then it is untrusted, and so is the way it arrives. A fetch that
does not give a whole answer within its limits raises :class:`FetchFailed` (a
FleetError, which every caller's loop logs and retries), whatever the cause:

* the network (``OSError``, TLS errors, a timeout on one read);
* a garbled HTTP answer (``http.client.HTTPException``: a bad status line, too
  many or too long headers, broken chunking) - not an ``OSError``; escaping the
  callers' handlers it ended the Mosquitto sidecar;
* more than ``limit`` bytes;
* a body still arriving after ``deadline`` seconds: the socket timeout
  bounds each read, not the whole, so a server trickling a byte at a time
  would otherwise hold the fetch (and the loop waiting for it) forever.
  (Headers are bounded by http.client: 100 lines of 64 KiB, each read timed.)
"""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.request
from collections.abc import Mapping

from fleet.kernel.errors import ServerUnavailable

READ_TIMEOUT_SECONDS = 10.0  # one read
DEADLINE_SECONDS = 60.0  # the whole answer


class FetchFailed(ServerUnavailable):
    """No whole answer from the fleet server (see the module docstring)."""


def fetch(
    url: str,
    context: ssl.SSLContext,
    *,
    what: str,
    limit: int,
    headers: Mapping[str, str] | None = None,
    timeout: float = READ_TIMEOUT_SECONDS,
    deadline: float = DEADLINE_SECONDS,
) -> bytes:
    """The body ``url`` answers (2xx), at most ``limit`` bytes, within ``deadline`` seconds."""
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - callers check the scheme
    give_up = time.monotonic() + deadline
    body = bytearray()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            while True:
                # read1: what one read of the socket gives, so the deadline is checked in between.
                chunk = response.read1(65536)
                if not chunk:
                    break
                body += chunk
                if len(body) > limit:
                    raise FetchFailed(f"{what} from {url} is larger than {limit} bytes")
                if time.monotonic() > give_up:
                    raise FetchFailed(f"{what} from {url} took more than {deadline:g} s to arrive")
    except (OSError, http.client.HTTPException) as exc:
        raise FetchFailed(f"cannot fetch {what} from {url}: {type(exc).__name__}: {exc}") from exc
    return bytes(body)
