"""The issuing CAs a running server signs with and trusts, swapped whole on a rotation.

``fleet ca promote`` changes the data directory; every worker of every node
re-reads it (``fleet.server.issuer_watch``) and replaces the snapshot here.
Readers take one snapshot per request (``LiveIssuers.now``), so a request is
handled under one set even if a swap lands in the middle of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from cryptography import x509

from fleet.pki.ca import CertifiedKey, issuer_id

# However close the renew-before deadline, a certificate lives at least this
# long: devices converge on the deadline without renewing in a tight loop.
MIN_SHORTENED_VALIDITY = dt.timedelta(hours=1)


@dataclasses.dataclass(frozen=True, slots=True)
class IssuingSet:
    """``current`` signs; ``others`` (next, retiring) are trusted and sign their CRL/OCSP."""

    current: CertifiedKey
    others: tuple[CertifiedKey, ...] = ()
    generation: int = 0
    renew_before: dt.datetime | None = None

    @property
    def all(self) -> tuple[CertifiedKey, ...]:
        return (self.current, *self.others)

    @property
    def trusted(self) -> tuple[x509.Certificate, ...]:
        return tuple(ca.certificate for ca in self.all)

    def by_id(self, short_id: str) -> CertifiedKey | None:
        return next((ca for ca in self.all if issuer_id(ca.certificate) == short_id), None)

    def validity_for(self, validity: dt.timedelta, now: dt.datetime) -> dt.timedelta:
        """The profile's validity, shortened while a renew-before deadline is ahead.

        The device agent renews at 2/3 of its certificate's lifetime; with at
        most 1.5 x the time left, that point falls before the deadline, so the
        device comes back (and moves to the current issuer) in time. Never
        shorter than MIN_SHORTENED_VALIDITY.
        """
        if self.renew_before is None or now >= self.renew_before:
            return validity
        return min(validity, max((self.renew_before - now) * 3 / 2, MIN_SHORTENED_VALIDITY))


class LiveIssuers:
    """Holds the server's IssuingSet; ``replace`` swaps it (one assignment, no await)."""

    def __init__(self, initial: IssuingSet) -> None:
        self._set = initial
        self._listeners: list[Callable[[IssuingSet], None]] = []

    @classmethod
    def of(cls, issuer: CertifiedKey) -> LiveIssuers:
        return cls(IssuingSet(issuer))

    @property
    def now(self) -> IssuingSet:
        return self._set

    def replace(self, new: IssuingSet) -> None:
        self._set = new
        for listener in self._listeners:
            listener(new)

    def subscribe(self, listener: Callable[[IssuingSet], None]) -> None:
        """Call ``listener`` with every new set (on the thread that replaces it)."""
        self._listeners.append(listener)
