"""Trust domains never overlap: the one rule, tested directly."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fleet.kernel.domains import FleetAuthorities, check_manufacturer_ca
from fleet.kernel.errors import TrustDomainsMixed
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def fleet_pki() -> tuple[CertifiedKey, CertifiedKey, CertifiedKey, FleetAuthorities]:
    root = create_root_ca("fleet root CA", now=NOW)
    issuing = create_issuing_ca(root, "fleet issuing CA", now=NOW)
    admin = create_issuing_ca(root, "fleet admin CA", now=NOW)
    authorities = FleetAuthorities(
        roots=(root.certificate,), issuing=(issuing.certificate,), admin=(admin.certificate,)
    )
    return root, issuing, admin, authorities


def _same_key_new_certificate(ca: CertifiedKey) -> x509.Certificate:
    """Another self-signed certificate for the same key (a re-issued or disguised CA)."""
    name = x509.Name.from_rfc4514_string("CN=Acme Devices CA")
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(ca.private_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca.private_key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip


def test_each_fleet_ca_is_refused_as_manufacturer(fleet_pki) -> None:  # type: ignore[no-untyped-def]
    root, issuing, admin, authorities = fleet_pki
    for ca, domain in ((root, "fleet root"), (issuing, "fleet issuing"), (admin, "admin")):
        with pytest.raises(TrustDomainsMixed, match=f"this fleet's {domain} CA") as caught:
            check_manufacturer_ca(ca.certificate, authorities)
        assert caught.value.reason == "trust_domains_mixed"


def test_a_fleet_key_under_another_certificate_is_refused(fleet_pki) -> None:  # type: ignore[no-untyped-def]
    _, _, admin, authorities = fleet_pki
    with pytest.raises(TrustDomainsMixed, match="admin CA"):
        check_manufacturer_ca(_same_key_new_certificate(admin), authorities)


def test_a_ca_under_the_fleet_root_is_refused(fleet_pki) -> None:  # type: ignore[no-untyped-def]
    root, _, _, authorities = fleet_pki
    sub = create_issuing_ca(root, "sneaky sub-CA", now=NOW)
    with pytest.raises(TrustDomainsMixed, match="was issued by this fleet's CA"):
        check_manufacturer_ca(sub.certificate, authorities)


def test_a_ca_above_a_fleet_ca_is_refused() -> None:
    outer = create_root_ca("cross-signing root", now=NOW)
    fleet_under_outer = create_issuing_ca(outer, "fleet issuing CA", now=NOW)
    own_root = create_root_ca("fleet root CA", now=NOW)
    authorities = FleetAuthorities(
        roots=(own_root.certificate,), issuing=(fleet_under_outer.certificate,)
    )
    with pytest.raises(TrustDomainsMixed, match="issued this fleet's CA"):
        check_manufacturer_ca(outer.certificate, authorities)


def test_a_foreign_manufacturer_ca_passes(fleet_pki) -> None:  # type: ignore[no-untyped-def]
    _, _, _, authorities = fleet_pki
    acme = create_root_ca("Acme Devices CA", now=NOW)
    check_manufacturer_ca(acme.certificate, authorities)
    check_manufacturer_ca(create_issuing_ca(acme, "Acme plant 7", now=NOW).certificate, authorities)


def test_fleet_configuration_may_not_put_one_ca_in_two_domains(fleet_pki) -> None:  # type: ignore[no-untyped-def]
    root, issuing, _, _ = fleet_pki
    with pytest.raises(TrustDomainsMixed, match="both as fleet issuing CA and as admin CA"):
        FleetAuthorities(
            roots=(root.certificate,), issuing=(issuing.certificate,), admin=(issuing.certificate,)
        )
