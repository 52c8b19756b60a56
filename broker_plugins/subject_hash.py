"""OpenSSL's subject-name hash (``X509_NAME_hash``), for a ``capath`` directory (pure).

Mosquitto reads ``cafile`` once, at start (its SIGHUP reloads the server
certificate, not the CA store), but a ``capath`` directory is looked up at
each handshake by ``<hash>.<n>`` file names: a new issuing CA written there
is trusted by the next handshake, without a restart. The hash is the first
four bytes (little-endian) of the SHA-1 of the name's canonical encoding:
each RDN's DER SET, concatenated without the outer SEQUENCE, with string
values as UTF8String, trimmed, inner whitespace runs collapsed to one space,
ASCII lower-cased (crypto/x509/x_name.c, x509_name_canon).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.x509.name import _ASN1Type

from fleet.kernel.errors import ConfigError

# asn1_string_canon's ASN1_MASK_CANON: the string types that are canonicalised.
_CANON_TYPES = frozenset(
    {
        _ASN1Type.UTF8String,
        _ASN1Type.BMPString,
        _ASN1Type.UniversalString,
        _ASN1Type.PrintableString,
        _ASN1Type.T61String,
        _ASN1Type.IA5String,
        _ASN1Type.VisibleString,
    }
)
_SPACE = b" \t\n\v\f\r"


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _canon(value: str) -> bytes:
    data = value.encode("utf-8").strip(_SPACE)
    out = bytearray()
    previous_space = False
    for byte in data:
        if byte in _SPACE:
            if not previous_space:
                out.append(0x20)
            previous_space = True
            continue
        previous_space = False
        out.append(byte + 32 if 0x41 <= byte <= 0x5A else byte)
    return bytes(out)


def subject_hash(name: x509.Name) -> str:
    """``openssl x509 -hash`` of a certificate with this subject: 8 hex digits."""
    encoded = bytearray()
    for rdn in name.rdns:
        entries = []
        for attribute in rdn:
            value = attribute.value
            if attribute._type not in _CANON_TYPES or not isinstance(value, str):
                raise ConfigError(
                    f"name attribute {attribute.oid.dotted_string} is not a string type; "
                    "cannot place this CA in a capath directory"
                )
            entries.append(
                _der(0x30, _oid(attribute.oid.dotted_string) + _der(0x0C, _canon(value)))
            )
        encoded += _der(0x31, b"".join(sorted(entries)))  # DER: SET OF sorted
    digest = hashlib.sha1(bytes(encoded)).digest()  # noqa: S324 - OpenSSL's file naming, not security
    return f"{int.from_bytes(digest[:4], 'little'):08x}"
