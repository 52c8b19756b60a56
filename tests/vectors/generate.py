"""Build the trust vectors' CA hierarchy and every case's leaf certificate and key.

Usage (from the repository root)::

    python -m tests.vectors.generate OUT_DIR [--now 2026-06-01T12:00:00Z] [--seed N]

The table (``trust_cases.toml`` beside this file) says what each certificate
looks like relative to "now"; this script makes them. "now" defaults to the
real time, because real brokers check validity against the real clock: run it
right before the brokers are asked. The output is::

    OUT_DIR/ca/<name>.pem, <name>.key     root, issuing, issuing-2, admin, rogue-root,
                                          impostor-issuing, root-2, issuing-r2,
                                          link-root-2, rogue-link-root-2
    OUT_DIR/server.pem, server.key        a broker TLS certificate (127.0.0.1, localhost)
    OUT_DIR/issuers.pem                   the trusted issuing CAs, in table order
    OUT_DIR/anchors.pem                   the trusted roots, in table order
    OUT_DIR/bundle.pem                    issuing CAs + anchors (a broker's CA bundle)
    OUT_DIR/leaves/<case id>.pem, .key    the leaf followed by its issuer (what a client sends)
    OUT_DIR/vectors.json                  case id -> serial (hex), device id, paths; seed, now

Serial numbers come from a seeded PRNG (the seed is printed and recorded);
keys come from the operating system's RNG and are not reproducible. Keys are
shared between leaves of the same key type (one RSA-4096 key is enough), which
no check depends on.

Importable: :func:`load_table` parses and checks the table, :func:`generate`
writes the files and returns a :class:`Generated`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import json
import random
import re
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.reasons import BROKER_REFUSALS

TABLE = Path(__file__).with_name("trust_cases.toml")
TABLE_VERSION = 1

# Every reason an admission case may expect: the broker refusal codes that a
# client can cause from outside (fleet.kernel.reasons.BROKER_REFUSALS minus
# issuer_expired, sidecar_pin_mismatch and internal_error; see README.md).
# An admission case expects "allow" or one of the codes a broker refuses with.
ADMISSION_OUTCOMES = frozenset({"allow", *(reason.value for reason in BROKER_REFUSALS)})
# Codes no client can cause with a certificate and a CONNECT (README: "Not in the table").
NOT_FROM_OUTSIDE = frozenset({"issuer_expired", "sidecar_pin_mismatch", "internal_error"})
# The ASN.1 string types a CN is written in: decoders must read the text, not the bytes.
CN_TYPES = {
    "utf8": _ASN1Type.UTF8String,
    "printable": _ASN1Type.PrintableString,
    "bmp": _ASN1Type.BMPString,
    "universal": _ASN1Type.UniversalString,
}
REVOCATION_STATES = frozenset({"certificate", "device", "stale"})
ENFORCERS = frozenset({"amqtt", "mosquitto"})
CA_NAMES = (
    "root", "issuing", "issuing-2", "admin", "rogue-root", "impostor-issuing",
    "root-2", "issuing-r2", "link-root-2", "rogue-link-root-2",
)  # fmt: skip
# A CA-bundle case judges a certificate of the hierarchy or its own "candidate".
CANDIDATE = "candidate"
BUNDLE_OUTCOMES = frozenset({"adopt", "unknown_issuer", "not_a_ca", "ca_expired",
                             "root_not_certified"})  # fmt: skip
KEY_TYPES = frozenset(
    {"ec-p256", "ec-p384", "ec-p521", "ed25519", "ed448", "rsa-1024", "rsa-2048", "rsa-3072",
     "rsa-4096"}
)  # fmt: skip
EKUS = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "anyExtendedKeyUsage": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}
ACL_OPS = frozenset({"publish", "subscribe", "will"})
_DURATION = re.compile(r"([+-]?)(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TableError(ValueError):
    """The vector table is malformed."""


def parse_offset(text: str) -> dt.timedelta:
    """``"-7m"`` -> -7 minutes; units s, m, h, d."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise TableError(f"offset {text!r} must look like -7m, +30d, 0s")
    sign, amount, unit = match.groups()
    seconds = int(amount) * _UNITS[unit]
    return dt.timedelta(seconds=-seconds if sign == "-" else seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class CertSpec:
    issuer: str = "issuing"
    cns: tuple[str, ...] = ()
    key: str = "ec-p256"
    not_before: str = "-1h"
    not_after: str = "+30d"
    eku: tuple[str, ...] = ("clientAuth",)
    ca: bool = False
    cn_type: str = "utf8"  # the CN's ASN.1 string type (CN_TYPES)


@dataclasses.dataclass(frozen=True, slots=True)
class AdmissionCase:
    id: str
    description: str
    cert: CertSpec | None  # None: the client presents no certificate
    client_id: str
    revocation: tuple[str, ...]
    expect: str
    tls_layer: dict[str, str]  # enforcer -> why its TLS layer refuses before the plugin

    @property
    def device_id(self) -> str | None:
        """The CN, when there is exactly one (what revocation records are keyed by)."""
        if self.cert is None or len(self.cert.cns) != 1:
            return None
        return self.cert.cns[0]


@dataclasses.dataclass(frozen=True, slots=True)
class AclCase:
    id: str
    description: str
    op: str
    topic: str  # {self} and {other} already substituted
    qos: int
    retain: bool
    expect: str  # allow | deny
    observable: bool
    note: str


@dataclasses.dataclass(frozen=True, slots=True)
class CandidateSpec:
    """A CA certificate made for one CA-bundle case (the table's ``candidate``)."""

    issuer: str = "root"
    ca: bool = True
    path_length: int | None = 0  # None: no pathLenConstraint (the table writes -1)
    not_before: str = "-1d"
    not_after: str = "+3650d"


@dataclasses.dataclass(frozen=True, slots=True)
class BundleCase:
    id: str
    description: str
    offered: tuple[str, ...]  # CA names (and maybe CANDIDATE), added to the table's answer
    candidate: CandidateSpec | None
    subject: str  # the certificate judged: a CA name or CANDIDATE
    expect: str  # "adopt" or the reason it is dropped with


@dataclasses.dataclass(frozen=True, slots=True)
class Table:
    version: int
    issuers: tuple[str, ...]
    anchors: tuple[str, ...]
    skew_seconds: int
    acl_templates: tuple[str, ...]
    acl_self: str
    acl_other: str
    admission: tuple[AdmissionCase, ...]
    acl: tuple[AclCase, ...]
    bundle_current: tuple[str, ...] = ()  # a /cacerts follower's bundle before each answer
    bundle_answer: tuple[str, ...] = ()  # what every /cacerts answer of the cases holds
    ca_bundle: tuple[BundleCase, ...] = ()

    def case(self, case_id: str) -> AdmissionCase:
        for case in self.admission:
            if case.id == case_id:
                return case
        raise KeyError(case_id)


def _cert_spec(raw: dict[str, Any], where: str) -> CertSpec:
    known = {"issuer", "cn", "cns", "key", "not_before", "not_after", "eku", "ca", "cn_type"}
    if set(raw) - known:
        raise TableError(f"{where}: unknown cert fields {sorted(set(raw) - known)}")
    if ("cn" in raw) == ("cns" in raw):
        raise TableError(f"{where}: give exactly one of cn (one CN) or cns (a list, maybe empty)")
    cns = (raw["cn"],) if "cn" in raw else tuple(raw["cns"])
    spec = CertSpec(
        issuer=raw.get("issuer", "issuing"),
        cns=cns,
        key=raw.get("key", "ec-p256"),
        not_before=raw.get("not_before", "-1h"),
        not_after=raw.get("not_after", "+30d"),
        eku=tuple(raw.get("eku", ("clientAuth",))),
        ca=bool(raw.get("ca", False)),
        cn_type=raw.get("cn_type", "utf8"),
    )
    if spec.cn_type not in CN_TYPES:
        raise TableError(f"{where}: cn_type {spec.cn_type!r} is not one of {sorted(CN_TYPES)}")
    if spec.issuer not in CA_NAMES:
        raise TableError(f"{where}: issuer {spec.issuer!r} is not one of {CA_NAMES}")
    if spec.key not in KEY_TYPES:
        raise TableError(f"{where}: key {spec.key!r} is not one of {sorted(KEY_TYPES)}")
    if set(spec.eku) - set(EKUS):
        raise TableError(f"{where}: eku must be among {sorted(EKUS)}")
    parse_offset(spec.not_before)
    parse_offset(spec.not_after)
    return spec


def _bundle_case(raw: dict[str, Any], case_id: str) -> BundleCase:
    offered = tuple(raw["offered"])
    names = {*CA_NAMES, CANDIDATE}
    if set(offered) - names or raw["subject"] not in names:
        raise TableError(f"{case_id}: offered and subject name CAs of {CA_NAMES} or {CANDIDATE!r}")
    if raw["expect"] not in BUNDLE_OUTCOMES:
        raise TableError(f"{case_id}: expect is one of {sorted(BUNDLE_OUTCOMES)}")
    candidate = None
    if "candidate" in raw:
        fields = dict(raw["candidate"])
        if fields.get("path_length") == -1:
            fields["path_length"] = None
        candidate = CandidateSpec(**fields)
        if candidate.issuer not in CA_NAMES:
            raise TableError(f"{case_id}: candidate issuer {candidate.issuer!r} is not a CA name")
        parse_offset(candidate.not_before)
        parse_offset(candidate.not_after)
    if (candidate is None) == (CANDIDATE in offered or raw["subject"] == CANDIDATE):
        raise TableError(f"{case_id}: a candidate is described exactly when one is offered")
    return BundleCase(
        id=case_id,
        description=raw["description"],
        offered=offered,
        candidate=candidate,
        subject=raw["subject"],
        expect=raw["expect"],
    )


def load_table(path: Path = TABLE) -> Table:
    """Parse and check the table (ids unique, outcomes known, TLS exceptions explained)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    if data.get("version") != TABLE_VERSION:
        raise TableError(f"{path}: version {data.get('version')!r}, expected {TABLE_VERSION}")
    trust = data["trust"]
    acl_cfg = data["acl_devices"]
    seen: set[str] = set()

    def new_id(case_id: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", case_id) or case_id in seen:
            raise TableError(f"case id {case_id!r} is malformed or repeated")
        seen.add(case_id)
        return case_id

    admission = []
    for raw in data["admission"]:
        case_id = new_id(raw["id"])
        expect = raw["expect"]
        if expect not in ADMISSION_OUTCOMES:
            raise TableError(f"{case_id}: expect {expect!r} is not a known outcome")
        revocation = tuple(raw.get("revocation", ()))
        if set(revocation) - REVOCATION_STATES:
            raise TableError(f"{case_id}: revocation states are {sorted(REVOCATION_STATES)}")
        tls_layer = dict(raw.get("tls_layer", {}))
        if set(tls_layer) - ENFORCERS or not all(tls_layer.values()):
            raise TableError(f"{case_id}: tls_layer maps {sorted(ENFORCERS)} to an explanation")
        if tls_layer and expect == "allow":
            # A TLS refusal of a case the kernel allows is a disagreement, not an exception.
            raise TableError(f"{case_id}: an allowed case cannot be excused at the TLS layer")
        cert = _cert_spec(raw["cert"], case_id) if "cert" in raw else None
        admission.append(
            AdmissionCase(
                id=case_id,
                description=raw["description"],
                cert=cert,
                client_id=raw["client_id"],
                revocation=revocation,
                expect=expect,
                tls_layer=tls_layer,
            )
        )
    acl = []
    names = {"self": acl_cfg["self"], "other": acl_cfg["other"]}
    for raw in data["acl"]:
        case_id = new_id(raw["id"])
        if raw["op"] not in ACL_OPS or raw["expect"] not in ("allow", "deny"):
            raise TableError(f"{case_id}: op must be one of {sorted(ACL_OPS)}, expect allow/deny")
        observable = bool(raw.get("observable", True))
        if not observable and not raw.get("note"):
            raise TableError(f"{case_id}: an unobservable case needs a note saying why")
        acl.append(
            AclCase(
                id=case_id,
                description=raw["description"],
                op=raw["op"],
                topic=raw["topic"].format(**names),
                qos=int(raw.get("qos", 1)),
                retain=bool(raw.get("retain", False)),
                expect=raw["expect"],
                observable=observable,
                note=raw.get("note", ""),
            )
        )
    ca_bundle = tuple(_bundle_case(raw, new_id(raw["id"])) for raw in data.get("ca_bundle", ()))
    bundle_trust = data.get("bundle_trust", {})
    return Table(
        version=data["version"],
        issuers=tuple(trust["issuers"]),
        anchors=tuple(trust["anchors"]),
        skew_seconds=int(trust["skew_seconds"]),
        acl_templates=tuple(trust["acl_templates"]),
        acl_self=names["self"],
        acl_other=names["other"],
        admission=tuple(admission),
        acl=tuple(acl),
        bundle_current=tuple(bundle_trust.get("current", ())),
        bundle_answer=tuple(bundle_trust.get("answer", ())),
        ca_bundle=ca_bundle,
    )


# -- certificates ------------------------------------------------------------------------


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


def _name(*pairs: tuple[x509.ObjectIdentifier, str], cn_type: str = "utf8") -> x509.Name:
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


class _Minter:
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
            .subject_name(_name(*attrs, cn_type=spec.cn_type))
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
            .subject_name(_name((NameOID.COMMON_NAME, "127.0.0.1")))
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


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Leaf:
    chain: Path  # leaf PEM followed by its issuer's
    key: Path
    cert: x509.Certificate

    @property
    def serial_hex(self) -> str:
        return f"{self.cert.serial_number:x}"


@dataclasses.dataclass(frozen=True, slots=True)
class Generated:
    directory: Path
    now: dt.datetime
    seed: int
    cas: dict[str, x509.Certificate]
    leaves: dict[str, Leaf]  # admission case id, and "acl-self" / "acl-other"
    server_cert: Path
    server_key: Path
    root: Path  # what clients trust for the broker's server certificate
    issuers: Path  # the trusted issuing CAs (PEM, table order)
    anchors: Path  # the trusted roots (PEM, table order: both roots of the rollover overlap)
    bundle: Path  # issuing CAs + anchors: what a broker's TLS layer trusts
    candidates: dict[str, x509.Certificate]  # CA-bundle case id -> its candidate CA

    def ca_path(self, name: str) -> Path:
        return self.directory / "ca" / f"{name}.pem"

    def ca_key_path(self, name: str) -> Path:
        return self.directory / "ca" / f"{name}.key"


def generate(
    out: Path,
    *,
    now: dt.datetime | None = None,
    seed: int | None = None,
    table: Table | None = None,
) -> Generated:
    """Write the hierarchy and every leaf of ``table`` into ``out``; see the module docstring."""
    table = table or load_table()
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    mint = _Minter(now, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca").mkdir(exist_ok=True)
    (out / "leaves").mkdir(exist_ok=True)

    org = (NameOID.ORGANIZATION_NAME, "fleet vectors")
    root_name = _name(org, (NameOID.COMMON_NAME, "fleet root CA"))
    issuing_name = _name(org, (NameOID.COMMON_NAME, "fleet issuing CA"))
    cas: dict[str, Issued] = {}
    cas["root"] = mint.ca(root_name, None, 1)
    cas["issuing"] = mint.ca(issuing_name, cas["root"], 0)
    cas["issuing-2"] = mint.ca(
        _name(org, (NameOID.COMMON_NAME, "fleet issuing CA 2")), cas["root"], 0
    )
    cas["admin"] = mint.ca(_name(org, (NameOID.COMMON_NAME, "fleet admin CA")), cas["root"], 0)
    # Impostors: same names as the real root and issuing CA, other keys.
    cas["rogue-root"] = mint.ca(root_name, None, 1)
    cas["impostor-issuing"] = mint.ca(issuing_name, cas["rogue-root"], 0)
    # Root rollover: a new root with the fleet root's name and a new key, its issuing CA,
    # the OldWithNew link (the new root's name and key, signed by the old root) and a link
    # for it that the rogue root signed.
    cas["root-2"] = mint.ca(root_name, None, 1)
    cas["issuing-r2"] = mint.ca(
        _name(org, (NameOID.COMMON_NAME, "fleet issuing CA R2")), cas["root-2"], 0
    )
    cas["link-root-2"] = mint.ca(root_name, cas["root"], 1, key=cas["root-2"].key)
    cas["rogue-link-root-2"] = mint.ca(root_name, cas["rogue-root"], 1, key=cas["root-2"].key)
    for name, issued in cas.items():
        (out / "ca" / f"{name}.pem").write_bytes(_pem(issued.cert))
        _write_key(out / "ca" / f"{name}.key", issued.key)

    server = mint.server(cas["root"])
    (out / "server.pem").write_bytes(_pem(server.cert) + _pem(cas["root"].cert))
    _write_key(out / "server.key", server.key)
    issuers = out / "issuers.pem"
    issuers.write_bytes(b"".join(_pem(cas[n].cert) for n in table.issuers))
    anchors = out / "anchors.pem"
    anchors.write_bytes(b"".join(_pem(cas[n].cert) for n in table.anchors))
    bundle = out / "bundle.pem"
    bundle.write_bytes(b"".join(_pem(cas[n].cert) for n in (*table.issuers, *table.anchors)))
    candidates: dict[str, x509.Certificate] = {}
    for bundle_case in table.ca_bundle:
        spec = bundle_case.candidate
        if spec is not None:
            candidates[bundle_case.id] = mint.ca(
                _name(org, (NameOID.COMMON_NAME, f"candidate {bundle_case.id}")),
                cas[spec.issuer], spec.path_length, is_ca=spec.ca,
                not_before=spec.not_before, not_after=spec.not_after,
            ).cert  # fmt: skip

    specs: dict[str, CertSpec] = {c.id: c.cert for c in table.admission if c.cert is not None}
    specs["acl-self"] = CertSpec(cns=(table.acl_self,))
    specs["acl-other"] = CertSpec(cns=(table.acl_other,))
    leaves: dict[str, Leaf] = {}
    for case_id, spec in specs.items():
        issuer = cas[spec.issuer]
        issued = mint.leaf(spec, issuer)
        chain, key = out / "leaves" / f"{case_id}.pem", out / "leaves" / f"{case_id}.key"
        chain.write_bytes(_pem(issued.cert) + _pem(issuer.cert))
        _write_key(key, issued.key)
        leaves[case_id] = Leaf(chain, key, issued.cert)

    manifest = {
        "version": table.version,
        "now": now.isoformat(),
        "seed": seed,
        "leaves": {
            case_id: {"serial": leaf.serial_hex, "chain": leaf.chain.name, "key": leaf.key.name}
            for case_id, leaf in leaves.items()
        },
    }
    (out / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Generated(
        directory=out,
        now=now,
        seed=seed,
        cas={name: issued.cert for name, issued in cas.items()},
        leaves=leaves,
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        root=out / "ca" / "root.pem",
        issuers=issuers,
        anchors=anchors,
        bundle=bundle,
        candidates=candidates,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write into")
    parser.add_argument("--now", help="ISO 8601 instant (default: the real time)")
    parser.add_argument("--seed", type=int, help="serial-number seed (default: random, printed)")
    args = parser.parse_args(argv)
    now = dt.datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now else None
    generated = generate(args.out, now=now, seed=args.seed)
    table = load_table()
    print(
        f"trust vectors v{table.version}: {len(table.admission)} admission + {len(table.acl)} ACL "
        f"+ {len(table.ca_bundle)} CA-bundle cases, now={generated.now.isoformat()} "
        f"seed={generated.seed} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
