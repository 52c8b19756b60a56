"""Synchronous replication: kill -9 the primary during revocations, promote the
standby; no acknowledged revocation is lost, and the same store object goes on
writing to the new primary (a libpq multi-host URL) without being reopened."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import time

import psycopg

from fleet.kernel.errors import StoreUnavailable
from fleet.records import DeviceState, RevocationReason
from fleet.store.postgres import PostgresStore, upgrade_schema
from tests.contract.test_store_contract import certificate, entry
from tests.support.postgres import PostgresServer

DEVICES = 20


async def test_promoting_a_synchronous_standby_loses_no_acknowledged_revocation(
    now: dt.datetime,
) -> None:
    primary = PostgresServer(name="primary")
    standby: PostgresServer | None = None
    try:
        primary.start()
        upgrade_schema(primary.url)
        t_setup = time.monotonic()
        standby = primary.start_standby("standby1")
        print(f"standby made in {time.monotonic() - t_setup:.1f}s")
        url = (
            f"postgresql://fleet@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/fleet"
            "?target_session_attrs=read-write"
        )
        store = await PostgresStore.open(url)
        try:
            await store.import_manifest([entry(f"f{n}") for n in range(DEVICES)], now)
            await asyncio.gather(
                *(
                    store.record_certificate(
                        certificate(0x1000 + n, f"f{n}", now),
                        expected={DeviceState.REGISTERED},
                        now=now,
                    )
                    for n in range(DEVICES)
                )
            )
            primary.make_standby_synchronous("standby1")  # from here on, COMMIT waits for it
            print(f"fleet enrolled by {time.monotonic() - t_setup:.1f}s")
            acknowledged: list[str] = []
            some_acknowledged = asyncio.Event()

            async def revoke(device_id: str) -> None:
                with contextlib.suppress(StoreUnavailable):  # not acknowledged: may be lost
                    if await store.revoke_device(device_id, RevocationReason.KEY_COMPROMISE, now):
                        acknowledged.append(device_id)
                        if len(acknowledged) >= DEVICES // 4:
                            some_acknowledged.set()

            revocations = [asyncio.ensure_future(revoke(f"f{n}")) for n in range(DEVICES)]
            await some_acknowledged.wait()  # others are in flight
            t0 = time.monotonic()
            os.kill(primary.postmaster_pid, signal.SIGKILL)
            await asyncio.gather(*revocations)
            print(f"in-flight calls ended {time.monotonic() - t0:.1f}s after the kill")
            standby.promote()
            print(f"promoted at {time.monotonic() - t0:.1f}s")
            with psycopg.connect(standby.url) as conn:
                revoked = {
                    str(row[0])
                    for row in conn.execute(
                        "SELECT device_id FROM devices WHERE state = %s",
                        (DeviceState.REVOKED.value,),
                    )
                }
            lost = sorted(set(acknowledged) - revoked)
            print(f"{len(acknowledged)} acknowledged, {len(revoked)} on the promoted standby")
            assert not lost, f"acknowledged revocations lost in the failover: {lost}"
            # The same store object writes to the new primary (retrying while the
            # pool finds it); what was not acknowledged can simply be done again.
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    for n in range(DEVICES):
                        await store.revoke_device(f"f{n}", RevocationReason.KEY_COMPROMISE, now)
                    break
                except StoreUnavailable:
                    assert asyncio.get_running_loop().time() < deadline, "never reconnected"
                    await asyncio.sleep(0.2)
            print(f"writing again at {time.monotonic() - t0:.1f}s")
            head = await store.feed_head()
            assert head == DEVICES  # one feed event per device, none twice
        finally:
            await store.close()
    finally:
        if standby is not None:
            standby.stop()
            standby.remove()
        with contextlib.suppress(RuntimeError):
            primary.stop(mode="immediate")
        primary.remove()
