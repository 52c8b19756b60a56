"""Whether a Redis server may be fleet's system of record (pure; checked at connect).

A CA that loses an acknowledged revocation silently re-admits a compromised
device, and Redis by default acknowledges before anything is on disk or on a
replica. So fleet accepts Redis as the system of record only when either

* it persists every write before answering: ``appendonly yes`` and
  ``appendfsync always`` (AOF fsynced per write), or
* ``store.redis.min_replicas = N``: after each write fleet sends ``WAIT N``
  and acknowledges only when N replicas have it (a Sentinel failover to one
  of them keeps it; Redis replication alone is asynchronous),

and refuses to start otherwise, naming the settings to change.
``store.redis.allow_volatile = true`` overrides it, for tests and demos only.
Readers of the feed (broker plugins) are not the system of record and are
not checked.
"""

from __future__ import annotations

import dataclasses

from fleet.kernel.errors import ConfigError

# WAIT gives up after this long; the write is then reported as not acknowledged.
WAIT_TIMEOUT_MS = 2000


@dataclasses.dataclass(frozen=True, slots=True)
class RedisDurability:
    """``[store.redis]`` of fleet.toml."""

    min_replicas: int = 0
    allow_volatile: bool = False
    # A feed reader (broker plugin): never writes records, so nothing to check.
    reader_only: bool = False

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError("[store.redis] min_replicas must be >= 0")


FEED_READER = RedisDurability(reader_only=True)

_PERSIST = (
    "in redis.conf: `appendonly yes` and `appendfsync always` (or at runtime: "
    "`redis-cli CONFIG SET appendonly yes` and `redis-cli CONFIG SET appendfsync always`, "
    "then `CONFIG REWRITE`)"
)
_OVERRIDE = (
    "For tests and demos only, set [store.redis] allow_volatile = true "
    "(or FLEET_STORE_REDIS_ALLOW_VOLATILE=true): acknowledged writes may then be lost."
)


def durability_problem(
    settings: dict[str, str] | None, replicas: int, wanted: RedisDurability
) -> tuple[str, str] | None:
    """``(what is wrong, what to do)``, or None when Redis may hold fleet's records.

    ``settings``: CONFIG GET appendonly/appendfsync, None when CONFIG is
    disabled (managed Redis); ``replicas``: connected replicas (INFO replication).
    """
    if wanted.reader_only or wanted.allow_volatile:
        return None
    if wanted.min_replicas > 0:
        if replicas >= wanted.min_replicas:
            return None
        return (
            f"Redis has {replicas} connected replica(s); [store.redis] min_replicas "
            f"requires {wanted.min_replicas} to acknowledge every write (WAIT)",
            "Attach the replicas (replicaof) or lower min_replicas. " + _OVERRIDE,
        )
    if settings is None:
        return (
            "Redis refuses CONFIG GET (a managed Redis?), so fleet cannot see whether it "
            "persists every write before acknowledging it",
            "Set [store.redis] min_replicas = N to acknowledge writes only once N replicas "
            "have them (WAIT), or, if your provider guarantees appendfsync always, "
            "[store.redis] allow_volatile = true. " + _OVERRIDE,
        )
    appendonly = settings.get("appendonly", "")
    appendfsync = settings.get("appendfsync", "")
    if appendonly == "yes" and appendfsync == "always":
        return None
    return (
        f"Redis is not durable (appendonly {appendonly or '?'}, appendfsync "
        f"{appendfsync or '?'}): an acknowledged revocation could be lost and re-admit a "
        "compromised device",
        f"Set {_PERSIST}; or [store.redis] min_replicas = N with N replicas. " + _OVERRIDE,
    )
