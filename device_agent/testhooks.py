"""The injected clock and the crash points: the two seams tests (and the simulator) use.

Test hooks, documented so that nobody mistakes them for features:

``FLEET_AGENT_CLOCK_OFFSET=SECONDS``
    The agent's notion of "now" is the system clock plus this many seconds
    (negative = behind). It moves every decision the agent makes from time
    (expiry, renewal schedule, local certificate checks); it cannot move
    OpenSSL's own clock in the TLS handshake.

``FLEET_SIM_CLOCK_FILE=PATH``
    The simulator's clock (``fleet.kernel.clock.SimulatedClock``, with its
    guards): "now" is the wall clock plus the offset in that file, shared with
    the server and the broker; ``FLEET_AGENT_CLOCK_OFFSET`` shifts it further.

``FLEET_AGENT_CRASH_AT=STEP``
    ``os._exit(137)`` (as if killed with SIGKILL) right after the named step of
    an enrollment or renewal completes. Steps, in order: see ``CRASH_STEPS``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping

from fleet.kernel.clock import Clock, ShiftedClock, SystemClock, clock_from_environ

CLOCK_OFFSET_ENV = "FLEET_AGENT_CLOCK_OFFSET"
CRASH_AT_ENV = "FLEET_AGENT_CRASH_AT"

# The named steps of a renewal (and of a first enrollment), in order.
CRASH_STEPS = (
    "key_generated",  # the new private key is durably on disk (pending)
    "csr_sent",  # the CSR went out; the reply has not been read
    "cert_received",  # the new certificate is in memory, checked, not yet on disk
    "cert_written",  # the new certificate is durably on disk (pending, unproven)
    "proven",  # a TLS handshake with the new pair succeeded; it is now current
    "old_removed",  # the previous key and certificate are deleted
)


def clock_from_env(environ: Mapping[str, str] | None = None) -> Clock:
    """The system (or simulator's) clock, shifted by ``FLEET_AGENT_CLOCK_OFFSET`` seconds."""
    env = os.environ if environ is None else environ
    base = clock_from_environ(env)
    raw = env.get(CLOCK_OFFSET_ENV, "").strip()
    if not raw:
        return base
    try:
        offset = dt.timedelta(seconds=float(raw))
    except ValueError:
        raise ValueError(f"{CLOCK_OFFSET_ENV}={raw!r} is not a number of seconds") from None
    return SystemClock(offset) if isinstance(base, SystemClock) else ShiftedClock(base, offset)


CrashHook = Callable[[str], None]


def crash_point(step: str) -> None:
    """Die like ``kill -9`` if ``FLEET_AGENT_CRASH_AT`` names this step (test hook)."""
    if os.environ.get(CRASH_AT_ENV) == step:
        os._exit(137)
