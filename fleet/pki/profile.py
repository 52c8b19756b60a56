"""Device certificate profiles: what an operational device certificate looks like."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from fleet.kernel.errors import ConfigError
from fleet.kernel.keys import KeyType

# RSA is accepted only when a profile opts in: it is slow to generate on small
# devices and makes certificates (and every TLS handshake) larger.
DEFAULT_ALLOWED_KEY_TYPES: frozenset[KeyType] = frozenset(
    {KeyType.EC_P256, KeyType.EC_P384, KeyType.ED25519}
)


@dataclass(frozen=True)
class DeviceProfile:
    """The policy for one class of device certificates (validated on construction)."""

    name: str = "default"
    validity: dt.timedelta = dt.timedelta(days=30)
    allowed_key_types: frozenset[KeyType] = field(default=DEFAULT_ALLOWED_KEY_TYPES)
    # Backdating notBefore tolerates devices whose clocks run a little behind.
    backdate: dt.timedelta = dt.timedelta(minutes=5)
    organization: str | None = None
    crl_url: str | None = None
    ocsp_url: str | None = None
    preferred_key_type: KeyType = KeyType.EC_P256

    def __post_init__(self) -> None:
        where = f"device profile {self.name!r}"
        if not self.name:
            raise ConfigError("a device profile needs a non-empty name")
        if self.validity <= dt.timedelta(0):
            raise ConfigError(f"{where}: validity must be positive, got {self.validity}")
        if self.backdate < dt.timedelta(0):
            raise ConfigError(f"{where}: backdate must not be negative, got {self.backdate}")
        if not self.allowed_key_types:
            raise ConfigError(f"{where}: allowed_key_types must not be empty")
        unknown = [k for k in self.allowed_key_types if not isinstance(k, KeyType)]
        if unknown:
            raise ConfigError(f"{where}: allowed_key_types has non-KeyType entries {unknown!r}")
        if self.preferred_key_type not in self.allowed_key_types:
            allowed = ", ".join(sorted(self.allowed_key_types))
            raise ConfigError(
                f"{where}: preferred_key_type {self.preferred_key_type} is not in "
                f"allowed_key_types ({allowed})"
            )
        for label, url in (("crl_url", self.crl_url), ("ocsp_url", self.ocsp_url)):
            # Relying parties fetch these over HTTP (RFC 5280 4.2.1.13, RFC 6960
            # A.1); plain http:// is normal since CRLs and OCSP answers are signed.
            if url is not None and not url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}: {label} must be an http:// URL, got {url!r}")
