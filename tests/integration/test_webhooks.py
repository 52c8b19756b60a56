"""Webhook delivery end to end: a real SQLite store, the real notifier, a real
aiohttp receiver on a loopback port.

The test appends audit records the way the authority does; the notifier finds
them by following the audit log (the outbox), signs and posts them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fleet.config import load_config, parse_config
from fleet.datadir import init_data_dir
from fleet.kernel.clock import SystemClock
from fleet.kernel.errors import ConfigError
from fleet.notify.secret import webhook_secret
from fleet.notify.signing import verify_signature
from fleet.notify.webhooks import CURSOR_FILE, Backoff, WebhookNotifier, attach_notifier
from fleet.records import AuditEvent, AuditRecord
from fleet.server.app import build_app, load_issuer
from fleet.server.logs import JsonFormatter
from fleet.store.factory import open_store
from fleet.store.sqlite import SqliteStore
from tests.support.fleet_server import FleetServer
from tests.support.ports import free_port

SECRET = b"integration-webhook-secret-0123456789"


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """A real HTTP receiver. ``statuses`` are answered in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None, *, delay: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.received: list[Received] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.path, dict(request.headers), body, time.monotonic()))
        if request.path == "/redirect":
            raise web.HTTPFound(self.url("/hook"))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def ids(self, path: str = "/hook") -> list[str]:
        return [r.json["id"] for r in self.received if r.path == path]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "fleet.db")
    yield store
    await store.close()


async def append(
    store: SqliteStore,
    action: str,
    outcome: str,
    device_id: str = "dev-1",
    *,
    reason: str = "keyCompromise",
    actor: str = "admin:alice",
    **detail: str,
) -> AuditRecord:
    return await store.append_audit(
        AuditEvent(
            at=dt.datetime.now(dt.UTC),
            actor=actor,
            action=action,
            outcome=outcome,
            reason=reason,
            device_id=device_id,
            detail=detail,
        )
    )


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


NotifierFactory = Callable[..., WebhookNotifier]


@pytest.fixture
def notifier(store: SqliteStore, tmp_path: Path) -> NotifierFactory:
    def make(urls: list[str], **options: Any) -> WebhookNotifier:
        settings: dict[str, Any] = {
            "max_attempts": 3,
            "poll_interval": 0.02,
            "standby_interval": 0.05,
            "backoff": Backoff(base=0.05, cap=0.2),
            "timeout": aiohttp.ClientTimeout(total=2),
            **options,
        }
        return WebhookNotifier(
            store=store, urls=urls, secret=SECRET, state_dir=tmp_path, **settings
        )

    return make


def saved_cursors(tmp_path: Path) -> dict[str, int]:
    data: dict[str, int] = json.loads((tmp_path / CURSOR_FILE).read_bytes())["cursors"]
    return data


async def test_signed_notifications_for_notifying_records_only(
    store: SqliteStore, notifier: NotifierFactory, tmp_path: Path
) -> None:
    await append(store, "revoke", "done", "old-device")  # history: never sent
    async with Receiver() as receiver, notifier([receiver.url()]):
        await append(store, "enroll", "allowed", actor="device:dev-1", reason="manifest_pinned")
        revoked = await append(store, "revoke", "done", serials="1f,20")
        held = await append(
            store,
            "enroll",
            "held",
            "dev-2",
            actor="device:dev-2",
            reason="bootstrap_reused",
            flag="possible_clone",
        )
        await append(store, "renew", "allowed", actor="device:dev-1", reason="renewed")
        cert = await append(store, "revoke_certificate", "done", reason="superseded", serial="1f")
        last = await append(store, "resume", "done")
        await until(lambda: len(receiver.received) >= 3)
        await until(lambda: saved_cursors(tmp_path) == {receiver.url(): last.seq})

    assert receiver.ids() == [str(revoked.seq), str(held.seq), str(cert.seq)]
    now = time.time()
    for got in receiver.received:
        assert verify_signature(SECRET, got.headers["X-Fleet-Signature"], got.body, now, 30)
        assert got.headers["X-Fleet-Event"] == got.json["type"]
        assert got.headers["X-Fleet-Delivery"] == got.json["id"]
        assert got.headers["Content-Type"] == "application/json"
        assert SECRET.decode() not in json.dumps(got.headers)
    first, second, third = (r.json for r in receiver.received)
    assert first["type"] == "device.revoked"
    assert first["device_id"] == "dev-1"
    assert first["actor"] == "admin:alice"
    assert first["reason"] == "keyCompromise"
    assert first["detail"] == {"serials": "1f,20"}
    assert dt.datetime.fromisoformat(first["at"]) == revoked.event.at
    assert second["type"] == "enrollment.held"
    assert second["detail"] == {"flag": "possible_clone"}
    assert third["type"] == "certificate.revoked"
    # URLs may carry credentials: the cursor file is private.
    assert stat.S_IMODE((tmp_path / CURSOR_FILE).stat().st_mode) == 0o600


async def test_retried_with_backoff_until_delivered(
    store: SqliteStore, notifier: NotifierFactory, tmp_path: Path
) -> None:
    async with Receiver([500, 503, 200]) as receiver, notifier([receiver.url()], max_attempts=5):
        record = await append(store, "suspend", "done", reason="suspicious_traffic")
        await until(lambda: saved_cursors(tmp_path).get(receiver.url()) == record.seq)

    assert receiver.ids() == [str(record.seq)] * 3
    assert len({r.body for r in receiver.received}) == 1  # the same notification each time
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert gaps[0] >= 0.025
    assert gaps[1] >= 0.05
    for got in receiver.received:
        verify_signature(SECRET, got.headers["X-Fleet-Signature"], got.body, time.time(), 30)


async def test_dead_lettered_after_max_attempts_and_moves_on(
    store: SqliteStore,
    notifier: NotifierFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fleet.notify")
    port = free_port()  # nothing listens there
    down = f"http://user:pw@127.0.0.1:{port}/hook?token=abc"
    redacted = f"http://127.0.0.1:{port}/hook"  # what logs may show of it
    async with Receiver() as live, notifier([down, live.url()]):
        first = await append(store, "revoke", "done", "dev-1")
        second = await append(store, "revoke", "done", "dev-2")
        # A dead receiver does not hold back the others.
        await until(lambda: live.ids() == [str(first.seq), str(second.seq)])
        await until(lambda: saved_cursors(tmp_path).get(down) == second.seq)

    def about_down(entry: logging.LogRecord) -> dict[str, Any] | None:
        webhook: dict[str, Any] | None = getattr(entry, "webhook", None)
        return webhook if webhook is not None and webhook["url"] == redacted else None

    dead = [r for r in caplog.records if getattr(r, "reason", None) == "webhook_dead_lettered"]
    assert [about_down(r) for r in dead] == [
        {"id": str(r.seq), "type": "device.revoked", "url": redacted, "attempts": 3}
        for r in (first, second)
    ]
    assert all(r.levelno == logging.ERROR for r in dead)
    line = json.loads(JsonFormatter().format(dead[0]))  # as the server logs it
    assert line["reason"] == "webhook_dead_lettered"
    assert line["device_id"] == "dev-1"
    assert redacted in line["msg"]
    assert f"event {first.seq}" in line["msg"]
    for entry in caplog.records:
        text = JsonFormatter().format(entry) + json.dumps(getattr(entry, "webhook", None))
        assert SECRET.decode() not in text
        assert "pw@" not in text
        assert "token=abc" not in text
    retries = [r for r in caplog.records if "retrying" in r.getMessage() and about_down(r)]
    assert len(retries) == 4  # two events x (3 attempts - 1)


async def test_timeouts_and_redirects_are_failures(
    store: SqliteStore, notifier: NotifierFactory, tmp_path: Path
) -> None:
    async with Receiver(delay=1.0) as slow, Receiver() as redirecting:
        urls = [slow.url(), redirecting.url("/redirect")]
        timeout = aiohttp.ClientTimeout(total=0.2)
        async with notifier(urls, max_attempts=2, timeout=timeout):
            record = await append(store, "revoke", "done")
            await until(lambda: set(saved_cursors(tmp_path).values()) == {record.seq})
    assert slow.ids() == [str(record.seq)] * 2
    assert redirecting.ids("/redirect") == [str(record.seq)] * 2
    assert redirecting.ids("/hook") == []  # redirects are never followed


async def test_restart_resumes_from_the_persisted_cursor(
    store: SqliteStore, notifier: NotifierFactory, tmp_path: Path
) -> None:
    async with Receiver() as receiver, Receiver() as newcomer:
        async with notifier([receiver.url()]):
            a = await append(store, "revoke", "done", "dev-a")
            await until(lambda: saved_cursors(tmp_path).get(receiver.url()) == a.seq)
        # While no notifier runs:
        b = await append(store, "suspend", "done", "dev-b")
        await append(store, "enroll", "allowed", "dev-c")
        d = await append(store, "enroll", "held", "dev-d", reason="not_in_manifest")
        async with notifier([receiver.url(), newcomer.url()]):
            await until(lambda: len(receiver.received) >= 3)
            e = await append(store, "revoke", "done", "dev-e")
            await until(lambda: newcomer.ids() == [str(e.seq)])
            await until(lambda: len(receiver.received) >= 4)
            await asyncio.sleep(0.1)
    # Nothing acknowledged is repeated, nothing is skipped.
    assert receiver.ids() == [str(r.seq) for r in (a, b, d, e)]
    # A URL added later starts at the then end of the log: no history.
    assert newcomer.ids() == [str(e.seq)]


async def test_one_process_delivers_the_other_stands_by_then_takes_over(
    store: SqliteStore, notifier: NotifierFactory
) -> None:
    async with Receiver() as receiver:
        first, second = notifier([receiver.url()]), notifier([receiver.url()])
        await first.start()
        await second.start()
        try:
            assert [first.active, second.active] == [True, False]
            a = await append(store, "revoke", "done", "dev-a")
            await until(lambda: receiver.ids() == [str(a.seq)])
            await first.stop()
            b = await append(store, "revoke", "done", "dev-b")
            await until(lambda: receiver.ids() == [str(a.seq), str(b.seq)])
            await asyncio.sleep(0.1)
            assert [first.active, second.active] == [False, True]
            assert receiver.ids() == [str(a.seq), str(b.seq)]
        finally:
            await first.stop()
            await second.stop()


async def test_corrupt_cursor_file_refuses_to_start(
    notifier: NotifierFactory, tmp_path: Path
) -> None:
    (tmp_path / CURSOR_FILE).write_text('{"version": 1, "cursors": {"http://x/": "7"}}')
    with pytest.raises(ConfigError, match="cursor file") as info:
        await notifier(["http://127.0.0.1:9/"]).start()
    assert "delete it" in info.value.diagnostics()


async def test_cursor_beyond_the_audit_log_restarts_at_its_end(
    store: SqliteStore, notifier: NotifierFactory, tmp_path: Path
) -> None:
    await append(store, "revoke", "done", "dev-old")
    async with Receiver() as receiver:
        cursors = {"version": 1, "cursors": {receiver.url(): 999}}  # a store restored from backup
        (tmp_path / CURSOR_FILE).write_text(json.dumps(cursors))
        async with notifier([receiver.url()]):
            record = await append(store, "revoke", "done", "dev-new")
            await until(lambda: receiver.ids() == [str(record.seq)])


async def test_runs_with_the_server_app_and_needs_a_secret(
    store: SqliteStore, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        config = parse_config({"webhooks": {"urls": [receiver.url()]}}, base_dir=tmp_path)
        with pytest.raises(ConfigError, match="no webhook secret"):
            webhook_secret(config.webhooks, {})  # what `fleet serve` reads first

        app = web.Application()
        environ = {"FLEET_WEBHOOK_SECRET": SECRET.decode()}
        attach_notifier(app, config, store=store, secret=webhook_secret(config.webhooks, environ))
        runner = web.AppRunner(app)
        await runner.setup()  # on_startup: the notifier starts
        try:
            record = await append(store, "revoke", "done")
            await until(lambda: receiver.ids() == [str(record.seq)])
        finally:
            await runner.cleanup()  # on_cleanup: it stops
        await append(store, "revoke", "done", "dev-later")
        await asyncio.sleep(0.7)
        assert receiver.ids() == [str(record.seq)]


async def test_server_with_urls_but_no_secret_refuses_to_start(tmp_path: Path) -> None:
    config_path = init_data_dir(tmp_path / "data", now=dt.datetime.now(dt.UTC)).config_path
    environ = {"FLEET_WEBHOOKS_URLS": '["http://127.0.0.1:9/hook"]'}
    config = load_config(config_path, environ=environ)
    store = await open_store(config.store_url)
    try:
        issuer = load_issuer(config, None)
        with pytest.raises(ConfigError, match="no webhook secret"):
            build_app(config, store=store, issuer=issuer, clock=SystemClock())
        build_app(config, store=store, issuer=issuer, clock=SystemClock(), webhook_secret=SECRET)
        build_app(  # without URLs nothing is needed
            load_config(config_path, environ={}), store=store, issuer=issuer, clock=SystemClock()
        )
    finally:
        await store.close()


def test_fleet_serve_reads_the_secret_and_delivers(tmp_path: Path) -> None:
    """The CLI reads the secret (a 0600 file) and the server it starts delivers signed events."""
    config_path = init_data_dir(tmp_path / "data", now=dt.datetime.now(dt.UTC)).config_path
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)

    async def scenario() -> None:
        async with Receiver() as receiver:
            env = {
                "FLEET_WEBHOOKS_URLS": json.dumps([receiver.url()]),
                "FLEET_WEBHOOKS_SECRET_FILE": str(secret_file),
            }
            refused = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "fleet", "serve", "--config", str(config_path)],
                env={**os.environ, "FLEET_WEBHOOKS_URLS": env["FLEET_WEBHOOKS_URLS"]},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert refused.returncode != 0
            assert "no webhook secret" in refused.stderr
            server = FleetServer(config_path, env=env)
            await asyncio.to_thread(server.start)
            try:
                record = await asyncio.to_thread(
                    server.store, lambda s: append(s, "revoke", "done", "dev-cli")
                )
                await until(lambda: receiver.ids() == [str(record.seq)])
            finally:
                await asyncio.to_thread(server.stop)

    asyncio.run(scenario())


async def test_a_receiver_answering_garbage_gets_neither_the_url_token_nor_its_bytes_logged(
    store: SqliteStore,
    notifier: NotifierFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found from outside: aiohttp's error for a malformed answer quotes the request URL,
    query included, and up to 8 KiB of what the receiver sent; the notifier logged it."""
    caplog.set_level(logging.INFO, logger="fleet.notify")
    answers = [
        b"HTTP/1.1 99999999 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Filler: " + b"\x1b[2J" * 3000 + b"\r\n\r\n",
        b"\x00\xff garbage\r\n\r\n",
    ]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(answers[0] if len(answers) == 1 else answers.pop(0))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://user:pw@127.0.0.1:{port}/hook?token=s3cr3t-token"
    async with server, notifier([url], max_attempts=3):
        record = await append(store, "revoke", "done")
        await until(lambda: saved_cursors(tmp_path).get(url) == record.seq)
    failures = [r for r in caplog.records if getattr(r, "webhook", None)]
    assert len(failures) == 3  # two retries and the dead letter
    for entry in caplog.records:
        text = JsonFormatter().format(entry)
        assert "s3cr3t-token" not in text
        assert "pw@" not in text
        assert "\x1b" not in entry.getMessage()
        assert len(entry.getMessage()) < 500
