"""A running server follows the issuing-CA set of its data directory, without a restart.

``fleet ca rotate-issuing``/``promote``/``retire`` and ``fleet device renew
--all --before`` bump a generation counter in the data directory
(``fleet.ca_registry``). Every worker polls it every ``[ca] reload_seconds``
(a stat and a small read) and re-reads the set when it changed; SIGHUP makes
it re-read at once. Polling rather than only a signal: the supervisor's
workers and other nodes sharing the ``ca/`` directory need no one to signal
them. A set that cannot be loaded (a promote half-written, a key missing) is
logged and the server keeps the set it has, retrying at the next poll.

The same loop keeps the CA expiry warnings (log + metrics) and the
certificates-per-issuer metrics current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from cryptography import x509

from fleet.authority.issuer_counts import count_by_issuer
from fleet.authority.issuers import IssuingSet, LiveIssuers
from fleet.ca_registry import generation, load_signing_issuers, renew_before
from fleet.config import FleetConfig
from fleet.kernel.clock import Clock
from fleet.kernel.errors import FleetError
from fleet.pki.ca import issuer_id, load_certificates_pem
from fleet.pki.expiry import days_left, expiry_warning
from fleet.server.metrics import Metrics
from fleet.store.protocol import Store

log = logging.getLogger("fleet.ca")

# Counting certificates per issuer reads every good and revoked certificate:
# done this often, not per scrape.
COUNT_INTERVAL_SECONDS = 300.0
WARN_EVERY_SECONDS = 86400.0


def load_issuing_set(
    config: FleetConfig, passphrase: bytes | None, *, pkcs11_pin: bytes | None = None
) -> IssuingSet:
    """The issuing CAs of the data directory, with their keys, as one snapshot."""
    version = generation(config)  # read first: a change after this is seen next time
    loaded = load_signing_issuers(config, passphrase, pkcs11_pin=pkcs11_pin)
    return IssuingSet(
        current=loaded[0][1],
        others=tuple(ca for _, ca in loaded[1:]),
        generation=version,
        renew_before=renew_before(config),
    )


class IssuerWatch:
    def __init__(
        self,
        config: FleetConfig,
        issuers: LiveIssuers,
        *,
        passphrase: bytes | None,
        pkcs11_pin: bytes | None = None,
        store: Store,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._issuers = issuers
        self._passphrase = passphrase
        self._pkcs11_pin = pkcs11_pin
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._counted_at = float("-inf")
        # CA id -> (threshold, monotonic time) of its last expiry log line: a warning
        # is logged when it tightens and then once a day, not at every pass.
        self._warned: dict[str, tuple[int, float]] = {}

    def reload_now(self) -> None:
        """SIGHUP: re-read the set at once, whatever its generation says."""
        self._wake.set()

    def check(self, *, force: bool = False) -> bool:
        """Re-read the set if its generation changed; True when it was replaced."""
        try:
            if not force and generation(self._config) == self._issuers.now.generation:
                return False
            new = load_issuing_set(self._config, self._passphrase, pkcs11_pin=self._pkcs11_pin)
        except FleetError as exc:
            log.warning("issuing CAs not reloaded, keeping the current set: %s", exc.message)
            return False
        old = self._issuers.now
        self._issuers.replace(new)
        log.info(
            "issuing CAs reloaded (generation %d): current %s, also trusted %s%s",
            new.generation,
            issuer_id(new.current.certificate),
            ", ".join(issuer_id(ca.certificate) for ca in new.others) or "none",
            " (current changed)" if old.current.certificate != new.current.certificate else "",
        )
        self._counted_at = float("-inf")
        return True

    def report_expiry(self) -> None:
        """Warnings (log, metric) for every fleet CA within 180/90/30 days of its end."""
        now = self._clock.now()
        issuers = self._issuers.now
        cas: list[tuple[str, str, x509.Certificate]] = [
            ("issuing", "current", issuers.current.certificate),
            *(("issuing", "other", ca.certificate) for ca in issuers.others),
        ]
        for role, path in (
            ("root", self._config.ca.root_cert),
            ("admin", self._config.admin.ca_cert),
        ):
            with contextlib.suppress(OSError, FleetError):
                cas += [
                    (role, "trusted", cert) for cert in load_certificates_pem(path.read_bytes())
                ]
        for role, state, cert in cas:
            labels = (role, state, issuer_id(cert))
            self._metrics.ca_days_left.labels(*labels).set(days_left(cert, now))
            warning = expiry_warning(cert, now)
            self._metrics.ca_expiry_warning.labels(*labels).set(warning.threshold if warning else 0)
            if warning is not None and self._due(labels[2], warning.threshold):
                log.warning(
                    "%s CA %s (%s) %s: rotate it (README, CA lifetime)",
                    role, issuer_id(cert), cert.subject.rfc4514_string(), warning,
                )  # fmt: skip

    def _due(self, ca: str, threshold: int) -> bool:
        last = self._warned.get(ca)
        now = time.monotonic()
        if last is not None and last[0] <= threshold and now - last[1] < WARN_EVERY_SECONDS:
            return False
        self._warned[ca] = (threshold, now)
        return True

    async def count_certificates(self) -> None:
        issuers = self._issuers.now
        counts = await count_by_issuer(self._store, issuers.trusted, self._clock.now())
        for index, (cert, count) in enumerate(zip(issuers.trusted, counts, strict=True)):
            state = "current" if index == 0 else "other"
            for status, value in (("good", count.good), ("expired", count.expired)):
                self._metrics.issuer_certificates.labels(issuer_id(cert), state, status).set(value)
            self._metrics.issuer_certificates.labels(issuer_id(cert), state, "revoked").set(
                count.revoked
            )

    async def run(self) -> None:
        """Poll until cancelled; SIGHUP (when the loop supports handlers) forces a reload."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload_now)
        self.report_expiry()
        interval = self._config.ca.reload_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            forced = self._wake.is_set()
            self._wake.clear()
            if self.check(force=forced):
                self.report_expiry()
            if time.monotonic() - self._counted_at >= COUNT_INTERVAL_SECONDS:
                try:
                    await self.count_certificates()
                    self.report_expiry()
                except Exception as exc:  # metrics must never stop the watch
                    log.warning("could not count certificates per issuer: %s", exc)
                self._counted_at = time.monotonic()
