"""The Overview's revocation feed lag per broker, from a real embedded broker following
the real feed of a real `fleet serve` (the broker reports; the console reads)."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

from fleet.records import AdminRole
from fleet.store.broker_positions import report_position
from tests.integration.ui.test_console_settings import signed_in
from tests.support.amqtt_broker import amqtt_env


def test_the_overview_shows_each_brokers_lag_and_flags_a_silent_one(tmp_path: Path) -> None:
    with amqtt_env(tmp_path, broker_name="edge-1") as env:
        server = env.fleet.server
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        # A broker that stopped reporting five minutes ago, at sequence 0.
        server.store(lambda s: report_position(s, "gone-2", 0, long_ago))
        device_id, _, _ = env.enroll()
        seq = env.revoke_device(device_id)
        deadline = time.monotonic() + 20
        while server.store(lambda s: s.get_cursor("broker.edge-1.seq")) < seq:
            assert time.monotonic() < deadline, "the broker never reported the revocation"
            time.sleep(0.05)

        browser = signed_in(env.fleet, AdminRole.VIEWER)
        html = browser.open(f"{server.base}/ui/", timeout=10).read().decode()
        found = {name: bool(stale) for stale, name in re.findall(
            r'<tr( class="stale")?><th scope="row">([^<]+)</th>', html
        )}  # fmt: skip
        assert found == {"edge-1": False, "gone-2": True}
        edge = html[html.index(">edge-1<") :]
        assert re.match(r'>edge-1</th>\s*<td class="num">0 event\(s\)</td>', edge)
        gone = html[html.index(">gone-2<") :]
        assert re.match(rf'>gone-2</th>\s*<td class="num">{seq} event\(s\)</td>', gone)
        assert "stale</strong>" in gone
