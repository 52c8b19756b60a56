"""How many certificates each issuing CA holds: the progress of a rotation.

``fleet ca status`` shows it, ``fleet ca retire`` refuses while an issuer still
has good certificates, and ``/metrics`` exports it. Read from the store's
good and revoked listings (two queries), attributed by issuer name and key id.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from fleet.authority.crl import issued_by
from fleet.store.protocol import Store

# list_expiring's bound for "every good certificate".
_FOREVER = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
_LIMIT = 10_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class IssuerCounts:
    good: int = 0  # good and unexpired: devices still relying on this issuer
    expired: int = 0
    revoked: int = 0


async def count_by_issuer(
    store: Store, issuers: Sequence[x509.Certificate], now: dt.datetime
) -> list[IssuerCounts]:
    """One IssuerCounts per issuer, in the order given."""
    good = [0] * len(issuers)
    expired = [0] * len(issuers)
    revoked = [0] * len(issuers)
    for record in await store.list_expiring(_FOREVER, limit=_LIMIT):
        for index, issuer in enumerate(issuers):
            if issued_by(record, issuer):
                if record.not_after > now:
                    good[index] += 1
                else:
                    expired[index] += 1
                break
    for record in await store.list_revoked():
        for index, issuer in enumerate(issuers):
            if issued_by(record, issuer):
                revoked[index] += 1
                break
    return [IssuerCounts(*counts) for counts in zip(good, expired, revoked, strict=True)]
