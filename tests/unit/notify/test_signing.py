"""X-Fleet-Signature: sign, verify, and every way verification must fail."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from fleet.kernel.errors import AuthError
from fleet.notify.signing import SignatureInvalid, signature_header, verify_signature

SECRET = b"s3cret-s3cret-s3cret"
BODY = b'{"id":"1","type":"device.revoked"}'
T = 1_780_000_000


def test_header_format_is_stripe_style() -> None:
    header = signature_header(SECRET, BODY, T)
    mac = hmac.new(SECRET, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={mac}"


def test_round_trip() -> None:
    header = signature_header(SECRET, BODY, T)
    assert verify_signature(SECRET, header, BODY, T + 10) == T
    assert verify_signature(SECRET, header, BODY, now=T - 10, tolerance=60) == T


def test_tampered_body_is_refused() -> None:
    header = signature_header(SECRET, BODY, T)
    with pytest.raises(SignatureInvalid, match="does not match"):
        verify_signature(SECRET, header, BODY.replace(b"1", b"2"), T)


def test_wrong_secret_is_refused() -> None:
    header = signature_header(SECRET, BODY, T)
    with pytest.raises(SignatureInvalid, match="does not match"):
        verify_signature(b"another-secret-entirely", header, BODY, T)


def test_old_timestamp_is_refused_as_replay() -> None:
    header = signature_header(SECRET, BODY, T)
    with pytest.raises(SignatureInvalid, match="away from now"):
        verify_signature(SECRET, header, BODY, T + 301)
    with pytest.raises(SignatureInvalid, match="away from now"):
        verify_signature(SECRET, header, BODY, T + 61, tolerance=60)


def test_future_timestamp_is_refused() -> None:
    header = signature_header(SECRET, BODY, T)
    with pytest.raises(SignatureInvalid):
        verify_signature(SECRET, header, BODY, T - 301)


def test_changed_timestamp_breaks_the_signature() -> None:
    mac = signature_header(SECRET, BODY, T).partition(",")[2]
    with pytest.raises(SignatureInvalid, match="does not match"):
        verify_signature(SECRET, f"t={T + 5},{mac}", BODY, T + 5)


def test_any_of_several_v1_signatures_may_match_and_other_schemes_are_ignored() -> None:
    good = signature_header(SECRET, BODY, T).partition(",")[2]
    header = f"t={T}, v0=zzz, v1={'0' * 64}, {good}"
    assert verify_signature(SECRET, header, BODY, T) == T


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={T}",
        "v1=abcd",
        f"t=-{T},v1=abcd",
        f"t={T}x,v1=abcd",
        f"t={T},t={T},v1=abcd",
        "t=١٢٣,v1=abcd",  # non-ASCII digits
    ],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(SignatureInvalid):
        verify_signature(SECRET, header, BODY, T)


def test_empty_secret_never_verifies_or_signs() -> None:
    header = signature_header(SECRET, BODY, T)
    with pytest.raises(SignatureInvalid):
        verify_signature(b"", header, BODY, T)
    with pytest.raises(ValueError, match="empty"):
        signature_header(b"", BODY, T)


def test_error_is_a_fleet_auth_error_with_diagnostics() -> None:
    with pytest.raises(AuthError) as info:
        verify_signature(SECRET, "garbage", BODY, T)
    assert "webhook_signature_invalid" in info.value.diagnostics()
    assert SECRET.decode() not in info.value.diagnostics()
