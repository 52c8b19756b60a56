"""The trust vectors (tests/vectors/trust_cases.toml) against the embedded amqtt broker.

One broker serves every case: it follows a SQLite store holding the table's
revocations, trusts the generated issuing CAs + root, and writes its JSON log
(the ``fleet.broker`` logger, as in production) to a file the runner reads
for refusal reasons. The ``stale`` cases go to a second broker whose store (a
real redis-server) was stopped after the broker loaded its snapshot, so its
revocation data is older than ``max_staleness``. Clients speak raw MQTT over
real TLS (tests/support/mqtt_raw.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_plugins.amqtt.settings import AmqttSettings
from broker_plugins.logs import JsonFormatter
from fleet.store.factory import open_store
from tests.support.amqtt_broker import BrokerThread
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.vector_brokers import check_acl, check_admission, seed_revocations
from tests.support.vectors import (
    TABLE,
    CaseCounter,
    acl_params,
    admission_params,
    generate_vectors,
    report,
)
from tests.vectors.generate import Generated
from tests.vectors.table import AclCase, AdmissionCase

pytestmark = [pytest.mark.needs_binary("redis-server")]

STALENESS = 1.0  # seconds; the stale broker's max_staleness


class AmqttUnderTest:
    """A running embedded broker and its JSON log file."""

    name = "amqtt"

    def __init__(self, broker: BrokerThread, log_file: Path) -> None:
        self.broker = broker
        self.log_file = log_file

    @property
    def port(self) -> int:
        return self.broker.port

    def log_mark(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def refusal_reason(self, serial_hex: str | None, client_id: str, after: int) -> str:
        deadline = time.monotonic() + 5
        while True:
            text = self.log_file.read_bytes()[after:].decode(errors="replace")
            for line in text.splitlines():
                entry = json.loads(line)
                if entry.get("event") != "connect_refused":
                    continue
                # The serial identifies the case (a broker may replace an empty client id).
                same = entry.get("serial") == serial_hex
                if same and (serial_hex is not None or entry.get("client_id") == client_id[:128]):
                    return str(entry["reason"])
            if time.monotonic() > deadline:
                raise AssertionError(f"no connect_refused line for serial {serial_hex}:\n{text}")
            time.sleep(0.02)

    def decision_logged(self, serial_hex: str | None, client_id: str, after: int) -> bool:
        text = self.log_file.read_bytes()[after:].decode(errors="replace")
        for line in text.splitlines():
            entry = json.loads(line)
            if entry.get("event") in ("connect_refused", "connect_allowed") and (
                entry.get("serial") == serial_hex and serial_hex is not None
            ):
                return True
            if entry.get("event") == "connect_refused" and entry.get("client_id") == client_id:
                return True
        return False

    def wait_dropped(self, client_id: str, after: int) -> None:
        gate = self.broker.broker.gate
        assert gate is not None

        async def live() -> int:
            return len(gate.connections_of(client_id))

        deadline = time.monotonic() + 5
        while self.broker.call(live):
            assert time.monotonic() < deadline, f"the broker still holds {client_id}'s connection"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def counter(request: pytest.FixtureRequest) -> Iterator[CaseCounter]:
    counter = CaseCounter("amqtt")
    yield counter
    report(request, counter)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory, counter: CaseCounter) -> Generated:
    generated = generate_vectors(tmp_path_factory.mktemp("vectors"))
    counter.details = f"(seed={generated.seed}, now={generated.now.isoformat()})"
    return generated


@pytest.fixture(scope="module")
def json_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("amqtt-log") / "broker.jsonl"
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fleet.broker")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def _settings(vectors: Generated, store_url: str, **overrides: object) -> AmqttSettings:
    return AmqttSettings(
        host="127.0.0.1",
        port=free_port(),
        tls_cert=vectors.server_cert,
        tls_key=vectors.server_key,
        fleet_ca=vectors.bundle,
        store_url=store_url,
        skew_seconds=float(TABLE.skew_seconds),
        topic_templates=TABLE.acl_templates,
        **overrides,  # type: ignore[arg-type]
    )


async def _seed(url: str, vectors: Generated, *, stale_only: bool) -> None:
    store = await open_store(url)
    try:
        await seed_revocations(store, vectors, stale_only=stale_only)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, vectors: Generated, json_log: Path
) -> Iterator[AmqttUnderTest]:
    url = f"sqlite:///{tmp_path_factory.mktemp('amqtt-store') / 'fleet.db'}"
    asyncio.run(_seed(url, vectors, stale_only=False))
    thread = BrokerThread(_settings(vectors, url)).start()
    try:
        yield AmqttUnderTest(thread, json_log)
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def stale_broker(
    tmp_path_factory: pytest.TempPathFactory, vectors: Generated, json_log: Path
) -> Iterator[AmqttUnderTest]:
    # Once Redis is gone the prober warns every 0.25 s: expected here, and noise in reports.
    feed_log = logging.getLogger("fleet.broker.revocation")
    feed_level = feed_log.level
    feed_log.setLevel(logging.ERROR)
    redis = RedisServer(tmp_path_factory.mktemp("amqtt-redis"))
    redis.start()
    try:
        asyncio.run(_seed(redis.url, vectors, stale_only=True))
        thread = BrokerThread(_settings(vectors, redis.url, max_staleness=STALENESS)).start()
    except BaseException:
        redis.stop()
        raise
    try:
        cache = thread.broker.cache
        assert cache is not None
        assert cache.usable(), "the stale broker never loaded its first snapshot"
        redis.stop()  # the feed is gone: from now on the data only ages
        deadline = time.monotonic() + 10
        while cache.usable():
            assert time.monotonic() < deadline, "the revocation data never went stale"
            time.sleep(0.05)
        yield AmqttUnderTest(thread, json_log)
    finally:
        thread.stop()
        redis.stop()
        feed_log.setLevel(feed_level)


@pytest.mark.parametrize("case", admission_params())
def test_admission(
    case: AdmissionCase,
    vectors: Generated,
    counter: CaseCounter,
    request: pytest.FixtureRequest,
) -> None:
    name = "stale_broker" if "stale" in case.revocation else "broker"
    broker: AmqttUnderTest = request.getfixturevalue(name)
    counter.admission += 1
    if check_admission(broker, vectors, case) == "tls":
        counter.tls_layer.append(case.id)


@pytest.mark.parametrize("case", acl_params())
def test_acl(
    case: AclCase, vectors: Generated, broker: AmqttUnderTest, counter: CaseCounter
) -> None:
    if not case.observable:
        counter.skipped += 1
        pytest.skip(f"not observable from outside the broker: {case.note}")
    counter.acl += 1
    check_acl(broker, vectors, case)
