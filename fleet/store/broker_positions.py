"""Where each broker is in the revocation feed, as the brokers report it (pure naming,
and two helpers on the Cursors role).

A broker's revocation cache reports, under a stable broker name, the feed
sequence it has applied and when it said so, as two store cursors
(``broker.<name>.seq`` and ``broker.<name>.at``, epoch seconds). The admin
console reads them back to show each broker's lag (feed head - position) and
how old its last report is: a broker that stopped reporting is stale,
whatever its lag said then.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from fleet.store.protocol import Cursors

PREFIX = "broker."
_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,80}")


def check_broker_name(name: str) -> str:
    """A broker name as reports carry it; ValueError for anything else."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"broker name {name!r}: use 1-80 of A-Z a-z 0-9 . _ : @ - (it names store cursors)"
        )
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerPosition:
    name: str
    seq: int  # the last feed sequence the broker applied
    reported_at: dt.datetime


async def report_position(store: Cursors, name: str, seq: int, now: dt.datetime) -> None:
    """Record that broker ``name`` has applied the feed up to ``seq`` (as of ``now``)."""
    await store.set_cursor(f"{PREFIX}{name}.at", int(now.timestamp()))
    await store.set_cursor(f"{PREFIX}{name}.seq", seq)


async def read_positions(store: Cursors) -> list[BrokerPosition]:
    """Every broker that reported, by name."""
    return positions_of(await store.list_cursors(PREFIX))


def positions_of(cursors: dict[str, int]) -> list[BrokerPosition]:
    """The brokers of a cursor listing: those with both their cursors, by name."""
    found = []
    for key, seq in cursors.items():
        name = key.removeprefix(PREFIX).removesuffix(".seq")
        at = cursors.get(f"{PREFIX}{name}.at")
        if key.endswith(".seq") and at is not None:
            found.append(BrokerPosition(name, seq, dt.datetime.fromtimestamp(at, dt.UTC)))
    return sorted(found, key=lambda p: p.name)
