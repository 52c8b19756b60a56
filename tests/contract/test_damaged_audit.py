"""An audit record whose event does not decode (edited by hand, on any backend) is
what `fleet audit verify` exists to find: it is reported as edited, and the other
records still read. It raised ValueError/TypeError out of every read of the log
(verify, `why`, the console's audit pages): tampering made the check crash."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.authority.audit import record_admin_action, verify_audit_log
from fleet.store.audit_chain import ChainProblem
from fleet.store.protocol import Store
from tests.contract.conftest import Backend

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)

UNDECODABLE = {
    "time_not_a_time": {"at": "yesterday", "actor": "a", "action": "x", "outcome": "done",
                        "reason": "r", "device_id": None, "detail": {}},
    "time_without_zone": {"at": "2026-06-01T00:00:00", "actor": "a", "action": "x",
                          "outcome": "done", "reason": "r", "device_id": None, "detail": {}},
    "detail_not_a_map": {"at": "2026-06-01T00:00:00+00:00", "actor": "a", "action": "x",
                         "outcome": "done", "reason": "r", "device_id": None, "detail": []},
    "not_an_object": [],
    "fields_missing": {},
}  # fmt: skip


@pytest.mark.parametrize("event", UNDECODABLE.values(), ids=UNDECODABLE.keys())
async def test_an_undecodable_audit_event_is_reported_as_edited(
    backend: Backend, store: Store, event: object
) -> None:
    for n in range(3):
        await record_admin_action(store, "admin:a", "trust_add", f"r{n}", NOW, device_id="d1")
    await backend.replace_audit_event(2, event)
    assert await verify_audit_log(store) == (3, [ChainProblem(2, "edited")])
    records = await store.audit_records(device_id="d1")
    assert [(r.seq, r.event.action) for r in records] == [
        (1, "trust_add"), (2, "unreadable"), (3, "trust_add"),
    ]  # fmt: skip
    assert records[1].event.reason == "store_record_invalid"
