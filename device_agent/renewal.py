"""When to renew, how long to wait after a failure, what to do once expired (pure: no I/O).

- Renew at ``fraction`` (2/3) of the lifetime, minus a random share of
  ``jitter`` x lifetime: jitter only ever moves renewal EARLIER, so a fleet
  enrolled in one batch spreads out without anyone cutting it close.
- After a failure wait ``backoff_delay``: exponential, with "equal jitter"
  (half fixed, half random, so never near zero), capped, never below a floor,
  and never sooner than the server's Retry-After (itself capped).
- Device clocks are wrong. A certificate counts as expired only when it is
  past ``not_after`` by more than ``skew``, and renewal is due ``skew`` early;
  the server, whose clock is right, has the last word (it refuses an expired
  certificate with ``certificate_expired``).
- Expired while offline: re-bootstrap when a bootstrap credential is configured
  and the server has not refused it; otherwise keep retrying slowly and say so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import random
from collections.abc import Callable

from device_agent.trust import CLOCK_SKEW, LATEST_RENEWAL_SKEWS

Random = Callable[[], float]  # uniform in [0, 1)

EXPIRED_REASONS = frozenset({"certificate_expired", "certificate_not_yet_valid"})


@dataclasses.dataclass(frozen=True)
class RenewalPolicy:
    fraction: float = 2 / 3
    jitter: float = 0.1  # of the lifetime, earlier only
    skew: dt.timedelta = CLOCK_SKEW
    backoff_floor: float = 5.0  # seconds; no retry ever comes sooner
    backoff_base: float = 10.0
    backoff_cap: float = 3600.0
    max_retry_after: float = 3600.0  # a server's Retry-After is honoured up to this
    slow_retry: float = 6 * 3600.0  # expired and nothing else to try: this often

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError("fraction must be between 0 and 1")
        if not 0 <= self.jitter < self.fraction:
            raise ValueError("jitter must be >= 0 and smaller than fraction")
        if self.backoff_floor <= 0 or self.backoff_base <= 0:
            raise ValueError("backoff floor and base must be positive")
        if self.backoff_cap < self.backoff_floor:
            raise ValueError("backoff cap must be >= the floor")


def renewal_time(
    not_before: dt.datetime,
    not_after: dt.datetime,
    policy: RenewalPolicy = RenewalPolicy(),
    rand: Random = random.random,
) -> dt.datetime:
    """When to renew a certificate valid from ``not_before`` to ``not_after``."""
    lifetime = not_after - not_before
    when = not_before + lifetime * (policy.fraction - policy.jitter * rand())
    # However short the lifetime: due before the (skewed) end, never before the start.
    latest = max(not_before, not_after - LATEST_RENEWAL_SKEWS * policy.skew)
    return min(when, latest)


def backoff_delay(
    failures: int,
    policy: RenewalPolicy = RenewalPolicy(),
    rand: Random = random.random,
    *,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1 = first)."""
    exponent = min(max(failures, 1) - 1, 32)
    ceiling = min(policy.backoff_cap, policy.backoff_base * 2.0**exponent)
    delay = ceiling / 2 + rand() * ceiling / 2
    delay = max(policy.backoff_floor, min(delay, policy.backoff_cap))
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


class Phase(enum.Enum):
    FRESH = "fresh"  # nothing to do until the renewal time
    DUE = "due"  # renew now
    EXPIRED = "expired"  # past not_after even allowing for skew (per the device clock)


def assess(
    not_after: dt.datetime,
    next_renewal: dt.datetime,
    now: dt.datetime,
    policy: RenewalPolicy = RenewalPolicy(),
) -> Phase:
    if now - policy.skew > not_after:
        return Phase.EXPIRED
    if now >= next_renewal or now + policy.skew >= not_after:
        return Phase.DUE
    return Phase.FRESH


class Action(enum.Enum):
    RENEW = "renew"  # simplereenroll with the current certificate
    REBOOTSTRAP = "rebootstrap"  # simpleenroll with the factory credential
    RETRY_SLOWLY = "retry_slowly"  # nothing will work until someone acts: keep trying, rarely


@dataclasses.dataclass(frozen=True)
class Plan:
    action: Action
    delay: float  # seconds before the attempt (0 = now)
    explanation: str


def plan_after_expiry(
    *,
    has_bootstrap: bool,
    rebootstrap_refused: bool,
    failures: int,
    policy: RenewalPolicy = RenewalPolicy(),
    rand: Random = random.random,
) -> Plan:
    """The current certificate is expired (the server said so, or clearly by our clock)."""
    if has_bootstrap and not rebootstrap_refused:
        return Plan(
            Action.REBOOTSTRAP,
            0.0 if failures == 0 else backoff_delay(failures, policy, rand),
            "the operational certificate expired: enrolling again with the bootstrap certificate",
        )
    why = (
        "the server refused re-enrollment with the bootstrap certificate"
        if has_bootstrap
        else "no bootstrap credential is configured"
    )
    delay = max(policy.slow_retry * (0.75 + 0.25 * rand()), policy.backoff_floor)
    return Plan(
        Action.RETRY_SLOWLY,
        delay,
        f"the operational certificate expired and {why}: retrying every ~{delay / 3600:.1f} h; "
        "an admin can issue a token (`fleet device token ID`) "
        "for `fleet-agent enroll --token-file`",
    )


def is_expiry_refusal(reason: str) -> bool:
    return reason in EXPIRED_REASONS
