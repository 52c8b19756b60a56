"""Deliver notifications to webhook URLs, following the audit log as an outbox.

Per URL, one task reads the audit log after that URL's cursor (polling: the
store has no audit subscription), turns notifying records into signed POSTs
(:mod:`fleet.notify.events`, :mod:`fleet.notify.signing`) and delivers them in
audit order. A failed attempt (connection error, timeout, redirect, any
non-2xx) is retried with exponential backoff and jitter up to
``max_attempts``; then the notification is dead-lettered (an error log line
with its id and URL) and the URL moves on. A slow or dead receiver delays only
its own URL.

Cursors (last audit seq handled, per URL) live in ``webhooks.cursors.json`` in
the data directory, replaced atomically and advanced only after a delivery or a
dead-letter: a crash re-sends at most the notification in flight
(at-least-once; receivers de-duplicate on ``id``). A URL without a cursor
starts at the current end of the audit log, so a new receiver is not flooded
with history.

Only one process delivers: with ``--workers N`` every worker builds the app,
and an exclusive lock on ``webhooks.lock`` picks one; the others stand by
and take over if it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path

import aiohttp
import yarl
from aiohttp import web

from fleet.config import FleetConfig
from fleet.kernel.errors import ConfigError, FleetError
from fleet.kernel.files import SECRET_MODE, write_atomic
from fleet.notify.events import RULES, Notification, Rule, notification_for
from fleet.notify.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)
from fleet.store.protocol import AuditLog

log = logging.getLogger("fleet.notify")

CURSOR_FILE = "webhooks.cursors.json"
LOCK_FILE = "webhooks.lock"
USER_AGENT = "fleet-webhooks/1"
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=5)
_CURSOR_VERSION = 1
_jitter = random.SystemRandom()
_MAX_FAILURE = 200  # characters of an attempt's failure in a log line


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Delay after failed attempt ``n``: ``base * 2**(n-1)`` capped, times 0.5..1 (jitter)."""

    base: float = 0.5
    cap: float = 60.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * (1 << min(attempt - 1, 62)))
        return ceiling * _jitter.uniform(0.5, 1.0)


class WebhookNotifier:
    def __init__(
        self,
        *,
        store: AuditLog,
        urls: Sequence[str],
        secret: bytes,
        state_dir: Path,
        max_attempts: int = 8,
        poll_interval: float = 0.5,
        standby_interval: float = 5.0,
        backoff: Backoff = Backoff(),
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        rules: Sequence[Rule] = RULES,
        wall_clock: Callable[[], float] = time.time,
        batch: int = 200,
    ) -> None:
        if not secret:
            raise ConfigError("webhook secret is empty")
        if max_attempts < 1:
            raise ConfigError("[webhooks] max_attempts must be >= 1")
        self._store = store
        self._urls = tuple(dict.fromkeys(urls))  # once each, in order
        self._secret = secret
        self._cursor_path = state_dir / CURSOR_FILE
        self._lock_path = state_dir / LOCK_FILE
        self._max_attempts = max_attempts
        self._poll_interval = poll_interval
        self._standby_interval = standby_interval
        self._backoff = backoff
        self._timeout = timeout
        self._rules = tuple(rules)
        self._wall_clock = wall_clock
        self._batch = batch
        self._cursors: dict[str, int] = {}
        self._saved: dict[str, int] | None = None  # as last written to the cursor file
        self._save_lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:  # never the secret
        return f"WebhookNotifier(urls={len(self._urls)}, state={self._cursor_path})"

    @property
    def cursors(self) -> Mapping[str, int]:
        """Last audit seq handled per URL (delivered, dead-lettered or not notifying)."""
        return dict(self._cursors)

    @property
    def active(self) -> bool:
        """True in the one process that holds the delivery lock."""
        return self._lock_fd is not None

    async def start(self) -> None:
        """Start delivering (or stand by if another process delivers). Returns at once."""
        if self._session is not None:
            raise RuntimeError("webhook notifier already started")
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
        )
        try:
            if self._try_lock():
                await self._begin()
            else:
                log.info("another fleet process delivers webhooks; this one stands by")
                self._spawn(self._standby())
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"cannot keep webhook state in {self._cursor_path.parent}: {exc.strerror}",
                hint="The data directory must be writable by the server.",
            ) from exc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Cancel the loops, close the HTTP session, release the lock."""
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
            self._writing = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    async def __aenter__(self) -> WebhookNotifier:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- leadership ------------------------------------------------------------
    def _try_lock(self) -> bool:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, SECRET_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    async def _standby(self) -> None:
        # flock has no async wait; the lock holder exiting is rare, so poll slowly.
        while True:
            if self._try_lock():
                break
            await asyncio.sleep(self._standby_interval)
        log.info("taking over webhook delivery")
        while True:
            try:
                await self._begin()
                return
            except (FleetError, OSError) as exc:
                log.error("cannot start webhook delivery: %s", exc)
                await asyncio.sleep(self._standby_interval)

    async def _begin(self) -> None:
        saved = _load_cursors(self._cursor_path)
        head: int | None = None
        for url in self._urls:
            if url in saved and await self._in_log(saved[url]):
                self._cursors[url] = saved[url]
            else:
                if url in saved:  # e.g. the store was replaced by an older backup
                    log.warning(
                        "webhook %s cursor %d is beyond the end of the audit log; reset",
                        _redact(url),
                        saved[url],
                    )
                head = await self._audit_head() if head is None else head
                self._cursors[url] = head
                log.info(
                    "webhook %s starts after audit record %d (no history is sent)",
                    _redact(url),
                    head,
                )
        await self._save()
        for url in self._urls:
            self._spawn(self._follow(url))

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _in_log(self, seq: int) -> bool:
        if seq == 0:
            return True
        records = await self._store.audit_records(after_seq=seq - 1, limit=1)
        return bool(records) and records[0].seq == seq

    async def _audit_head(self) -> int:
        # The Store has no audit head query: page to the end once, at first start.
        head = 0
        while records := await self._store.audit_records(after_seq=head, limit=1000):
            head = records[-1].seq
        return head

    # -- following the audit log -----------------------------------------------
    async def _follow(self, url: str) -> None:
        while True:
            try:
                if not await self._follow_batch(url):
                    await asyncio.sleep(self._poll_interval)
            except FleetError as exc:  # store unavailable, cursor file unwritable
                log.warning("webhook %s paused: %s", _redact(url), exc.message)
                await asyncio.sleep(self._poll_interval)
            except OSError as exc:
                log.warning("webhook %s paused: %s", _redact(url), exc)
                await asyncio.sleep(self._poll_interval)
            except Exception:
                # A bug must not silently end deliveries to this URL.
                log.exception("webhook %s loop failed; retrying", _redact(url))
                await asyncio.sleep(self._standby_interval)

    async def _follow_batch(self, url: str) -> bool:
        """Handle the next records after the URL's cursor; False if there were none."""
        records = await self._store.audit_records(after_seq=self._cursors[url], limit=self._batch)
        if records:
            for record in records:
                notification = notification_for(record, self._rules)
                if notification is not None:
                    await self._deliver(url, notification)
                    self._cursors[url] = record.seq
                    await self._save()
                else:
                    self._cursors[url] = record.seq
            # Records that do not notify: remember the skip once per batch.
            await self._save()
        return bool(records)

    async def _deliver(self, url: str, notification: Notification) -> None:
        problem = ""
        for attempt in range(1, self._max_attempts + 1):
            problem = await self._attempt(url, notification)
            if not problem:
                log.info(
                    "webhook %s delivered event %s (%s) on attempt %d",
                    _redact(url),
                    notification.id,
                    notification.type,
                    attempt,
                    extra=_extra(url, notification, attempt),
                )
                return
            if attempt < self._max_attempts:
                delay = self._backoff.delay(attempt)
                log.warning(
                    "webhook %s event %s attempt %d failed (%s); retrying in %.1f s",
                    _redact(url),
                    notification.id,
                    attempt,
                    problem,
                    delay,
                    extra=_extra(url, notification, attempt),
                )
                await asyncio.sleep(delay)
        log.error(
            "webhook %s dead-lettered event %s (%s) after %d attempts: %s",
            _redact(url),
            notification.id,
            notification.type,
            self._max_attempts,
            problem,
            extra={
                **_extra(url, notification, self._max_attempts),
                "reason": "webhook_dead_lettered",
            },
        )

    async def _attempt(self, url: str, notification: Notification) -> str:
        """One POST; "" on success, else what went wrong (for the log)."""
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(
                self._secret, notification.body, int(self._wall_clock())
            ),
            EVENT_HEADER: notification.type,
            DELIVERY_HEADER: notification.id,
        }
        try:
            async with self._session.post(
                url, data=notification.body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return ""
                return f"HTTP {response.status}"
        except TimeoutError:
            return "timed out"
        except aiohttp.ClientError as exc:
            return _failure(exc, url)

    async def _save(self) -> None:
        async with self._save_lock:
            if self._cursors == self._saved:
                return
            snapshot = dict(self._cursors)
            data = {"version": _CURSOR_VERSION, "cursors": snapshot}
            payload = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
            # fsync off the event loop; the lock keeps writers (and their temp file)
            # apart, and stop() waits for a write that a cancellation interrupted.
            self._writing = asyncio.ensure_future(
                asyncio.to_thread(write_atomic, self._cursor_path, payload, mode=SECRET_MODE)
            )
            await asyncio.shield(self._writing)
            self._saved = snapshot


def _load_cursors(path: Path) -> dict[str, int]:
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise _corrupt(path, str(exc)) from exc
    if not isinstance(raw, dict) or raw.get("version") != _CURSOR_VERSION:
        raise _corrupt(path, "unknown format")
    cursors = raw.get("cursors")
    if not isinstance(cursors, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in cursors.items()
    ):
        raise _corrupt(path, "cursors must map URLs to audit sequence numbers")
    return dict(cursors)


def _corrupt(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"webhook cursor file {path} is unreadable: {why}",
        hint="Fix it, or delete it to restart every webhook at the current end of the audit "
        "log (audit records in between are then not sent).",
    )


def _redact(url: str) -> str:
    """The URL without credentials or query string, fit for a log line."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _failure(exc: aiohttp.ClientError, url: str) -> str:
    """What went wrong with one attempt, fit for a log line.

    aiohttp's errors name the request URL, query string included, and quote
    what the receiver sent: a receiver that answers garbage (a bad status
    line, 8 KiB of header) would put the URL's token into the server log and
    fill it with bytes of its choosing. So: the URL as :func:`_redact` shows
    it, any remaining copy of its query or credentials cut out, one short line.
    """
    text = f"{type(exc).__name__}: {exc}"
    parts = urllib.parse.urlsplit(url)
    text = text.replace(str(yarl.URL(url)), _redact(url)).replace(url, _redact(url))
    for secret in (parts.query, parts.username, parts.password):
        if secret:
            for form in {secret, urllib.parse.unquote(secret), urllib.parse.quote(secret, "=&")}:
                text = text.replace(form, "[redacted]")
    text = " ".join(text.split())  # the receiver's bytes on one line
    return text if len(text) <= _MAX_FAILURE else text[: _MAX_FAILURE - 3] + "..."


def _extra(url: str, notification: Notification, attempts: int) -> dict[str, object]:
    return {
        "device_id": notification.device_id,
        "webhook": {
            "id": notification.id,
            "type": notification.type,
            "url": _redact(url),
            "attempts": attempts,
        },
    }


def attach_notifier(
    app: web.Application,
    config: FleetConfig,
    *,
    store: AuditLog,
    secret: bytes,
) -> WebhookNotifier:
    """Run a notifier for ``config.webhooks.urls`` with the app's lifetime.

    ``secret`` is read by the CLI (fleet.notify.secret.webhook_secret), which
    refuses to start a server with URLs but no secret.
    """
    notifier = WebhookNotifier(
        store=store,
        urls=config.webhooks.urls,
        secret=secret,
        state_dir=config.data_dir,
        max_attempts=config.webhooks.max_attempts,
    )

    async def on_startup(_: web.Application) -> None:
        await notifier.start()

    async def on_cleanup(_: web.Application) -> None:
        with contextlib.suppress(Exception):
            await notifier.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return notifier
