"""Redis: the revocation feed, a list (``{ns}:feed``, index i holds seq i+1) whose
events are also PUBLISHed on ``{ns}:feed:events`` for broker nodes that follow it.

The events are appended by the scripts that revoke (``FEED_APPEND`` of
fleet.store._redis_lua); this role only reads. Pub/sub is at-most-once, so a
follower reads the list after every gap, every (re)subscription and every quiet
second in which the head moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import cast

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from fleet.kernel.errors import StoreUnavailable
from fleet.records import RevocationEvent, RevocationSnapshot
from fleet.store._codec import feed_event_from_json, serial_int, stored_record
from fleet.store._redis_engine import RedisEngine, as_text, as_texts, mapped_errors

_FEED_PAGE = 1000
_FOLLOW_IDLE_CHECK_SECONDS = 1.0
_FOLLOW_MAX_BACKOFF_SECONDS = 2.0


class RedisRevocationFeed(RedisEngine):
    """Reads of the revocation feed: head, pages, the snapshot, and following it live."""

    async def feed_head(self) -> int:
        with mapped_errors():
            head = await self._redis.get(self._keys.feed_seq)
        return 0 if head is None else int(head)

    async def feed_since(self, seq: int, *, limit: int = 1000) -> list[RevocationEvent]:
        if limit <= 0:
            return []
        start = max(seq, 0)  # a negative LRANGE index would count from the end
        with mapped_errors():
            raw = as_texts(await self._redis.lrange(self._keys.feed, start, start + limit - 1))
        # Index i holds sequence i + 1.
        events = [feed_event_from_json(text, seq=start + 1 + i) for i, text in enumerate(raw)]
        return [e for e in events if e.seq > seq]

    async def revocation_snapshot(self) -> RevocationSnapshot:
        k = self._keys
        with mapped_errors():
            # MULTI/EXEC: the three reads see one moment of the data set.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(k.feed_seq)
                pipe.smembers(k.revoked)
                pipe.smembers(k.revoked_devices)
                head, serials, devices = await pipe.execute()
        with stored_record("set of revoked serials"):
            return RevocationSnapshot(
                seq=0 if head is None else int(head),
                serials=frozenset(serial_int(s) for s in as_texts(serials)),
                device_ids=frozenset(as_texts(devices)),
            )

    async def _events_after(self, seq: int) -> list[RevocationEvent]:
        events: list[RevocationEvent] = []
        while True:
            page = await self.feed_since(seq, limit=_FEED_PAGE)
            events += page
            if len(page) < _FEED_PAGE:
                return events
            seq = page[-1].seq

    async def follow_feed(self, after_seq: int) -> AsyncGenerator[RevocationEvent, None]:
        last = after_seq
        backoff = 0.05
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._keys.channel)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=False, timeout=_FOLLOW_IDLE_CHECK_SECONDS
                    )
                    kind = None if message is None else as_text(message["type"])
                    resync = False
                    if kind is None:
                        # Pub/sub is at-most-once: when quiet, compare with the head so
                        # a lost final message is not waited for forever.
                        resync = await self.feed_head() > last
                    elif kind == "subscribe":
                        # The server now delivers to us (first time, or redis-py
                        # re-subscribed after a reconnect): read what we missed.
                        resync = True
                    elif kind == "message":
                        event = feed_event_from_json(as_text(message["data"]))
                        if event.seq == last + 1:
                            yield event
                            last = event.seq
                        elif event.seq > last:
                            resync = True
                    if resync:
                        for event in await self._events_after(last):
                            yield event
                            last = event.seq
                    backoff = 0.05
            except (RedisError, OSError, StoreUnavailable):
                # Redis went away: keep following; brokers report staleness themselves.
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 -- jitter
                backoff = min(backoff * 2, _FOLLOW_MAX_BACKOFF_SECONDS)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await _close_pubsub(pubsub)


async def _close_pubsub(pubsub: PubSub) -> None:
    # PubSub.aclose carries no annotations; this is its typed signature.
    aclose = cast(Callable[[], Awaitable[None]], pubsub.aclose)
    await aclose()
