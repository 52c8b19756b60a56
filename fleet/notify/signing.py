"""The ``X-Fleet-Signature`` header: HMAC-SHA256 with a timestamp. Pure.

Stripe-style: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
The timestamp is inside the MAC, so a receiver that checks it against its own
clock (:func:`verify_signature`, ``tolerance``) rejects replays of old
deliveries. Several ``v1=`` entries may appear (a receiver accepts any), which
leaves room to rotate the secret without a gap.

Receiver sketch::

    verify_signature(secret, request.headers["X-Fleet-Signature"], raw_body,
                     now=time.time())          # raises SignatureInvalid
    if seen(body["id"]): return 200            # delivery is at-least-once
"""

from __future__ import annotations

import hashlib
import hmac

from fleet.kernel.errors import AuthError
from fleet.kernel.reasons import Reason

SIGNATURE_HEADER = "X-Fleet-Signature"
EVENT_HEADER = "X-Fleet-Event"
DELIVERY_HEADER = "X-Fleet-Delivery"
SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureInvalid(AuthError):
    reason = Reason.WEBHOOK_SIGNATURE_INVALID
    hint = (
        "Check that sender and receiver share the same webhook secret, that the body is "
        "verified byte for byte as received, and that both clocks are right."
    )


def compute_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body``."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Fleet-Signature`` value for ``body`` sent at ``timestamp``."""
    if not secret:
        raise ValueError("webhook secret is empty")
    return f"t={timestamp},{SCHEME}={compute_signature(secret, timestamp, body)}"


def verify_signature(
    secret: bytes,
    header: str,
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check an ``X-Fleet-Signature`` header; return its timestamp.

    Raises :class:`SignatureInvalid` if the header is malformed, no ``v1``
    signature matches ``body`` under ``secret``, or the timestamp is more than
    ``tolerance`` seconds away from ``now`` (a replay, or a wrong clock).
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureInvalid("webhook signature header is malformed")
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise SignatureInvalid("webhook signature header has a bad timestamp")
            timestamp = int(value)
        elif key == SCHEME:
            signatures.append(value)
        # other schemes: ignored, so a future v2 can be added beside v1
    if timestamp is None or not signatures:
        raise SignatureInvalid(f"webhook signature header needs t= and {SCHEME}=")
    if not secret:
        raise SignatureInvalid("no webhook secret to verify with")
    expected = compute_signature(secret, timestamp, body)
    # Compare every candidate in constant time; no early exit on a match.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected, candidate.lower())
    if not matched:
        raise SignatureInvalid("webhook signature does not match the body")
    if abs(now - timestamp) > tolerance:
        raise SignatureInvalid(
            f"webhook signature timestamp is {int(now - timestamp)} s away from now "
            f"(tolerance {int(tolerance)} s)"
        )
    return timestamp
