"""How many certificates each issuing CA holds: the progress of a rotation.

``fleet ca status`` shows it, ``fleet ca retire`` refuses while an issuer still
has good certificates, and ``/metrics`` exports it. Read from the store's
good and revoked listings (two queries); each stored certificate is parsed
once and attributed by ``certificate_issued_by`` (the CRL's rule).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

from cryptography import x509

from fleet.authority.crl import certificate_issued_by
from fleet.records import CertificateRecord
from fleet.store.protocol import Store

log = logging.getLogger("fleet.ca")

# list_expiring's bound for "every good certificate".
_FOREVER = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
_LIMIT = 10_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class IssuerCounts:
    good: int = 0  # good and unexpired: devices still relying on this issuer
    expired: int = 0
    revoked: int = 0


def _which(record: CertificateRecord, issuers: Sequence[x509.Certificate]) -> int | None:
    """Index of the issuer of ``record`` in ``issuers``, or None; parses the PEM once."""
    try:
        cert = x509.load_pem_x509_certificate(record.pem.encode())
    except ValueError:
        log.error("stored certificate %x does not parse; counted for no issuer", record.serial)
        return None
    return next(
        (i for i, issuer in enumerate(issuers) if certificate_issued_by(cert, issuer)), None
    )


async def count_by_issuer(
    store: Store, issuers: Sequence[x509.Certificate], now: dt.datetime
) -> list[IssuerCounts]:
    """One IssuerCounts per issuer, in the order given."""
    good = [0] * len(issuers)
    expired = [0] * len(issuers)
    revoked = [0] * len(issuers)
    for record in await store.list_expiring(_FOREVER, limit=_LIMIT):
        index = _which(record, issuers)
        if index is not None:
            (good if record.not_after > now else expired)[index] += 1
    for record in await store.list_revoked():
        index = _which(record, issuers)
        if index is not None:
            revoked[index] += 1
    return [IssuerCounts(*counts) for counts in zip(good, expired, revoked, strict=True)]
