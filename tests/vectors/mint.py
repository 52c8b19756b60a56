"""Minting the trust vectors' certificates: keys, names, CAs, leaves, the broker's own.

Serial numbers come from a seeded PRNG, drawn in the order the generator asks
for certificates (so the same seed gives the same serials); keys come from the
operating system's RNG. Keys of leaves are shared per key type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import random
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.vectors.table import CN_TYPES, EKUS, CertSpec, parse_offset

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


def _new_key(key_type: str) -> PrivateKey:
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(65537, int(key_type.removeprefix("rsa-")))
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ed448":
        return ed448.Ed448PrivateKey.generate()
    curve = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1(), "ec-p521": ec.SECP521R1()}
    return ec.generate_private_key(curve[key_type])


def x509_name(*pairs: tuple[x509.ObjectIdentifier, str], cn_type: str = "utf8") -> x509.Name:
    string_type = CN_TYPES[cn_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # over-long and empty CNs are cases
        return x509.Name(
            [
                x509.NameAttribute(
                    oid, value, _validate=False,
                    _type=string_type if oid == NameOID.COMMON_NAME else _ASN1Type.UTF8String,
                )
                for oid, value in pairs
            ]
        )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey


class Minter:
    def __init__(self, now: dt.datetime, seed: int) -> None:
        self.now = now
        self.rng = random.Random(seed)
        self.keys: dict[str, PrivateKey] = {}

    def serial(self) -> int:
        return self.rng.getrandbits(152) | (1 << 152)  # positive, 20 octets, never clashing

    def key(self, key_type: str) -> PrivateKey:
        if key_type not in self.keys:
            self.keys[key_type] = _new_key(key_type)
        return self.keys[key_type]

    def ca(
        self,
        subject: x509.Name,
        issuer: Issued | None,
        path_length: int | None,
        *,
        is_ca: bool = True,
        not_before: str = "-1d",
        not_after: str = "+3650d",
        key: PrivateKey | None = None,
    ) -> Issued:
        """A CA certificate (``key``: an existing CA's key, for a link certificate)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(self.serial())
            .not_valid_before(self.now + parse_offset(not_before))
            .not_valid_after(self.now + parse_offset(not_after))
            .add_extension(
                x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None),
                critical=True,
            )
            .add_extension(
                x509.KeyUsage(not is_ca, False, False, False, False, is_ca, is_ca, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        signer = issuer.key if issuer else key
        if issuer:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        return Issued(builder.sign(signer, hashes.SHA256()), key)  # type: ignore[arg-type]

    def leaf(self, spec: CertSpec, issuer: Issued) -> Issued:
        key = self.key(spec.key)
        attrs: list[tuple[x509.ObjectIdentifier, str]] = [
            (NameOID.ORGANIZATION_NAME, "fleet vectors")
        ]
        attrs += [(NameOID.COMMON_NAME, cn) for cn in spec.cns]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509_name(*attrs, cn_type=spec.cn_type))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(self.serial())
            .not_valid_before(self.now + parse_offset(spec.not_before))
            .not_valid_after(self.now + parse_offset(spec.not_after))
            .add_extension(x509.BasicConstraints(ca=spec.ca, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(spec), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if spec.eku:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([EKUS[e] for e in spec.eku]), critical=False
            )
        return Issued(builder.sign(issuer.key, hashes.SHA256()), key)  # type: ignore[arg-type]

    def server(self, issuer: Issued) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509_name((NameOID.COMMON_NAME, "127.0.0.1")))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(self.serial())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return Issued(cert, key)


def _leaf_key_usage(spec: CertSpec) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=spec.key.startswith("rsa-"),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=spec.ca,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
