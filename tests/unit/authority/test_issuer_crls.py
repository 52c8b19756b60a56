"""IssuerCrls: one CRL publisher per trusted issuing CA, each numbering its CRLs from
the store's counter of its own issuing key, shared by every node and worker."""

from __future__ import annotations

import datetime as dt
from typing import cast

from fleet.authority.crl import CrlSource, crl_scope
from fleet.authority.issuer_crls import IssuerCrls
from fleet.authority.issuers import IssuingSet, LiveIssuers
from fleet.kernel.clock import ManualClock
from fleet.pki.ca import create_issuing_ca, create_root_ca, issuer_id
from tests.unit.authority.revocation_fakes import FakeStore

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


async def test_each_issuer_numbers_from_its_own_store_counter_on_every_worker() -> None:
    root = create_root_ca("Rotation Root", now=NOW)
    current = create_issuing_ca(root, "Devices", now=NOW)
    retiring = create_issuing_ca(root, "Devices", now=NOW)  # a rotation: same name, new key
    issuers = IssuingSet(current=current, others=(retiring,))
    store, clock = FakeStore(), ManualClock(NOW)

    def worker() -> IssuerCrls:
        return IssuerCrls(
            cast(CrlSource, store), LiveIssuers(issuers), clock,
            next_update=dt.timedelta(hours=48), refresh=dt.timedelta(hours=1),
        )  # fmt: skip

    one, two = worker(), worker()
    ids = [issuer_id(ca.certificate) for ca in (current, retiring)]
    scopes = [crl_scope(ca.certificate) for ca in (current, retiring)]
    assert scopes[0] != scopes[1]

    for short_id, scope in zip(ids, scopes, strict=True):
        first, second = one.publisher(short_id), two.publisher(short_id)
        assert first is not None
        assert second is not None
        signed = await first.regenerate()
        assert await store.latest_crl_number(scope) == signed.number
        newer = await second.regenerate()  # another worker, the same counter
        assert newer.number > signed.number
        assert await store.latest_crl_number(scope) == newer.number
        # The first worker never serves its older number once a newer one exists.
        assert (await first.current()).number >= newer.number
