"""The CRL number counter (fleet.store.crl_numbers) in every backend, racing callers included."""

from __future__ import annotations

import asyncio
import random

from fleet.store.crl_numbers import StoredCrl
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


# A CRL's DER stands in here: the store keeps the bytes as they are (a real CRL can
# be megabytes, and any byte value: NUL, high bytes, invalid UTF-8).
def _der(number: int, size: int = 64) -> bytes:
    return number.to_bytes(8, "big") + bytes(range(256)) * (size // 256) + b"\x00\xff\xfe"


async def test_the_newest_signed_crl_is_kept_and_never_replaced_by_a_lower_number(
    store: Store,
) -> None:
    assert await store.newest_signed_crl(SCOPE) is None
    first = StoredCrl(FLOOR, 3, _der(1, size=2 * 2**20))
    assert await store.keep_signed_crl(SCOPE, first) is True
    assert await store.newest_signed_crl(SCOPE) == first
    # A slower signer of an older number, or the same number again: nothing changes.
    assert await store.keep_signed_crl(SCOPE, StoredCrl(FLOOR - 1, 2, _der(2))) is False
    assert await store.keep_signed_crl(SCOPE, StoredCrl(FLOOR, 3, _der(3))) is False
    assert await store.newest_signed_crl(SCOPE) == first
    newer = StoredCrl(FLOOR + 1, 3, _der(4))
    assert await store.keep_signed_crl(SCOPE, newer) is True
    assert await store.newest_signed_crl(SCOPE) == newer
    # Another issuer keeps its own.
    assert await store.newest_signed_crl("issuer-2") is None
    other = StoredCrl(5, 1, _der(5))
    assert await store.keep_signed_crl("issuer-2", other) is True
    assert await store.newest_signed_crl("issuer-2") == other
    assert await store.newest_signed_crl(SCOPE) == newer


async def test_racing_writers_on_two_connections_leave_the_highest_number(
    backend: Backend,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    stores = [await backend.open(), await backend.open()]
    try:
        crls = [
            StoredCrl(FLOOR + rng.randrange(1000), rng.randrange(20), _der(n)) for n in range(40)
        ]
        kept = await asyncio.gather(
            *(stores[n % 2].keep_signed_crl(SCOPE, crl) for n, crl in enumerate(crls))
        )
        newest = await stores[0].newest_signed_crl(SCOPE)
        assert newest == await stores[1].newest_signed_crl(SCOPE)
    finally:
        for store in stores:
            await store.close()
    highest = max(crl.number for crl in crls)
    assert newest is not None
    assert newest.number == highest, f"seed {seed}: a lower number overwrote {highest}"
    assert newest in [crl for crl, ok in zip(crls, kept, strict=True) if ok], f"seed {seed}"
    assert any(kept), f"seed {seed}"
