"""Console sessions as signed cookies, and the CSRF tokens derived from them (pure).

A session is not kept on the server: the cookie carries which admin
credential signed in (its kind and SHA-256 fingerprint, the same key the
store looks credentials up by), when, until when, and a random nonce, under
an HMAC-SHA256 with a key every worker shares (``[ui] session_key_file``).
So ``fleet serve --workers N`` needs no shared session table, and revoking is
the store's job: each request looks the credential up again, and a disabled
credential (``fleet admin disable``) ends every session it opened at its next
request. Signing out clears the cookie.

A form's CSRF token is an HMAC of the session's nonce (synchronizer token
without server state); the sign-in form, before any session, gets one bound to
a random pre-session cookie (double submit).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import secrets

SESSION_COOKIE = "__Host-fleet_session"
LOGIN_COOKIE = "__Host-fleet_login"
_VERSION = "v1"


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    kind: str  # "token" | "certificate": the credential kind, as the store records it
    sha256: str  # the credential's fingerprint
    issued_at: dt.datetime
    expires_at: dt.datetime
    nonce: str


class SessionSigner:
    def __init__(self, key: bytes, *, lifetime: dt.timedelta) -> None:
        if len(key) < 32:
            raise ValueError("a console session key needs at least 32 bytes")
        # One derived key per use, so a CSRF token can never pass as a cookie MAC.
        self._cookie_key = _derive(key, b"fleet console session v1")
        self._csrf_key = _derive(key, b"fleet console csrf v1")
        self.lifetime = lifetime

    def new(self, kind: str, sha256: str, now: dt.datetime) -> Session:
        return Session(kind, sha256, now, now + self.lifetime, secrets.token_urlsafe(16))

    def encode(self, session: Session) -> str:
        payload = json.dumps(
            {
                "k": session.kind,
                "f": session.sha256,
                "i": int(session.issued_at.timestamp()),
                "e": int(session.expires_at.timestamp()),
                "n": session.nonce,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        body = _b64(payload)
        return f"{_VERSION}.{body}.{_b64(self._mac(body))}"

    def decode(self, cookie: str, now: dt.datetime) -> Session | None:
        """The session of a cookie whose MAC verifies and that has not expired; else None."""
        session = self.verified(cookie)
        if session is None or not session.issued_at <= now < session.expires_at:
            return None
        return session

    def verified(self, cookie: str) -> Session | None:
        """The session of a cookie whose MAC verifies, current or not (an expired one is
        still ours: the console audits its end); None for anything else."""
        version, _, rest = cookie.partition(".")
        body, _, mac = rest.partition(".")
        if version != _VERSION or not body or not mac or len(cookie) > 1024:
            return None
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body)):
                return None
            data = json.loads(_unb64(body))
            session = Session(
                kind=str(data["k"]),
                sha256=str(data["f"]),
                issued_at=dt.datetime.fromtimestamp(int(data["i"]), dt.UTC),
                expires_at=dt.datetime.fromtimestamp(int(data["e"]), dt.UTC),
                nonce=str(data["n"]),
            )
        except (ValueError, KeyError, TypeError, OverflowError):
            return None
        return session

    def csrf_token(self, nonce: str, purpose: str = "session") -> str:
        return _b64(hmac.new(self._csrf_key, f"{purpose}|{nonce}".encode(), "sha256").digest())

    def csrf_valid(self, nonce: str, token: str, purpose: str = "session") -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(nonce, purpose), token)

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._cookie_key, body.encode("ascii"), "sha256").digest()


def _derive(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
