"""Device ids: the one identity a device has in certificates, MQTT client ids and topics.

The alphabet is deliberately tiny. Mosquitto ACL patterns substitute the CN into
topics, so ``/``, ``+`` and ``#`` would let a device escape ``devices/<id>/#``;
NUL, spaces and Unicode (confusables, normalisation) break logs and comparisons.
"""

from __future__ import annotations

import re
import warnings

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.kernel.errors import ConfigError, DeviceIdInvalid

MAX_DEVICE_ID_LENGTH = 64

# re.ASCII so that \w-like shortcuts never sneak in; fullmatch so that a trailing
# newline is not silently accepted the way ``$`` would.
_DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
DEVICE_ID_PUNCTUATION = "._-"  # besides ASCII letters and digits
_ALLOWED_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" + DEVICE_ID_PUNCTUATION
)

# Names that mean something to the server, the broker or a path. Compared
# case-insensitively: brokers and humans treat "Admin" and "admin" alike.
RESERVED_DEVICE_IDS: frozenset[str] = frozenset(
    {
        "admin",
        "administrator",
        "root",
        "fleet",
        "broker",
        "sidecar",
        "system",
        "mosquitto",
        "anonymous",
        "$sys",
        "localhost",
        "server",
        "ca",
        ".",
        "..",
    }
)

_SOURCES = {"cn": NameOID.COMMON_NAME, "serialnumber": NameOID.SERIAL_NUMBER}


def validate_device_id(text: str) -> str:
    """``text`` unchanged if it is a valid, unreserved device id; DeviceIdInvalid otherwise."""
    if not text:
        raise DeviceIdInvalid("device id is empty; it must be 1-64 characters")
    if len(text) > MAX_DEVICE_ID_LENGTH:
        raise DeviceIdInvalid(
            f"device id is {len(text)} characters long; the maximum is {MAX_DEVICE_ID_LENGTH}"
        )
    for position, char in enumerate(text):
        if char not in _ALLOWED_CHARS:
            raise DeviceIdInvalid(
                f"device id {text!r} contains {char!r} (U+{ord(char):04X}) at position "
                f"{position}; only A-Z a-z 0-9 . _ - are allowed"
            )
    if text.lower() in RESERVED_DEVICE_IDS:
        raise DeviceIdInvalid(f"device id {text!r} is reserved; choose another name")
    # Belt and braces: the checks above and the documented regex must agree.
    if not _DEVICE_ID.fullmatch(text):  # pragma: no cover
        raise DeviceIdInvalid(f"device id {text!r} is not valid")
    return text


def is_device_id(text: str) -> bool:
    """Whether ``text`` passes :func:`validate_device_id` (for filters that drop, not refuse)."""
    try:
        validate_device_id(text)
    except DeviceIdInvalid:
        return False
    return True


def subject_attributes(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    """The values of ``oid`` in ``cert``'s subject, as text.

    Quietly: cryptography warns about out-of-range lengths (an empty or 65-byte
    CN) as it reads them, but judging them is this module's job, with a reason.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        attributes = cert.subject.get_attributes_for_oid(oid)
    return [a.value if isinstance(a.value, str) else a.value.decode("utf-8", "replace")
            for a in attributes]  # fmt: skip


def device_id_from_certificate(cert: x509.Certificate, source: str = "cn") -> str:
    """The validated device id in ``cert``'s subject ``source`` attribute ("cn" or "serialNumber").

    Exactly one such attribute must be present: with two, different consumers
    (broker, ACL, our store) could each pick a different one.
    """
    oid = _SOURCES.get(source.lower())
    if oid is None:
        # A wrong source is a setting mistake, not something the device did.
        raise ConfigError(f"unknown device id source {source!r}; use 'cn' or 'serialNumber'")
    attributes = subject_attributes(cert, oid)
    if not attributes:
        raise DeviceIdInvalid(
            f"certificate subject {cert.subject.rfc4514_string()!r} has no {source} attribute "
            "to take the device id from"
        )
    if len(attributes) > 1:
        raise DeviceIdInvalid(
            f"certificate subject {cert.subject.rfc4514_string()!r} has {len(attributes)} "
            f"{source} attributes; exactly one is required"
        )
    return validate_device_id(attributes[0])


def is_device_id_prefix(text: str) -> bool:
    """True if ``text`` can begin a device id (the id alphabet, at most the id length):
    what a search by id prefix may be given."""
    return 0 < len(text) <= MAX_DEVICE_ID_LENGTH and all(c in _ALLOWED_CHARS for c in text)
