"""Only the HTTP layer maps errors to statuses, and every error has one."""

from __future__ import annotations

import pytest

from fleet.kernel import errors
from fleet.server.errors import status_for


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.EnrollmentPending("x", retry_after=5), 202),
        (errors.EncodingInvalid("x"), 400),
        (errors.CsrInvalid("x"), 400),
        (errors.CredentialsRequired("x"), 401),
        (errors.TokenInvalid("x"), 401),
        (errors.KeyNotAllowed("x"), 403),
        (errors.DeviceIdInvalid("x"), 403),
        (errors.IdentityMismatch("x"), 403),
        (errors.UnknownIssuer("x"), 403),
        (errors.CertificateExpired("x"), 403),
        (errors.EnrollmentRefused("x"), 403),
        (errors.DeviceNotFound("x"), 404),
        (errors.UnsupportedMediaType("x"), 415),
        (errors.StoreUnavailable("x"), 503),
        (errors.StoreConflict("x"), 503),
        (errors.ConfigError("x"), 500),
    ],
)
def test_status_of_each_error(error: errors.FleetError, status: int) -> None:
    assert status_for(error) == status


def test_every_client_facing_error_maps_below_500() -> None:
    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    for kind in (errors.PolicyError, errors.AuthError, errors.NotFound):
        for cls in subclasses(kind):
            error = cls("x") if cls is not errors.EnrollmentPending else cls("x", retry_after=1)
            assert status_for(error) < 500, cls
