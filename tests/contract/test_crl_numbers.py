"""The CRL number counter (fleet.store.crl_numbers) in every backend, racing callers included."""

from __future__ import annotations

import asyncio
import random

from fleet.store.protocol import Store
from tests.contract.conftest import Backend

FLOOR = 1_780_000_000_000_000  # microseconds since the epoch, as CRL numbers were
SCOPE = "issuer-1"


async def test_numbers_increase_and_respect_the_floor(store: Store) -> None:
    first = await store.allocate_crl_number(SCOPE, 0, FLOOR)
    assert first == FLOOR
    second = await store.allocate_crl_number(SCOPE, 0, FLOOR - 5)  # a clock behind: still higher
    assert second == FLOOR + 1
    third = await store.allocate_crl_number(SCOPE, 2, FLOOR + 100)
    assert third == FLOOR + 100


async def test_older_content_gets_no_number_and_changes_nothing(store: Store) -> None:
    newer = await store.allocate_crl_number(SCOPE, 5, FLOOR)
    assert newer is not None
    assert await store.allocate_crl_number(SCOPE, 4, FLOOR + 10**6) is None
    after = await store.allocate_crl_number(SCOPE, 5, 0)
    assert after == newer + 1  # the refused call did not move the counter


async def test_racing_workers_on_two_connections_never_number_older_content_higher(
    backend: Backend,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    stores = [await backend.open(), await backend.open()]
    try:
        calls = [(stores[n % 2], rng.randrange(20), FLOOR + rng.randrange(50)) for n in range(40)]
        numbers = await asyncio.gather(
            *(store.allocate_crl_number(SCOPE, seq, floor) for store, seq, floor in calls)
        )
    finally:
        for store in stores:
            await store.close()
    granted = sorted(
        (number, seq) for number, (_, seq, _) in zip(numbers, calls, strict=True) if number
    )
    assert granted, f"seed {seed}: no call got a number"
    assert len({n for n, _ in granted}) == len(granted), f"seed {seed}: a number repeated"
    seqs = [seq for _, seq in granted]
    assert seqs == sorted(seqs), f"seed {seed}: a higher number has older content: {granted}"


async def test_scopes_count_apart_and_the_latest_is_readable(store: Store) -> None:
    assert await store.latest_crl_number(SCOPE) == 0
    first = await store.allocate_crl_number(SCOPE, 3, FLOOR)
    assert await store.latest_crl_number(SCOPE) == first
    # Another issuer: its own sequence, not refused by the first one's newer content.
    assert await store.allocate_crl_number("issuer-2", 1, 5) == 5
    assert await store.latest_crl_number("issuer-2") == 5
    assert await store.latest_crl_number(SCOPE) == first
