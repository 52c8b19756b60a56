"""Refusals of unauthenticated requests in the audit log, within a budget.

A request refused before anyone was authenticated (no or an untrusted client
certificate, an expired bootstrap, a wrong console token) is audited so that
`fleet device why` and the console can show it. But such a request costs its
sender nothing: without a bound, any client that can open a TLS connection
could append hash-chained records as fast as the store takes them, growing the
log and the store without limit.

So these records are written within a budget, per process: at most
``per_key`` a minute for one key (source address and claimed device id), and
``overall`` a minute in all. What is over budget is counted, not written; the
next record written for that key carries how many were left out
(``suppressed``), and a warning is logged once per minute while it happens.
Refusals of authenticated requests (an admin without the role, a device
refused by policy) are not limited: their sender is known.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging

from fleet.records import AuditEvent
from fleet.store.protocol import AuditLog

log = logging.getLogger(__name__)

WINDOW = dt.timedelta(minutes=1)
PER_KEY = 10
OVERALL = 600
MAX_KEYS = 4096  # keys with a suppressed count kept; the oldest is forgotten first


@dataclasses.dataclass
class RefusalBudget:
    """The pure rule: which refusal records are written (fixed one-minute windows)."""

    per_key: int = PER_KEY
    overall: int = OVERALL
    max_keys: int = MAX_KEYS
    _window: int | None = None
    _written: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    _total: int = 0
    # key -> refusals left out since its last written record (across windows).
    _suppressed: collections.OrderedDict[str, int] = dataclasses.field(
        default_factory=collections.OrderedDict
    )

    def admit(self, key: str, now: dt.datetime) -> int | None:
        """None: over budget, do not write (counted). Else write, noting this many
        refusals of ``key`` that were left out before it."""
        window = int(now.timestamp() // WINDOW.total_seconds())
        if window != self._window:
            self._window, self._written, self._total = window, collections.Counter(), 0
        if self._written[key] >= self.per_key or self._total >= self.overall:
            self._suppressed[key] = self._suppressed.pop(key, 0) + 1
            while len(self._suppressed) > self.max_keys:
                self._suppressed.popitem(last=False)
            return None
        self._written[key] += 1
        self._total += 1
        return self._suppressed.pop(key, 0)


class RefusalAudit:
    """Appends unauthenticated refusals to the audit log within a RefusalBudget."""

    def __init__(self, store: AuditLog, budget: RefusalBudget | None = None) -> None:
        self._store = store
        self._budget = budget or RefusalBudget()
        self._warned_window: int | None = None

    async def record(self, event: AuditEvent, source: str) -> None:
        """Append ``event`` (an unauthenticated refusal from ``source``) unless over budget."""
        key = f"{source}|{event.device_id or event.detail.get('claimed_id', '')}"
        suppressed = self._budget.admit(key, event.at)
        if suppressed is None:
            window = int(event.at.timestamp() // WINDOW.total_seconds())
            if window != self._warned_window:
                self._warned_window = window
                log.warning(
                    "unauthenticated refusals over the audit budget (%d a minute per source "
                    "and device, %d in all): counting, not writing, until the next minute "
                    "(first from %s)",
                    self._budget.per_key, self._budget.overall, source or "an unknown address",
                )  # fmt: skip
            return
        if suppressed:
            event = dataclasses.replace(
                event, detail={**event.detail, "suppressed": str(suppressed)}
            )
        await self._store.append_audit(event)
