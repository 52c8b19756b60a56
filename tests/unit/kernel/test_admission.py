from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.admission import Allow, Deny, TrustPolicy, admit_client

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
KEY = ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(
    cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


ROOT = _ca("root")
ISSUING = _ca("issuing", ROOT)
SIBLING = _ca("admin", ROOT)
POLICY = TrustPolicy.from_bundle([ISSUING[0], ROOT[0]])


def leaf(
    cn: str = "dev-1",
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] = ISSUING,
    not_after: dt.datetime = NOW + dt.timedelta(days=30),
    eku: bool = True,
    serial: int = 1234,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer[0].subject)
        .public_key(KEY.public_key()).serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )  # fmt: skip
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer[1], hashes.SHA256())


@dataclasses.dataclass
class View:
    serials: frozenset[int] = frozenset()
    devices: frozenset[str] = frozenset()
    fresh: bool = True

    def is_revoked(self, serial: int) -> bool:
        return serial in self.serials

    def is_device_revoked(self, device_id: str) -> bool:
        return device_id in self.devices

    def usable(self) -> bool:
        return self.fresh


def decide(
    cert: x509.Certificate | None, client_id: str = "dev-1", view: View | None = None
) -> Allow | Deny:
    return admit_client(cert, client_id, revocations=view or View(), policy=POLICY, now=NOW)


def reason(decision: Allow | Deny) -> str:
    assert isinstance(decision, Deny), decision
    return decision.reason.value


def test_valid_device_is_allowed() -> None:
    assert decide(leaf()) == Allow("dev-1", 1234)


def test_policy_splits_issuers_from_anchors() -> None:
    assert POLICY.issuers == (ISSUING[0],)
    assert POLICY.anchors == (ROOT[0],)


@pytest.mark.parametrize(
    ("cert", "client_id", "view", "expected"),
    [
        (None, "dev-1", View(), "no_certificate"),
        (leaf(issuer=SIBLING), "dev-1", View(), "unknown_issuer"),
        (leaf(issuer=ROOT), "dev-1", View(), "unknown_issuer"),
        (leaf(not_after=NOW - dt.timedelta(minutes=6)), "dev-1", View(), "certificate_expired"),
        (leaf(eku=False), "dev-1", View(), "not_client_cert"),
        (leaf("dev/x"), "dev/x", View(), "device_id_invalid"),
        (leaf("dev#"), "dev#", View(), "device_id_invalid"),
        (leaf("Admin"), "Admin", View(), "device_id_invalid"),
        (leaf(), "dev-2", View(), "client_id_mismatch"),
        (leaf(), "dev-1", View(serials=frozenset({1234})), "certificate_revoked"),
        (leaf(), "dev-1", View(devices=frozenset({"dev-1"})), "device_revoked"),
        (leaf(), "dev-1", View(fresh=False), "revocation_state_stale"),
    ],
)
def test_refusals(cert: x509.Certificate | None, client_id: str, view: View, expected: str) -> None:
    assert reason(decide(cert, client_id, view)) == expected


def test_expiry_inside_the_skew_is_forgiven() -> None:
    assert isinstance(decide(leaf(not_after=NOW - dt.timedelta(minutes=4))), Allow)


def test_refusal_carries_device_id_and_serial() -> None:
    denied = decide(leaf(), "dev-2")
    assert isinstance(denied, Deny)
    assert denied.device_id == "dev-1"
    assert denied.serial == 1234
