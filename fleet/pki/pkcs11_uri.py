"""PKCS#11 URIs (RFC 7512) naming a token and a key object in it, parsed strictly.

A URI comes from fleet.toml or the command line, so it is hostile input: every
attribute is known, given once, non-empty and percent-encoded where RFC 7512
says so; anything else is a ConfigError with reason ``pkcs11_uri_invalid``.
Query attributes are refused: the module path and the PIN have their own
settings (``[ca] pkcs11_module``, ``pkcs11_pin_file`` / ``FLEET_PKCS11_PIN``),
and a ``pin-value`` in a config file would be a secret written where secrets
never go.
"""

from __future__ import annotations

import dataclasses
import re
import string
import urllib.parse

from fleet.kernel.errors import ConfigError
from fleet.kernel.reasons import Reason

_SCHEME = "pkcs11:"
# RFC 7512 section 2.3: p11-pchar = unreserved / pct-encoded / ":" / "[" / "]" / "@" / "!"
# / "$" / "'" / "(" / ")" / "*" / "+" / "," / "=" / "&". ';' separates attributes and
# '?' starts the query, so neither may appear unencoded in a value.
_PCHAR = frozenset(string.ascii_letters + string.digits + "-._~:[]@!$'()*+,=&")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
MAX_URI_LENGTH = 1024
# CK_TOKEN_INFO fields are blank-padded fixed-size arrays: label 32, manufacturer 32,
# model 16, serial 16 bytes. Anything longer can never match a token.
_FIELD_LIMITS = {"token": 32, "manufacturer": 32, "model": 16, "serial": 16, "object": 255}
_TYPES = ("private",)  # only private keys are looked up by URI


@dataclasses.dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    """A token (label, and optionally manufacturer, model, serial) and maybe one key in it."""

    token: str
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    object: str | None = None  # CKA_LABEL of the key
    id: bytes | None = None  # CKA_ID of the key

    @property
    def names_key(self) -> bool:
        return self.object is not None or self.id is not None

    def with_key(self, label: str, key_id: bytes) -> Pkcs11Uri:
        """This token's URI naming the key ``label`` / ``key_id`` in it."""
        return dataclasses.replace(self, object=label, id=key_id)

    def __str__(self) -> str:
        """The canonical form: attributes in RFC 7512 order, values percent-encoded."""
        parts = [f"token={_quote(self.token)}"]
        for name in ("manufacturer", "model", "serial", "object"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={_quote(value)}")
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        if self.names_key:
            parts.append("type=private")
        return _SCHEME + ";".join(parts)


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="".join(sorted(_PCHAR - {"&", "="})))


def _invalid(setting: str, why: str) -> ConfigError:
    return ConfigError(
        f"{setting}: not a usable PKCS#11 URI: {why}",
        reason=Reason.PKCS11_URI_INVALID,
        hint="Write it as pkcs11:token=LABEL;object=KEY-LABEL (RFC 7512), percent-encoding "
        "other characters, e.g. pkcs11:token=fleet;object=fleet-issuing. The module and "
        "the PIN are separate settings ([ca] pkcs11_module, pkcs11_pin_file or "
        "FLEET_PKCS11_PIN), never part of the URI.",
    )


def parse_pkcs11_uri(text: str, *, setting: str, key_required: bool) -> Pkcs11Uri:
    """``text`` as a :class:`Pkcs11Uri`; ConfigError naming ``setting`` and the fault otherwise.

    ``key_required``: the URI must name a key object (``object`` and/or ``id``);
    when False it must name only a token (``fleet init`` creates the keys).
    """
    if not isinstance(text, str):
        raise _invalid(setting, "it must be a string")
    if len(text) > MAX_URI_LENGTH:
        raise _invalid(setting, f"it is {len(text)} characters long; the limit is {MAX_URI_LENGTH}")
    if not text.startswith(_SCHEME):
        raise _invalid(setting, "it must start with 'pkcs11:'")
    body = text[len(_SCHEME) :]
    if "?" in body:
        raise _invalid(
            setting,
            "query attributes (pin-value, pin-source, module-name, module-path) are not "
            "accepted; the PIN and module have their own settings",
        )
    if not body:
        raise _invalid(setting, "it names no token (token=LABEL is required)")
    values: dict[str, str | bytes] = {}
    for attribute in body.split(";"):
        name, sep, raw = attribute.partition("=")
        if not sep:
            raise _invalid(setting, f"attribute {attribute[:40]!r} has no '='")
        if name not in (*_FIELD_LIMITS, "id", "type"):
            raise _invalid(
                setting,
                f"unknown attribute {name[:40]!r}; known: token, manufacturer, model, serial, "
                "object, id, type",
            )
        if name in values:
            raise _invalid(setting, f"attribute {name!r} is given twice")
        if not raw:
            raise _invalid(setting, f"attribute {name!r} is empty")
        bad = [c for c in _PERCENT.sub("", raw) if c not in _PCHAR]
        if bad:
            raise _invalid(
                setting, f"attribute {name!r} has the character {bad[0]!r}; percent-encode it"
            )
        data = urllib.parse.unquote_to_bytes(raw)
        if name == "id":
            values[name] = data
            continue
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(setting, f"attribute {name!r} is not UTF-8") from None
        if not value.isprintable():
            raise _invalid(setting, f"attribute {name!r} has control characters")
        limit = _FIELD_LIMITS.get(name)
        if limit is not None and len(data) > limit:
            raise _invalid(setting, f"attribute {name!r} is longer than {limit} bytes")
        values[name] = value
    if values.pop("type", "private") not in _TYPES:
        raise _invalid(setting, "type must be 'private' (the URI names a private key)")
    token = values.pop("token", None)
    if not isinstance(token, str):
        raise _invalid(setting, "it names no token (token=LABEL is required)")
    uri = Pkcs11Uri(token=token, **values)  # type: ignore[arg-type]
    if key_required and not uri.names_key:
        raise _invalid(setting, "it names no key: add object=KEY-LABEL (and/or id=%..)")
    if not key_required and uri.names_key:
        raise _invalid(
            setting,
            "it must name only the token: fleet creates the keys and records their URIs",
        )
    return uri
