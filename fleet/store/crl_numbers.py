"""CRL numbers: one counter in the store for every node and worker (pure rule).

RFC 5280 §5.2.3: CRL numbers increase monotonically, so a relying party can
tell which of two CRLs is newer. Each fleet worker signs its own CRLs; when
each picked its number from its own clock, two workers a few milliseconds
apart could publish them out of order (a higher number with older content,
so a broker keeping the highest would drop a revocation for a while).

So the number comes from the store, atomically, for a CRL whose content is
the revocation state at one feed sequence (``content_seq``): a number is
handed out only if no CRL of newer content already got one, and it is above
every number handed out before. Higher number, never older content. The
number also stays at or above ``floor`` (the signing time in microseconds,
as numbers were before), so it continues above CRLs already published.

The store also keeps the newest CRL signed in each scope (``StoredCrl``),
so a node or worker whose CRL is behind only by number adopts it instead of
signing its own: without it, workers answering in turn would each sign a new
number on every request (each behind the other's). A copy replaces the kept
one only with a higher number, so racing writers never move it back.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class CrlCounter:
    """The newest number handed out, and the feed sequence of its CRL's content."""

    number: int
    content_seq: int


def next_crl_number(last: CrlCounter | None, content_seq: int, floor: int) -> CrlCounter | None:
    """The counter after numbering a CRL of the content at ``content_seq``; None when
    a CRL of newer content was numbered already (re-read the content, ask again)."""
    if content_seq < 0 or floor < 0:
        raise ValueError("CRL content sequence and floor must be >= 0")
    if last is None:
        return CrlCounter(max(floor, 1), content_seq)
    if content_seq < last.content_seq:
        return None
    return CrlCounter(max(last.number + 1, floor), content_seq)


@dataclasses.dataclass(frozen=True, slots=True)
class StoredCrl:
    """A signed CRL as the store keeps it: its number, the feed sequence its content
    is exactly, and the DER (fleet.authority.crl parses it back)."""

    number: int
    content_seq: int
    der: bytes

    def __post_init__(self) -> None:
        if self.number < 1 or self.content_seq < 0 or not self.der:
            raise ValueError("a kept CRL needs a number >= 1, a content sequence >= 0 and DER")


def replaces(kept_number: int | None, signed: StoredCrl) -> bool:
    """Whether ``signed`` becomes the scope's kept CRL (``kept_number``: the kept
    one's, None when none): only above it. Numbers are handed out in content
    order, so the kept CRL never goes back to older content."""
    return kept_number is None or signed.number > kept_number
