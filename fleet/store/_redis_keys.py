"""The Redis store's key layout: every key of a namespace, named once.

Key layout (``{ns}`` is the namespace, ``fleet`` by default)::

    {ns}:device:<id>          hash    one device; absent field = None
    {ns}:devices              zset    every device id, score 0: lexicographic paging
    {ns}:cert:<serial hex>    hash    one certificate
    {ns}:device-certs:<id>    set     serials (hex) of a device's certificates
    {ns}:replacement:<id>     hash    the device's replacement request (see records.py)
    {ns}:expiry               zset    good certificates, score = notAfter (epoch µs)
    {ns}:revoked              set     revoked serials (the CRL's content)
    {ns}:revoked-devices      set     revoked device ids
    {ns}:token:<id>           hash    the device's one-time enrollment token (hashed)
    {ns}:mfr-cas              hash    fingerprint -> manufacturer CA as JSON
    {ns}:mfr-intermediates    hash    the intermediate pool (fleet.store.intermediates)
    {ns}:audit                zset    score = seq, member = the chained record as JSON
    {ns}:audit:head           hash    seq and sha256 of the newest audit record
    {ns}:audit:device:<id>    zset    seqs of one device's audit records (an index)
    {ns}:feed                 list    revocation events as JSON; index i holds seq i+1
    {ns}:feed:seq             string  newest feed sequence (INCR)
    {ns}:feed:events          channel every feed event is PUBLISHed here as well
    {ns}:admins               hash    sha256 -> admin credential as JSON
    {ns}:cursors              hash    name -> integer (named cursors)
    {ns}:crl:<scope>          hash    a CRL issuer's number counter (fleet.store.crl_numbers)
    {ns}:signed-crl:<scope>   hash    its newest signed CRL: number, content_seq, der (base64)
    {ns}:devices:state:<s>    zset    device ids in state s (index; _redis_indexes)
    {ns}:replacements:<s>     zset    device ids whose replacement request is in status s
    {ns}:indexes              string  version of the index sets (built once if missing)
    {ns}:devices:newest-expiry zset   device id -> notAfter of its newest good certificate

Why one hash tag: every key starts with ``{ns}``, so in Redis Cluster all of a
namespace lives in one hash slot. Each change is one Lua script (atomic on the
server), and a script may only touch keys of one slot; ``revoke_device`` must
reach certificate keys it only learns inside the script. The price is that one
namespace does not spread over cluster nodes; shard by namespace if ever needed.
"""

from __future__ import annotations

import dataclasses

from fleet.records import DeviceState, ReplacementStatus
from fleet.store._codec import serial_hex


@dataclasses.dataclass(frozen=True, slots=True)
class RedisKeys:
    namespace: str

    @property
    def tag(self) -> str:
        return "{" + self.namespace + "}"

    def device(self, device_id: str) -> str:
        return f"{self.tag}:device:{device_id}"

    def cert(self, serial: int) -> str:
        return f"{self.cert_prefix}{serial_hex(serial)}"

    @property
    def cert_prefix(self) -> str:
        return f"{self.tag}:cert:"

    def device_certs(self, device_id: str) -> str:
        return f"{self.tag}:device-certs:{device_id}"

    def token(self, device_id: str) -> str:
        return f"{self.tag}:token:{device_id}"

    def replacement(self, device_id: str) -> str:
        return f"{self.tag}:replacement:{device_id}"

    def audit_device(self, device_id: str) -> str:
        return f"{self.tag}:audit:device:{device_id}"

    @property
    def devices(self) -> str:
        return f"{self.tag}:devices"

    def state_index(self, state: DeviceState) -> str:
        return f"{self.tag}:devices:state:{state.value}"

    def replacement_index(self, status: ReplacementStatus) -> str:
        return f"{self.tag}:replacements:{status.value}"

    @property
    def newest_expiry(self) -> str:
        return f"{self.tag}:devices:newest-expiry"

    @property
    def indexes(self) -> str:
        return f"{self.tag}:indexes"

    @property
    def expiry(self) -> str:
        return f"{self.tag}:expiry"

    @property
    def revoked(self) -> str:
        return f"{self.tag}:revoked"

    def crl(self, scope: str) -> str:
        return f"{self.tag}:crl:{scope}"

    def signed_crl(self, scope: str) -> str:
        return f"{self.tag}:signed-crl:{scope}"

    @property
    def revoked_devices(self) -> str:
        return f"{self.tag}:revoked-devices"

    @property
    def mfr_cas(self) -> str:
        return f"{self.tag}:mfr-cas"

    @property
    def audit(self) -> str:
        return f"{self.tag}:audit"

    @property
    def audit_head(self) -> str:
        return f"{self.tag}:audit:head"

    @property
    def feed(self) -> str:
        return f"{self.tag}:feed"

    @property
    def feed_seq(self) -> str:
        return f"{self.tag}:feed:seq"

    @property
    def channel(self) -> str:
        return f"{self.tag}:feed:events"

    @property
    def admins(self) -> str:
        return f"{self.tag}:admins"

    @property
    def cursors(self) -> str:
        return f"{self.tag}:cursors"
