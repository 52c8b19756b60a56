"""The one place where fleet errors become HTTP statuses (API, EST and console).

Responses carry the safe message and the reason code (text/plain, plus an
``X-Fleet-Reason`` header); logs carry the detail. Anything unexpected is a
500 with only the request id in the body — the test suite treats any 500 a
client can provoke as a bug.
"""

from __future__ import annotations

from fleet.kernel.errors import (
    AuthError,
    ConfigError,
    ConfirmationRequired,
    CredentialsRequired,
    CsrInvalid,
    EncodingInvalid,
    EnrollmentPending,
    FleetError,
    NotFound,
    PolicyError,
    RequestInvalid,
    StateConflict,
    StoreError,
    TokenInvalid,
    TransportError,
    UnsupportedMediaType,
)

# Most specific first.
_STATUS: tuple[tuple[type[FleetError], int], ...] = (
    (EnrollmentPending, 202),
    (EncodingInvalid, 400),
    (CsrInvalid, 400),
    (RequestInvalid, 400),
    (UnsupportedMediaType, 415),
    (StateConflict, 409),
    (ConfirmationRequired, 428),
    (CredentialsRequired, 401),
    (TokenInvalid, 401),
    (NotFound, 404),
    (StoreError, 503),
    (TransportError, 503),
    (PolicyError, 403),
    (AuthError, 403),
    (ConfigError, 500),
)


def status_for(error: FleetError) -> int:
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500
