"""One logged-in PKCS#11 session per process and token, shared by the keys in it.

PKCS#11 logs a whole process in to a token, its handles do not survive a fork
(the child must C_Initialize again), and a session is not safe for concurrent
use. So: one session per process and token (:func:`open_token`), every call
through one lock (:meth:`TokenSession.run`), and a process that finds itself
forked reinitialises the module and logs in again before it signs.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import exceptions as p11

from fleet.kernel.errors import ConfigError, FleetError, ServerUnavailable
from fleet.kernel.reasons import Reason
from fleet.pki.pkcs11_uri import Pkcs11Uri

_T = TypeVar("_T")
_PIN_HINT = (
    "Put the token's user PIN in a file of mode 0600 named by [ca] pkcs11_pin_file "
    "(`fleet init --pkcs11-pin-file`), or in FLEET_PKCS11_PIN; never on a command line."
)
# Errors after which a fresh login may succeed (token re-inserted, handles lost).
_RECONNECT = (p11.SessionHandleInvalid, p11.SessionClosed, p11.UserNotLoggedIn,
              p11.ObjectHandleInvalid, p11.KeyHandleInvalid, p11.DeviceRemoved)  # fmt: skip


def refused(what: str, exc: BaseException) -> FleetError:
    # Only the exception class: a PKCS#11 module's text may echo what it was given.
    return ServerUnavailable(
        f"the PKCS#11 token refused to {what} ({type(exc).__name__})",
        reason=Reason.PKCS11_FAILED,
        hint="Check that the token is present and unlocked (softhsm2-util --show-slots, "
        "or the HSM's own tools), then restart fleet.",
    )


class TokenSession:
    """A logged-in session with one token, shared by the keys in it and serialised."""

    def __init__(self, module: Path, token: Pkcs11Uri, pin: bytes, *, rw: bool) -> None:
        self._module = module
        self._token = token
        self._pin = pin
        self._rw = rw
        self._lock = threading.RLock()
        self._session: Any = None
        self._pid = 0
        self.generation = 0  # bumps on every (re)login: object handles from before are stale

    @property
    def token(self) -> Pkcs11Uri:
        return self._token

    def same_pin(self, pin: bytes) -> bool:
        return secrets.compare_digest(self._pin, pin)

    def make_writable(self) -> None:
        """Reopen read-write (for generating keys); the next call logs in again."""
        with self._lock:
            if self._rw:
                return
            self._rw = True
            if self._session is not None and self._pid == os.getpid():
                self._session.close()
            self._session = None

    def run(self, what: str, call: Callable[[Any], _T]) -> _T:
        """``call(session)`` under the lock; one fresh login and retry when handles went stale."""
        with self._lock:
            try:
                return call(self._current())
            except _RECONNECT:
                self._session = None
            except p11.PKCS11Error as exc:
                raise refused(what, exc) from None
            try:
                return call(self._current())
            except p11.PKCS11Error as exc:
                raise refused(what, exc) from None

    def _current(self) -> Any:
        if self._session is not None and self._pid == os.getpid():
            return self._session
        library = _load_module(self._module)
        if self._pid not in (0, os.getpid()):
            # A forked child: the parent's C_Initialize and handles mean nothing here.
            try:
                library.reinitialize()
            except p11.PKCS11Error:
                # Some modules refuse C_Finalize in a child that never initialised.
                library.initialize()
        token = _find_token(library, self._token)
        try:
            self._session = token.open(user_pin=_pin_text(self._pin), rw=self._rw)
        except p11.UserAlreadyLoggedIn:
            # PKCS#11 logs in a whole process at once; another session of this process
            # did, with the one PIN open_token lets a process use for this token.
            self._session = token.open(rw=self._rw)
        except p11.PinIncorrect:
            raise ConfigError(
                f"the PIN for PKCS#11 token {self._token.token!r} is wrong",
                reason=Reason.PKCS11_PIN_INCORRECT,
                hint=_PIN_HINT + " Too many wrong PINs lock the token.",
            ) from None
        except p11.PKCS11Error as exc:
            raise ConfigError(
                f"cannot log in to PKCS#11 token {self._token.token!r} ({type(exc).__name__})",
                reason=Reason.PKCS11_FAILED,
                hint="The PIN may be locked or not initialised; check with the token's tools.",
            ) from None
        self._pid = os.getpid()
        self.generation += 1
        return self._session


def _pin_text(pin: bytes) -> str:
    try:
        return pin.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            "the PKCS#11 PIN is not UTF-8 text", reason=Reason.PKCS11_PIN_INCORRECT
        ) from None


def _load_module(module: Path) -> Any:
    if not module.is_file():
        raise ConfigError(
            f"the PKCS#11 module {module} does not exist",
            reason=Reason.PKCS11_MODULE_UNAVAILABLE,
            hint="Set [ca] pkcs11_module to the token's library, e.g. "
            "/usr/lib/softhsm/libsofthsm2.so (Debian package softhsm2).",
        )
    try:
        # python-pkcs11 loads one module per process, by its path string: always
        # the real path, so a symlink and its target are the same module.
        return pkcs11.lib(str(module.resolve()))
    except (p11.PKCS11Error, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot load the PKCS#11 module {module}: {type(exc).__name__}",
            reason=Reason.PKCS11_MODULE_UNAVAILABLE,
            hint="Check that it is a PKCS#11 library for this machine (and its own config, "
            "e.g. SOFTHSM2_CONF, is readable). One process uses one PKCS#11 module.",
        ) from None


def _find_token(library: Any, uri: Pkcs11Uri) -> Any:
    serial = uri.serial.encode() if uri.serial is not None else None
    try:
        found = [
            token
            for token in library.get_tokens(token_label=uri.token, token_serial=serial)
            if (uri.manufacturer is None or token.manufacturer_id == uri.manufacturer)
            and (uri.model is None or token.model == uri.model)
        ]
    except p11.PKCS11Error as exc:
        raise refused("list its tokens", exc) from None
    if len(found) != 1:
        raise ConfigError(
            f"{'no' if not found else len(found)} PKCS#11 token(s) match {uri}",
            reason=Reason.PKCS11_TOKEN_NOT_FOUND,
            hint="List the tokens (softhsm2-util --show-slots, or p11tool --list-tokens) and "
            "name exactly one by its label (and serial when labels repeat).",
        )
    return found[0]


_SESSIONS: dict[tuple[Path, Pkcs11Uri], TokenSession] = {}
_SESSIONS_LOCK = threading.Lock()


def open_token(module: Path, uri: Pkcs11Uri, pin: bytes, *, rw: bool = False) -> TokenSession:
    """This process's session with the token ``uri`` names (its key attributes ignored).

    One per process and token: PKCS#11 logs a whole process in, so a second
    session with another PIN would either fail or ride on the first login.
    """
    if not pin:
        raise ConfigError(
            "no PIN for the PKCS#11 token",
            reason=Reason.PKCS11_PIN_MISSING,
            hint=_PIN_HINT,
        )
    token = Pkcs11Uri(uri.token, uri.manufacturer, uri.model, uri.serial)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get((module, token))
        if session is None:
            session = TokenSession(module, token, pin, rw=rw)
            _SESSIONS[(module, token)] = session
        elif not session.same_pin(pin):
            # The token has one user PIN and this process is logged in with another:
            # this one cannot be right, and must not ride on the existing login.
            raise ConfigError(
                f"the PIN for PKCS#11 token {token.token!r} is wrong",
                reason=Reason.PKCS11_PIN_INCORRECT,
                hint="Give every key in this token the same PIN ([ca] pkcs11_pin_file or "
                "FLEET_PKCS11_PIN).",
            )
        elif rw:
            session.make_writable()
    session.run("open a session", lambda _: None)  # log in now: a wrong PIN fails here
    return session
