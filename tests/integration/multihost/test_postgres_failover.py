"""PostgreSQL with a synchronous standby: losing the primary loses no acknowledged write.

A primary and a synchronous standby on their own hosts
(tests/support/postgres_replication.py); a writer on another host commits
revocation rows one by one through a connection string that names both
servers (``target_session_attrs=read-write``) and counts a row only once its
COMMIT returned. The standby is cut off (commits now wait: nothing more is
acknowledged), the primary's machine is lost, the standby comes back and is
promoted, and the writer, reconnecting with the same connection string, goes
on writing to the new primary without being reconfigured. Every
acknowledged row is on the promoted standby.

The rows are plain SQL: this is the replication setting itself. The same
failover with fleet (revocations through a running node's admin API, the
nodes and broker sidecars on this pair, never restarted) is
test_postgres_cluster.py, on ``build_cluster(engine="postgresql")``.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.support.netns import network
from tests.support.postgres_replication import PostgresPair, start_postgres_pair

pytestmark = [pytest.mark.needs_binary("ip"), pytest.mark.needs_binary("postgres")]


class Writer:
    """Commits rows until stopped; ``acknowledged`` holds the ids whose COMMIT returned."""

    def __init__(self, pair: PostgresPair) -> None:
        self.pair = pair
        self.acknowledged: list[int] = []
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def run(self) -> None:
        next_id = 0
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.pair.dsn, autocommit=True) as conn:
                    while not self.stop.is_set():
                        next_id += 1
                        conn.execute(
                            "INSERT INTO revocations (id, device_id) VALUES (%s, %s)",
                            (next_id, f"dev-{next_id}"),
                        )
                        with self.lock:
                            self.acknowledged.append(next_id)
                        time.sleep(0.005)
            except psycopg.OperationalError:
                self.errors += 1  # the in-flight row is in doubt: never counted
                time.sleep(0.2)


def _wait(condition: object, within: float, what: str) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < within, f"timed out: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_promoting_the_synchronous_standby_loses_no_acknowledged_revocation() -> None:
    with network() as net:
        client = net.add_host("fleet-a", 11)
        pair = start_postgres_pair(net)

        def create() -> None:
            with psycopg.connect(pair.dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE revocations (id bigint PRIMARY KEY, device_id text)")

        client.call(create)
        writer = Writer(pair)
        thread = threading.Thread(target=lambda: client.call(writer.run, timeout=120))
        thread.start()
        try:
            _wait(lambda: writer.count() >= 50, 30, "50 acknowledged commits")
            net.cut(pair.standby.name)
            time.sleep(0.3)  # what was in flight when the cable was pulled
            stalled_at = writer.count()
            time.sleep(1.0)  # a bounded window: commits must not be acknowledged in it
            acknowledged_while_cut = writer.count() - stalled_at

            pair.lose_primary()
            net.mend(pair.standby.name)
            before = writer.count()
            promoted = time.monotonic()
            pair.promote()
            _wait(lambda: writer.count() > before, 30, "a write on the promoted standby")
            resumed = time.monotonic() - promoted
            _wait(lambda: writer.count() >= before + 20, 30, "writes on the promoted standby")
        finally:
            writer.stop.set()
            thread.join(30)

        def present() -> set[int]:
            with psycopg.connect(pair.dsn_of(pair.standby), autocommit=True) as conn:
                return {row[0] for row in conn.execute("SELECT id FROM revocations")}

        on_new_primary = client.call(present)
        lost = [i for i in writer.acknowledged if i not in on_new_primary]
        print(
            f"{len(writer.acknowledged)} commits acknowledged, {acknowledged_while_cut} while the "
            f"standby was cut off; {len(lost)} lost after promotion; the writer's first commit on "
            f"the new primary {resumed:.1f} s after `pg_ctl promote` began (same connection "
            f"string, {writer.errors} connection error(s) on the way)"
        )
        assert acknowledged_while_cut == 0
        assert lost == []
