"""Agent errors: each says what failed and what happens next, and maps to an exit code.

AgentError                    exit 1 (unexpected)
├── ConfigError               exit 2  bad arguments or unusable state directory
│   └── PinMismatch           exit 2  /cacerts has no root with the pinned fingerprint
├── Refused                   exit 3  the server refused by policy (403, or 401 after credentials)
│   └── Revoked               exit 6  certificate_revoked / device_revoked: nothing the agent can do
├── Transient                 exit 4  server down, overloaded, network: retry later
└── Pending                   exit 5  held for approval (202 + Retry-After)
"""

from __future__ import annotations

from fleet.kernel.reasons import Reason

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_TRANSIENT = 4
EXIT_PENDING = 5
EXIT_REVOKED = 6

# The refusals that end a device's life: no retry, no restart, a person re-enrolls it.
REVOKED_REASONS = frozenset({Reason.CERTIFICATE_REVOKED.value, Reason.DEVICE_REVOKED.value})


class AgentError(Exception):
    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """What failed, then what to do or what happens next."""
        return f"{self.message}\n  next: {self.hint}" if self.hint else self.message


class ConfigError(AgentError):
    exit_code = EXIT_CONFIG


class PinMismatch(ConfigError):
    """The server's /cacerts does not contain the root we were told to trust."""


class Refused(AgentError):
    """The server answered 401/403 with a reason; only a person (an admin) can change the answer."""

    exit_code = EXIT_REFUSED

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        status: int,
        hint: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.status = status
        # Set when the agent will try again on its own, slowly (expired, nothing else to try).
        self.retry_after = retry_after


class Revoked(Refused):
    """The server says this certificate or device is revoked: the agent stops for good."""

    exit_code = EXIT_REVOKED


class Transient(AgentError):
    """Try again later; ``retry_after`` (seconds) when the server said when."""

    exit_code = EXIT_TRANSIENT

    def __init__(self, message: str, *, retry_after: float | None = None, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class Pending(AgentError):
    """The server holds the enrollment for approval; ask again after ``retry_after`` seconds."""

    exit_code = EXIT_PENDING

    def __init__(self, message: str, *, retry_after: float, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
