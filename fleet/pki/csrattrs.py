"""EST CSR attributes (RFC 7030 section 4.5.2, as corrected by RFC 8951 section 4).

The server tells devices which key to generate and what to put in the CSR.
RFC 8951 fixed the ASN.1: each element is either a bare OID or an Attribute
whose values name the parameters, e.g. ``id-ecPublicKey { secp256r1 }``.
cryptography has no type for this, so it is spelled out with asn1crypto.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from asn1crypto import core

from fleet.kernel.errors import PolicyError
from fleet.kernel.keys import KeyType

ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
SECP256R1 = "1.2.840.10045.3.1.7"
SECP384R1 = "1.3.132.0.34"
ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
ECDSA_WITH_SHA384 = "1.2.840.10045.4.3.3"
ID_ED25519 = "1.3.101.112"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
SHA256_WITH_RSA_ENCRYPTION = "1.2.840.113549.1.1.11"
# RFC 7030 section 3.5: asks the client to put the TLS-unique value in
# challengePassword, binding the CSR to the authenticated TLS session.
CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"  # noqa: S105 - an OID, not a password

_MAX_CSRATTRS_BYTES = 16 * 1024

CsrAttribute: TypeAlias = str | tuple[str, list[str]]
"""A decoded element: a dotted OID, or (attribute OID, its values as strings)."""


class _AttrValues(core.SetOf):  # type: ignore[misc]
    _child_spec = core.Any


class _Attribute(core.Sequence):  # type: ignore[misc]
    _fields = [("type", core.ObjectIdentifier), ("values", _AttrValues)]  # noqa: RUF012


class _AttrOrOID(core.Choice):  # type: ignore[misc]
    _alternatives = [("oid", core.ObjectIdentifier), ("attribute", _Attribute)]  # noqa: RUF012


class _CsrAttrs(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _AttrOrOID


def _oid(dotted: str) -> Any:
    return _AttrOrOID(name="oid", value=core.ObjectIdentifier(dotted))


def _attribute(dotted: str, values: list[Any]) -> Any:
    return _AttrOrOID(
        name="attribute",
        value=_Attribute({"type": core.ObjectIdentifier(dotted), "values": _AttrValues(values)}),
    )


def _key_elements(key_type: KeyType) -> list[Any]:
    match key_type:
        case KeyType.EC_P256:
            curve = core.ObjectIdentifier(SECP256R1)
            return [_attribute(ID_EC_PUBLIC_KEY, [curve]), _oid(ECDSA_WITH_SHA256)]
        case KeyType.EC_P384:
            curve = core.ObjectIdentifier(SECP384R1)
            return [_attribute(ID_EC_PUBLIC_KEY, [curve]), _oid(ECDSA_WITH_SHA384)]
        case KeyType.ED25519:
            # Ed25519 has no parameters and hashes internally: the OID says it all.
            return [_oid(ID_ED25519)]
        case KeyType.RSA_2048 | KeyType.RSA_3072:
            # RFC 8951 section 4 / draft-ietf-lamps-csrattrs: key size as INTEGER.
            size = core.Integer(2048 if key_type is KeyType.RSA_2048 else 3072)
            return [_attribute(RSA_ENCRYPTION, [size]), _oid(SHA256_WITH_RSA_ENCRYPTION)]
    raise AssertionError(key_type)  # pragma: no cover - the enum is closed


def encode_csr_attributes(key_type: KeyType, *, require_pop: bool) -> bytes:
    """DER CsrAttrs asking for a ``key_type`` key; with ``require_pop``, the TLS-unique binding."""
    elements = _key_elements(key_type)
    if require_pop:
        elements.append(_oid(CHALLENGE_PASSWORD))
    der: bytes = _CsrAttrs(elements).dump()
    return der


def _value_text(value: Any) -> str:
    # Dispatch on the DER identifier octet: 0x06 OBJECT IDENTIFIER, 0x02 INTEGER.
    # Anything else is shown as hex DER, so values from other servers still
    # round-trip into logs instead of failing the whole decode.
    raw = bytes(value.dump())
    if raw[:1] == b"\x06":
        return str(core.ObjectIdentifier.load(raw, strict=True).dotted)
    if raw[:1] == b"\x02":
        return str(core.Integer.load(raw, strict=True).native)
    return raw.hex()


def decode_csr_attributes(der: bytes) -> list[CsrAttribute]:
    """The elements of DER CsrAttrs, OIDs dotted; PolicyError (``csrattrs_invalid``) on garbage."""
    if len(der) > _MAX_CSRATTRS_BYTES:
        raise PolicyError("the CSR attributes are too large", reason="csrattrs_invalid")
    try:
        parsed = _CsrAttrs.load(der, strict=True)
        result: list[CsrAttribute] = []
        for element in parsed:
            if element.name == "oid":
                result.append(str(element.chosen.dotted))
            else:
                attribute = element.chosen
                values = [_value_text(v) for v in attribute["values"]]
                if not values:  # RFC 8951: values is SET SIZE (1..MAX)
                    raise ValueError("attribute with no values")
                result.append((str(attribute["type"].dotted), values))
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise PolicyError(
            "cannot decode the CSR attributes: expected DER CsrAttrs (RFC 7030/8951)",
            reason="csrattrs_invalid",
        ) from exc
    return result
