"""The trust vectors' table: its cases as typed objects, parsed and checked.

``trust_cases.toml`` beside this file says what each certificate looks like
relative to "now" and what every enforcer must answer; :func:`load_table`
reads it and refuses a malformed one (:class:`TableError`). The certificates
are made by tests.vectors.generate (with tests.vectors.mint).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import tomllib
from pathlib import Path
from typing import Any

from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID

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
