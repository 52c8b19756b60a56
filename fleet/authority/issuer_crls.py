"""One CRL per trusted issuing CA: ``/crl`` for the current one, ``/crl/<issuer_id>`` for each.

A certificate points at its own issuer's CRL (``[profile] crl_url`` with
``{issuer}``), so a relying party always gets a CRL signed by the CA that
issued the certificate, whichever CA is current by then. The set follows the
issuing CAs of the running server (``LiveIssuers``): a rotation adds a
publisher for the next CA and drops the retired one's. Each publisher numbers
its CRLs from the store's counter of its issuing key (fleet.authority.crl), so
numbers never go back across nodes and workers, per issuer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from fleet.authority.crl import CrlPublisher, CrlSource
from fleet.authority.issuers import IssuingSet, LiveIssuers
from fleet.kernel.clock import Clock
from fleet.pki.ca import issuer_id

log = logging.getLogger("fleet.crl")


class IssuerCrls:
    def __init__(
        self,
        store: CrlSource,
        issuers: LiveIssuers,
        clock: Clock,
        *,
        next_update: dt.timedelta,
        refresh: dt.timedelta,
    ) -> None:
        self._store = store
        self._issuers = issuers
        self._clock = clock
        self._next_update = next_update
        self._refresh = refresh
        self._publishers: dict[str, CrlPublisher] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self._sync(issuers.now)
        issuers.subscribe(self._sync)

    def publisher(self, short_id: str | None = None) -> CrlPublisher | None:
        """The current issuer's publisher (None), or the named issuer's; None if not trusted."""
        if short_id is None:
            short_id = issuer_id(self._issuers.now.current.certificate)
        return self._publishers.get(short_id)

    def _sync(self, issuers: IssuingSet) -> None:
        wanted = {issuer_id(ca.certificate): ca for ca in issuers.all}
        for short_id in list(self._publishers):
            if short_id not in wanted:
                del self._publishers[short_id]
                task = self._tasks.pop(short_id, None)
                if task is not None:
                    task.cancel()
                log.info("stopped publishing the CRL of retired issuer %s", short_id)
        for short_id, ca in wanted.items():
            if short_id not in self._publishers:
                self._publishers[short_id] = CrlPublisher(
                    self._store, ca, self._clock, self._next_update, self._refresh
                )
                if self._running:
                    self._start(short_id)

    def _start(self, short_id: str) -> None:
        self._tasks[short_id] = asyncio.create_task(
            self._publishers[short_id].run(), name=f"crl-publisher-{short_id}"
        )

    async def run(self) -> None:
        """Keep every issuer's CRL fresh until cancelled."""
        self._running = True
        for short_id in self._publishers:
            self._start(short_id)
        try:
            await asyncio.Event().wait()
        finally:
            self._running = False
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
