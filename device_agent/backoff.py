"""How long the device waits before it tries the broker again."""

from __future__ import annotations

import random

# A connection that lasted this long was healthy: the next loss starts the
# reconnect backoff from the minimum again. Shorter ones (a broker that
# accepts then kicks) keep growing it, so a refused device never spins.
STABLE_AFTER = 30.0


class Backoff:
    """Exponential backoff with jitter: the n-th delay is uniform in [d/2, d], d = min·2ⁿ ≤ max."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        if minimum <= 0 or maximum < minimum:
            raise ValueError("backoff needs 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.minimum * 2.0 ** min(self.failures, 62))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0
