"""The issuing-CA signing ceremony: what the offline root signs, what the online side installs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.kernel.keys import KeyType
from fleet.pki.ca import CertifiedKey, create_root_ca
from fleet.pki.ceremony import (
    IssuingCsrInvalid,
    check_issuing_certificate,
    create_issuing_csr,
    sign_issuing_csr,
)
from fleet.pki.issuance import issue_device_certificate
from fleet.pki.keys import PrivateKey, generate_private_key, signing_hash
from fleet.pki.profile import DeviceProfile
from tests.unit.pki.helpers import make_csr, openssl_verify

KeyOf = Callable[[KeyType], PrivateKey]


def test_a_signed_request_is_a_pathlen_zero_ca_that_openssl_accepts(
    root: CertifiedKey, key_of: KeyOf, pki_now: dt.datetime, tmp_path: Path
) -> None:
    key = generate_private_key(KeyType.EC_P256)
    cert = sign_issuing_csr(root, create_issuing_csr(key, "issuing 2"), now=pki_now)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert constraints.path_length == 0
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "issuing 2"
    assert check_issuing_certificate(cert, key=key, roots=(root.certificate,), now=pki_now) == (
        root.certificate
    )
    leaf = issue_device_certificate(
        make_csr(key_of(KeyType.EC_P256), common_name="dev-1"),
        device_id="dev-1",
        issuer=CertifiedKey(cert, key),
        profile=DeviceProfile(),
        now=pki_now,
    )
    assert "OK" in openssl_verify(
        tmp_path, roots=[root.certificate], untrusted=[cert], leaf=leaf, now=pki_now
    )


def test_the_issuing_ca_never_outlives_its_root(pki_now: dt.datetime) -> None:
    short_root = create_root_ca("R", now=pki_now, validity=dt.timedelta(days=100))
    key = generate_private_key(KeyType.EC_P256)
    cert = sign_issuing_csr(short_root, create_issuing_csr(key, "I"), now=pki_now)
    assert cert.not_valid_after_utc == short_root.certificate.not_valid_after_utc


def test_requests_the_root_must_not_sign_are_refused(
    root: CertifiedKey, pki_now: dt.datetime
) -> None:
    ed = generate_private_key(KeyType.ED25519)
    with pytest.raises(IssuingCsrInvalid, match="cannot be a fleet CA"):
        sign_issuing_csr(root, create_issuing_csr(ed, "ed"), now=pki_now)
    with pytest.raises(IssuingCsrInvalid, match="root's own key"):
        sign_issuing_csr(root, create_issuing_csr(root.private_key, "again"), now=pki_now)
    nameless = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(generate_private_key(KeyType.EC_P256), signing_hash(root.private_key))
    )
    with pytest.raises(IssuingCsrInvalid, match="no common name"):
        sign_issuing_csr(root, nameless, now=pki_now)


def test_install_refuses_a_certificate_for_another_key_or_root(
    root: CertifiedKey, pki_now: dt.datetime
) -> None:
    key = generate_private_key(KeyType.EC_P256)
    cert = sign_issuing_csr(root, create_issuing_csr(key, "I"), now=pki_now)
    other_key = generate_private_key(KeyType.EC_P256)
    with pytest.raises(IssuingCsrInvalid, match="not for the key"):
        check_issuing_certificate(cert, key=other_key, roots=(root.certificate,), now=pki_now)
    stranger = create_root_ca("Stranger", now=pki_now)
    with pytest.raises(IssuingCsrInvalid, match="not signed by a trusted fleet root"):
        check_issuing_certificate(cert, key=key, roots=(stranger.certificate,), now=pki_now)
    # Same name as our root, another key: the signature gives it away.
    impostor = create_root_ca(
        "Fleet Test Root", now=pki_now, organization="Fleet Tests", key_type=KeyType.EC_P256
    )
    forged = sign_issuing_csr(impostor, create_issuing_csr(key, "I"), now=pki_now)
    with pytest.raises(IssuingCsrInvalid, match="does not verify"):
        check_issuing_certificate(forged, key=key, roots=(root.certificate,), now=pki_now)
