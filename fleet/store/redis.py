"""The Redis store: several server replicas and broker nodes share one Redis.

Its key layout (one hash tag per namespace, so a script reaches every key of it in
Redis Cluster) is in fleet.store._redis_keys; the connection, with the durability
check at open, in fleet.store._redis_engine.

Every multi-key change is one script; nothing reads, decides in Python, then
writes without a server-side check. The audit append is the one place Python
computes (SHA-256 is not available in Redis Lua): it is a compare-and-set on
the chain head, retried on a lost race. Changes that take an ``audit`` event
(``record_certificate``, ``set_device_state``, ...) chain it in their own
script the same way: Python reads the head and computes the record, the script
checks the head is unchanged before its first write and answers ``moved``
(having written nothing) when it is not, and Python recomputes and retries.

Lua scripts do not roll back: a script that fails halfway keeps what it wrote.
So each script checks everything (existence, states, key types) before its
first write. redis-py retries a command once on a dropped connection, so a
write may run twice: ``append_audit`` and ``record_certificate`` recognise their
own earlier success; a retried ``revoke_*`` returns None (already revoked) and
a retried token consume fails closed. (An audit event passed along is written
by whichever attempt made the change, so it is never written twice.)
"""

from __future__ import annotations

from fleet.store._redis_audit import RedisAuditLog
from fleet.store._redis_devices import RedisDeviceRegistry
from fleet.store._redis_directory import RedisDirectory
from fleet.store._redis_feed import RedisRevocationFeed
from fleet.store._redis_ledger import RedisCertificateLedger
from fleet.store._redis_replacements import RedisReplacementQueue


class RedisStore(
    RedisDeviceRegistry,
    RedisCertificateLedger,
    RedisReplacementQueue,
    RedisDirectory,
    RedisAuditLog,
    RedisRevocationFeed,
):
    """Store backed by Redis: every role at once (``RedisStore.open`` connects).

    Each role is a module of its own, all on one engine (fleet.store._redis_engine)::

        DeviceRegistry                 fleet.store._redis_devices
        CertificateLedger              fleet.store._redis_ledger
        ReplacementQueue               fleet.store._redis_replacements
        AuditLog                       fleet.store._redis_audit
        RevocationFeed                 fleet.store._redis_feed
        ManufacturerTrust, AdminDirectory, EnrollmentTokens, Cursors, CrlNumbers
                                       fleet.store._redis_directory

    Each registers its own Lua scripts in ``__init__`` and calls ``super().__init__``.
    """
