"""Mosquitto + plugin + sidecar on a REAL Redis store: a revoked device stays out through
every order of losing the store's contents, restarting the sidecar and restarting Mosquitto.

Revocation is permanent (DESIGN.md §7): the sidecar keeps a snapshot file of every
revocation it has seen and the plugin loads it at start, so neither an emptied store
(FLUSHALL: a Redis without persistence restarted) nor a restart of either process
may let a revoked certificate or device back in. Each order below is run on fresh
devices against one broker node; refusals are read from the plugin's log line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis as redis_client
from cryptography import x509

from fleet.datadir import init_data_dir
from fleet.kernel.files import ensure_private_dir
from fleet.records import CertificateRecord, DeviceState, ManifestEntry, RevocationReason
from fleet.store.factory import open_store
from fleet.store.protocol import Store
from tests.support.binaries import need_binary
from tests.support.mosquitto_broker import (
    BrokerNode,
    BrokerNodes,
    Session,
    fleet_broker,
    load_ca,
    mint_client_cert,
)
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.needs_binary("mosquitto"), pytest.mark.needs_binary("gcc")]

T = TypeVar("T")
STEPS = ("wipe_store", "restart_sidecar", "restart_broker")
ORDERS = [list(order) for order in itertools.permutations(STEPS)]


class Node:
    def __init__(self, base: Path, redis: RedisServer, plugin: Path) -> None:
        self.base = base
        self.redis = redis
        self.data = base / "fleet-data"
        ensure_private_dir(self.data)
        init_data_dir(self.data, now=dt.datetime.now(dt.UTC), server_names=["127.0.0.1"])
        self.issuing = load_ca(self.data, "issuing")
        nodes = BrokerNodes.issue(self.data, base, plugin, store_url=redis.url)
        self.node: BrokerNode = nodes.node(
            base / "node",
            extra="max_staleness_seconds = 5",
        )
        self.devices = 0

    def store(self, action: Callable[[Store], Awaitable[T]]) -> T:
        async def run() -> T:
            store = await open_store(self.redis.url)
            try:
                return await action(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def mint(self, device_id: str, name: str) -> tuple[Path, Path, int]:
        cert, key = mint_client_cert(
            self.base / "devices", name, common_name=device_id, issuer=self.issuing
        )
        return cert, key, x509.load_pem_x509_certificate(cert.read_bytes()).serial_number

    def enroll(self, device_id: str) -> tuple[Path, Path, int]:
        """A certificate the store records as issued to ``device_id`` (made active)."""
        cert, key, serial = self.mint(device_id, f"{device_id}-a")
        issued = x509.load_pem_x509_certificate(cert.read_bytes())
        now = dt.datetime.now(dt.UTC)
        record = CertificateRecord(
            serial=serial,
            device_id=device_id,
            not_before=issued.not_valid_before_utc,
            not_after=issued.not_valid_after_utc,
            issued_at=now,
            pem=cert.read_text(),
        )
        pin = hashlib.sha256(device_id.encode()).hexdigest()

        async def record_it(store: Store) -> object:
            await store.import_manifest([ManifestEntry(device_id, pin)], now)
            return await store.record_certificate(
                record, expected={DeviceState.REGISTERED}, now=now, bootstrap_sha256=pin
            )

        self.store(record_it)
        return cert, key, serial

    def new_device_id(self) -> str:
        self.devices += 1
        return f"dev-{self.devices:04d}"

    def connack(self, device_id: str, cert: Path, key: Path) -> bool:
        session = Session(self.node.port, ca=self.data / "ca/root.pem", cert=cert, key=key,
                          client_id=device_id)  # fmt: skip
        try:
            return session.open()
        finally:
            session.close()

    def refused_with(
        self, reason: str, device_id: str, cert: Path, key: Path, *, within: float = 0.0
    ) -> None:
        """Refused with ``reason``; ``within``: a revocation may take that long to arrive."""
        deadline = time.monotonic() + within
        while True:
            mark = self.node.log_mark()
            if not self.connack(device_id, cert, key):
                break
            assert time.monotonic() < deadline, f"{device_id} was let in"
            time.sleep(0.05)
        self.node.wait_broker_log(rf"device={device_id} serial=\S+ reason={reason}\b", after=mark)

    def wipe_store(self) -> None:
        client = redis_client.Redis.from_url(self.redis.url)
        try:
            assert client.flushall()
            assert client.dbsize() == 0
        finally:
            client.close()

    def restart_sidecar(self) -> None:
        self.node.stop_sidecar()
        self.node.start_sidecar()

    def restart_broker(self) -> None:
        self.node.stop_broker()
        self.node.start_broker()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_binary("gcc")
    out = tmp_path_factory.mktemp("plugin")
    return Path(fleet_broker("mosquitto", "build", "--out", out).stdout.strip())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, plugin: Path) -> Iterator[Node]:
    need_binary("mosquitto")
    need_binary("redis-server")
    base = tmp_path_factory.mktemp("mosquitto-restarts")
    redis = RedisServer(base / "redis")
    redis.start()
    try:
        env = Node(base, redis, plugin)
        fleet_broker("mosquitto", "sync", "--config", env.node.settings, "--once")
        env.node.start_broker()
        env.node.start_sidecar()
        try:
            yield env
        finally:
            env.node.stop()
    finally:
        redis.stop()


@pytest.mark.parametrize("order", ORDERS, ids=["-then-".join(o) for o in ORDERS])
def test_revoked_stays_out_through_store_loss_and_restarts(node: Node, order: list[str]) -> None:
    revoked_id, holder_id, ok_id = node.new_device_id(), node.new_device_id(), node.new_device_id()
    revoked_cert, revoked_key, _ = node.enroll(revoked_id)
    holder_cert, holder_key, holder_serial = node.enroll(holder_id)
    ok_cert, ok_key, _ = node.enroll(ok_id)
    assert node.connack(revoked_id, revoked_cert, revoked_key)
    now = dt.datetime.now(dt.UTC)
    node.store(lambda s: s.revoke_device(revoked_id, RevocationReason.KEY_COMPROMISE, now))
    node.store(lambda s: s.revoke_certificate(holder_serial, RevocationReason.KEY_COMPROMISE, now))
    node.refused_with("certificate_revoked", holder_id, holder_cert, holder_key, within=2.0)

    for step in order:
        getattr(node, step)()

    node.refused_with("certificate_revoked", revoked_id, revoked_cert, revoked_key)
    fresh_cert, fresh_key, _ = node.mint(revoked_id, f"{revoked_id}-fresh")
    node.refused_with("device_revoked", revoked_id, fresh_cert, fresh_key)
    node.refused_with("certificate_revoked", holder_id, holder_cert, holder_key)
    # Not a broker that refuses everybody: the holder's new certificate and others get in.
    holder_new_cert, holder_new_key, _ = node.mint(holder_id, f"{holder_id}-b")
    assert node.connack(holder_id, holder_new_cert, holder_new_key)
    assert node.connack(ok_id, ok_cert, ok_key)
