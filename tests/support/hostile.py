"""Hostile client input, well-formed enough to reach the parsers: for regression and fuzz tests.

Each builder makes one kind of input a client or admin can send that
cryptography refuses in an unusual way (an exception that is not a
ValueError, or one raised lazily when a field is first read). The
certificates are re-signed by the given CA, so they fail for the reason under
test and not for a bad signature. ``Mutator`` derives seeded random variants
of any DER input for the fuzz tests and ``bench/fuzz_est.py``.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.pki.ca import CertifiedKey
from fleet.pki.keys import sign_data

# -- CSRs ----------------------------------------------------------------------------------


def csr_der(subject: x509.Name | None = None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def csr_with_version(der: bytes, version: int) -> bytes:
    """``der`` with its version INTEGER (0 for PKCS#10 v1) replaced by ``version`` (0-127)."""
    # CertificationRequest ::= SEQ { SEQ (info) { INTEGER version, ... } }: the first
    # INTEGER of length 1 inside the info is the version.
    index = der.index(b"\x02\x01\x00")
    return der[: index + 2] + bytes([version]) + der[index + 3 :]


def est_body(der: bytes) -> bytes:
    """An EST request body: base64 with line breaks, as most clients send it."""
    return base64.encodebytes(der)


# -- certificates ---------------------------------------------------------------------------


def resign(der: bytes, ca: CertifiedKey, edit: Callable[[bytes], bytes]) -> bytes:
    """The certificate ``der`` with its TBS bytes passed through ``edit`` and signed by ``ca``."""
    cert = asn1_x509.Certificate.load(der)
    tbs = edit(cert["tbs_certificate"].dump())
    signature = sign_data(ca.private_key, tbs)
    outer = asn1_core.Sequence()
    outer.contents = tbs + cert["signature_algorithm"].dump() + bit_string(signature)
    return outer.dump()


def bit_string(data: bytes) -> bytes:
    return asn1_core.OctetBitString(data).dump()


def v2_certificate(der: bytes, ca: CertifiedKey) -> bytes:
    """``der`` as an X.509 v2 certificate (version 1), which cryptography refuses to load."""

    def edit(tbs: bytes) -> bytes:
        marker = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2 (v3)
        index = tbs.index(marker)
        return tbs[:index] + b"\xa0\x03\x02\x01\x01" + tbs[index + len(marker) :]

    return resign(der, ca, edit)


def invalid_printable_string(der: bytes, ca: CertifiedKey) -> bytes:
    """``der`` with its subject CN re-tagged as a PrintableString holding ``@`` (not allowed).

    cryptography loads it and fails only when the subject is first read.
    """
    cert = x509.load_der_x509_certificate(der)
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str)
    assert len(cn) < 128
    utf8 = b"\x0c" + bytes([len(cn)]) + cn.encode()
    bad = b"\x13" + bytes([len(cn)]) + b"@" + cn[1:].encode()

    def edit(tbs: bytes) -> bytes:
        # The subject follows the issuer; the last occurrence is the subject's CN.
        index = tbs.rindex(utf8)
        return tbs[:index] + bad + tbs[index + len(bad) :]

    return resign(der, ca, edit)


def duplicate_extension(der: bytes, ca: CertifiedKey) -> bytes:
    """``der`` with its last extension twice: cryptography loads it, and raises
    DuplicateExtension only when the extensions are first read."""

    def edit(tbs_bytes: bytes) -> bytes:
        tbs = asn1_x509.TbsCertificate.load(tbs_bytes)
        extensions = list(tbs["extensions"])
        tbs["extensions"] = asn1_x509.Extensions(
            [e.copy() for e in extensions] + [extensions[-1].copy()]
        )
        return tbs.dump(force=True)

    return resign(der, ca, edit)


def unknown_key_algorithm(der: bytes, ca: CertifiedKey) -> bytes:
    """``der`` (an EC key) with its key's algorithm OID changed to one nobody knows:
    cryptography loads the certificate and refuses only its public_key()."""
    ec_public_key = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey

    def edit(tbs: bytes) -> bytes:
        return tbs.replace(ec_public_key, bytes.fromhex("06072a8648ce3d0209"), 1)

    return resign(der, ca, edit)


def pem(der: bytes) -> bytes:
    return x509_pem("CERTIFICATE", der)


def x509_pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode()


# -- OCSP -----------------------------------------------------------------------------------


def ocsp_request(issuer: x509.Certificate, serial: int) -> bytes:
    """A DER OCSP request for ``serial`` under ``issuer`` (any integer, negative too)."""
    name_hash = sha1(issuer.subject.public_bytes())
    spki = asn1_x509.Certificate.load(issuer.public_bytes(serialization.Encoding.DER))
    key_hash = sha1(spki.public_key["public_key"].contents[1:])
    request = asn1_ocsp.OCSPRequest(
        {
            "tbs_request": {
                "request_list": [
                    {
                        "req_cert": {
                            "hash_algorithm": {"algorithm": "sha1"},
                            "issuer_name_hash": name_hash,
                            "issuer_key_hash": key_hash,
                            "serial_number": serial,
                        }
                    }
                ]
            }
        }
    )
    der: bytes = request.dump()
    return der


def sha1(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - OCSP CertID hashes are SHA-1
    digest.update(data)
    return digest.finalize()


# -- seeded mutation ------------------------------------------------------------------------

_INTERESTING = (0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0x82, 0xFF, 0x13, 0x0C, 0x30, 0xA0)


class Mutator:
    """Seeded byte-level and DER-aware mutations: the same seed gives the same inputs."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)

    def mutate(self, data: bytes, rounds: int | None = None) -> bytes:
        out = bytearray(data)
        for _ in range(rounds if rounds is not None else self.rng.randint(1, 4)):
            if not out:
                out.append(self.rng.randrange(256))
                continue
            self.rng.choice(self._operations)(self, out)
        return bytes(out)

    def _flip_bit(self, out: bytearray) -> None:
        index = self.rng.randrange(len(out))
        out[index] ^= 1 << self.rng.randrange(8)

    def _set_byte(self, out: bytearray) -> None:
        out[self.rng.randrange(len(out))] = self.rng.choice(_INTERESTING)

    def _random_byte(self, out: bytearray) -> None:
        out[self.rng.randrange(len(out))] = self.rng.randrange(256)

    def _insert(self, out: bytearray) -> None:
        index = self.rng.randrange(len(out) + 1)
        out[index:index] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 4)))

    def _delete(self, out: bytearray) -> None:
        index = self.rng.randrange(len(out))
        del out[index : index + self.rng.randint(1, 8)]

    def _truncate(self, out: bytearray) -> None:
        del out[self.rng.randrange(len(out)) :]

    def _duplicate(self, out: bytearray) -> None:
        start = self.rng.randrange(len(out))
        chunk = out[start : start + self.rng.randint(1, 32)]
        index = self.rng.randrange(len(out) + 1)
        out[index:index] = chunk

    def _small_integer(self, out: bytearray) -> None:
        # DER INTEGERs of one octet (versions, small serials): set a tricky value.
        positions = [i for i in range(len(out) - 2) if out[i] == 0x02 and out[i + 1] == 0x01]
        if positions:
            out[self.rng.choice(positions) + 2] = self.rng.choice(_INTERESTING)

    def _retag_string(self, out: bytearray) -> None:
        # UTF8String <-> PrintableString / IA5String / BMPString / T61String.
        positions = [i for i, b in enumerate(out) if b in (0x0C, 0x13, 0x16, 0x1E, 0x14)]
        if positions:
            out[self.rng.choice(positions)] = self.rng.choice((0x0C, 0x13, 0x16, 0x1E, 0x14))

    _operations: tuple[Callable[[Mutator, bytearray], None], ...] = (
        _flip_bit,
        _set_byte,
        _random_byte,
        _insert,
        _delete,
        _truncate,
        _duplicate,
        _small_integer,
        _small_integer,
        _retag_string,
        _retag_string,
    )
