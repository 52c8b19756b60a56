"""The manufacturer intermediate pool: one contract for every store backend."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import pytest

from fleet.kernel.errors import NotFound
from fleet.records import ManufacturerCA
from fleet.store.protocol import Store
from tests.contract.conftest import Backend

DAY = dt.timedelta(days=1)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_intermediates_add_list_remove(store: Store, now: dt.datetime) -> None:
    newer = ManufacturerCA(sha("int-b"), "Acme Line B", "PEM-B", now)
    older = ManufacturerCA(sha("int-a"), "Acme Line A", "PEM-A", now - DAY)
    assert await store.list_manufacturer_intermediates() == []
    assert await store.add_manufacturer_intermediate(newer) is True
    assert await store.add_manufacturer_intermediate(older) is True
    assert await store.add_manufacturer_intermediate(dataclasses.replace(older, name="x")) is False
    assert await store.list_manufacturer_intermediates() == [older, newer]

    await store.remove_manufacturer_intermediate(older.sha256)
    assert await store.list_manufacturer_intermediates() == [newer]
    with pytest.raises(NotFound):
        await store.remove_manufacturer_intermediate(older.sha256)


async def test_the_pool_is_not_the_trusted_list(store: Store, now: dt.datetime) -> None:
    # An intermediate is a path hint, never an anchor: the lists never mix.
    root = ManufacturerCA(sha("root"), "Acme Root", "PEM-R", now)
    intermediate = ManufacturerCA(sha("int"), "Acme Line", "PEM-I", now)
    await store.add_manufacturer_ca(root)
    await store.add_manufacturer_intermediate(intermediate)
    assert await store.list_manufacturer_cas() == [root]
    assert await store.list_manufacturer_intermediates() == [intermediate]
    with pytest.raises(NotFound):
        await store.remove_manufacturer_ca(intermediate.sha256)
    with pytest.raises(NotFound):
        await store.remove_manufacturer_intermediate(root.sha256)


async def test_the_pool_survives_reopening(backend: Backend, now: dt.datetime) -> None:
    intermediate = ManufacturerCA(sha("kept"), "Acme Line", "PEM-K", now)
    store = await backend.open()
    try:
        await store.add_manufacturer_intermediate(intermediate)
    finally:
        await store.close()
    store = await backend.open()
    try:
        assert await store.list_manufacturer_intermediates() == [intermediate]
    finally:
        await store.close()
