"""Link certificates of a root rollover, checked by OpenSSL with only the OLD root trusted."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fleet.kernel.admission import Allow, TrustPolicy, admit_client
from fleet.kernel.errors import PolicyError
from fleet.kernel.rollover import follow_rollover, is_link_for
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca
from fleet.pki.issuance import issue_device_certificate
from fleet.pki.keys import generate_private_key
from fleet.pki.profile import DeviceProfile
from fleet.pki.rollover import roll_root
from tests.unit.pki.helpers import PKI_NOW, make_csr, openssl_verify

SKEW = dt.timedelta(minutes=5)


@pytest.fixture(scope="module")
def old_root() -> CertifiedKey:
    return create_root_ca("fleet root CA", now=PKI_NOW - dt.timedelta(days=400))


def test_links_carry_the_right_names_keys_and_signers(old_root: CertifiedKey) -> None:
    rolled = roll_root(old_root, now=PKI_NOW, overlap=dt.timedelta(days=90))
    new = rolled.new_root.certificate
    assert new.subject == old_root.certificate.subject  # self-issued links (RFC 4210 section 4.4)
    assert new.public_key() != old_root.certificate.public_key()
    assert is_link_for(rolled.old_with_new, new)
    rolled.old_with_new.verify_directly_issued_by(old_root.certificate)
    assert is_link_for(rolled.new_with_old, old_root.certificate)
    rolled.new_with_old.verify_directly_issued_by(new)
    for link in rolled.links:  # the links last exactly the overlap
        assert link.not_valid_after_utc == PKI_NOW.replace(microsecond=0) + dt.timedelta(days=90)
    lifetime = old_root.certificate.not_valid_after_utc - old_root.certificate.not_valid_before_utc
    assert new.not_valid_after_utc - new.not_valid_before_utc == lifetime


def test_openssl_reaches_a_device_under_the_new_root_from_the_old_root_alone(
    old_root: CertifiedKey, tmp_path: Path
) -> None:
    rolled = roll_root(old_root, now=PKI_NOW)
    issuing = create_issuing_ca(rolled.new_root, "issuing under R2", now=PKI_NOW)
    leaf = issue_device_certificate(
        make_csr(generate_private_key()), device_id="dev-1", issuer=issuing,
        profile=DeviceProfile(), now=PKI_NOW,
    )  # fmt: skip
    # The old root is the only trust anchor; OldWithNew and the issuing CA are untrusted.
    out = openssl_verify(
        tmp_path, roots=[old_root.certificate],
        untrusted=[rolled.old_with_new, issuing.certificate], leaf=leaf,
        now=PKI_NOW + dt.timedelta(days=1), extra=["-x509_strict"],
    )  # fmt: skip
    assert "OK" in out
    # Without the link the same chain does not verify: the link is what carries trust.
    refused = openssl_verify(
        tmp_path, roots=[old_root.certificate], untrusted=[issuing.certificate], leaf=leaf,
        now=PKI_NOW + dt.timedelta(days=1), check=False,
    )  # fmt: skip
    assert "OK" not in refused.splitlines()[-1]
    # The other way round: the new root alone reaches the old root's issuing CA via NewWithOld.
    old_issuing = create_issuing_ca(old_root, "issuing under R1", now=PKI_NOW)
    out = openssl_verify(
        tmp_path, roots=[rolled.new_root.certificate],
        untrusted=[rolled.new_with_old], leaf=old_issuing.certificate,
        now=PKI_NOW + dt.timedelta(days=1), extra=["-x509_strict"],
    )  # fmt: skip
    assert "OK" in out


def test_openssl_refuses_the_link_after_the_overlap(old_root: CertifiedKey, tmp_path: Path) -> None:
    rolled = roll_root(old_root, now=PKI_NOW, overlap=dt.timedelta(days=30))
    issuing = create_issuing_ca(rolled.new_root, "issuing under R2", now=PKI_NOW)
    out = openssl_verify(
        tmp_path, roots=[old_root.certificate], untrusted=[rolled.old_with_new],
        leaf=issuing.certificate, now=PKI_NOW + dt.timedelta(days=31), check=False,
    )  # fmt: skip
    assert "expired" in out


def test_the_kernel_accepts_what_roll_root_makes(old_root: CertifiedKey) -> None:
    rolled = roll_root(old_root, now=PKI_NOW)
    offered = [rolled.new_root.certificate, old_root.certificate, *rolled.links]
    result = follow_rollover([old_root.certificate], offered, now=PKI_NOW, skew=SKEW)
    assert result.accepted == (rolled.new_root.certificate,)
    assert result.pin == rolled.new_root.certificate


def test_a_link_never_outlives_the_old_root(old_root: CertifiedKey) -> None:
    rolled = roll_root(old_root, now=PKI_NOW, overlap=dt.timedelta(days=100 * 365))
    assert rolled.old_with_new.not_valid_after_utc == old_root.certificate.not_valid_after_utc


def test_an_expired_root_cannot_be_rolled_over(old_root: CertifiedKey) -> None:
    with pytest.raises(PolicyError, match="expired"):
        roll_root(old_root, now=old_root.certificate.not_valid_after_utc + dt.timedelta(days=1))


class _NothingRevoked:
    def is_revoked(self, serial: int) -> bool:
        return False

    def is_device_revoked(self, device_id: str) -> bool:
        return False

    def usable(self) -> bool:
        return True


def test_brokers_admit_devices_under_either_root_during_the_overlap(
    old_root: CertifiedKey, tmp_path: Path
) -> None:
    """The brokers' cafile is the issuing CAs + ca/root.pem (both roots during the overlap).

    Mosquitto verifies with OpenSSL against that file; the embedded broker and
    the Mosquitto plugin decide with the kernel's TrustPolicy built from it.
    """
    rolled = roll_root(old_root, now=PKI_NOW)
    under_old = create_issuing_ca(old_root, "issuing under R1", now=PKI_NOW)
    under_new = create_issuing_ca(rolled.new_root, "issuing under R2", now=PKI_NOW)
    bundle = [
        under_old.certificate, under_new.certificate,
        rolled.new_root.certificate, old_root.certificate,
    ]  # fmt: skip
    policy = TrustPolicy.from_bundle(bundle, skew=SKEW)
    for issuing in (under_old, under_new):
        leaf = issue_device_certificate(
            make_csr(generate_private_key()), device_id="dev-1", issuer=issuing,
            profile=DeviceProfile(), now=PKI_NOW,
        )  # fmt: skip
        decision = admit_client(
            leaf, "dev-1", revocations=_NothingRevoked(), policy=policy, now=PKI_NOW
        )
        assert isinstance(decision, Allow), decision
        out = openssl_verify(
            tmp_path, roots=bundle, leaf=leaf, now=PKI_NOW + dt.timedelta(hours=1),
            extra=["-x509_strict"],
        )  # fmt: skip
        assert "OK" in out
    # After retire-root (only the new root and its issuing CA), the old root's devices are out.
    retired = TrustPolicy.from_bundle([under_new.certificate, rolled.new_root.certificate])
    leaf = issue_device_certificate(
        make_csr(generate_private_key()), device_id="dev-1", issuer=under_old,
        profile=DeviceProfile(), now=PKI_NOW,
    )  # fmt: skip
    decision = admit_client(
        leaf, "dev-1", revocations=_NothingRevoked(), policy=retired, now=PKI_NOW
    )
    assert not isinstance(decision, Allow)
