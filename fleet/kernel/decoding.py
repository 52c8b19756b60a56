"""Decoding untrusted bytes: the one place that knows how cryptography reports bad input (pure).

cryptography refuses malformed input with several exception types, not only
``ValueError``: ``x509.InvalidVersion`` (a certificate or CSR version it does
not know), ``UnsupportedAlgorithm``, ``DuplicateExtension``, ``TypeError``,
and ``NotImplementedError`` (an OCSP request for several certificates). It
also decodes some fields lazily, so a certificate that loads can still fail
when its subject is first read. Every decoder of client input runs inside
:func:`decoding`, which turns any of those into the caller's FleetError (a
4xx), and :func:`load_certificate` reads every lazily decoded field up front
so that code after it cannot fail on them.

An exception of another type inside :func:`decoding` is still the client's
input (the block decodes nothing else), so it is refused too, but logged as a
warning with its type and place: it may reveal a decoder bug worth a look.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterator

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from fleet.kernel.errors import EncodingInvalid, FleetError
from fleet.kernel.reasons import Reason

log = logging.getLogger("fleet.decoding")

DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # includes UnicodeDecodeError and binascii.Error
    TypeError,
    OverflowError,
    NotImplementedError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
)

ErrorFactory = Callable[[str], FleetError]


@contextlib.contextmanager
def decoding(what: str, error: ErrorFactory = EncodingInvalid) -> Iterator[None]:
    """Decode ``what`` (client input) in this block; a failure becomes ``error(message)``.

    FleetErrors pass through unchanged; ``RecursionError`` and ``MemoryError``
    (input nested or sized to exhaust the decoder) are refused like the rest.
    """
    try:
        yield
    except FleetError:
        raise
    except DECODE_ERRORS as exc:
        raise error(f"cannot decode {what}: {_summary(exc)}") from exc
    except Exception as exc:
        # RecursionError, MemoryError, or a decoder bug: refuse, and say where it came from.
        log.warning(
            "unexpected %s while decoding %s (%s); refused as invalid input",
            type(exc).__name__,
            what,
            _origin(exc),
        )
        raise error(f"cannot decode {what}") from exc


def load_certificate(
    data: bytes, *, pem: bool, what: str = "the client certificate"
) -> x509.Certificate:
    """A certificate from untrusted PEM or DER, every field decoded; EncodingInvalid otherwise."""

    def invalid(message: str) -> FleetError:
        return EncodingInvalid(
            message,
            reason=Reason.CERTIFICATE_INVALID,
            hint="Present a well-formed X.509 v3 certificate (RFC 5280).",
        )

    with decoding(what, invalid):
        load = x509.load_pem_x509_certificate if pem else x509.load_der_x509_certificate
        cert = load(data)
        decode_certificate_fields(cert)
    return cert


def decode_certificate_fields(cert: x509.Certificate) -> None:
    """Read every field cryptography decodes lazily, so later reads cannot raise.

    The public key is left alone: a key cryptography cannot load is a
    refusal by the key policy (``key_not_allowed``), decided by the kernel.
    """
    cert.serial_number  # noqa: B018
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    cert.not_valid_before_utc  # noqa: B018
    cert.not_valid_after_utc  # noqa: B018
    cert.signature_algorithm_oid  # noqa: B018
    for extension in cert.extensions:
        extension.value  # noqa: B018


def _summary(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _origin(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "no traceback"
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}: {_summary(exc)}"
