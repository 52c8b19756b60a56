"""`fleet-agent`: not built yet; says so and exits non-zero."""

from __future__ import annotations

import sys

EXIT_NOT_BUILT = 3


def main() -> None:
    print(
        "fleet-agent (device enrollment, renewal and MQTT session) is not built yet "
        "(tracked in issue 5); nothing was done.",
        file=sys.stderr,
    )
    sys.exit(EXIT_NOT_BUILT)
