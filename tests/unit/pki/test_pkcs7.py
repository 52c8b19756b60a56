from __future__ import annotations

from pathlib import Path

import pytest

from fleet.kernel.errors import FleetError
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import CertifiedKey, certificate_to_pem
from fleet.pki.pkcs7 import decode_certs_only, encode_certs_only
from tests.support.openssl import openssl


def test_openssl_lists_both_certificates(
    root: CertifiedKey, issuing: CertifiedKey, tmp_path: Path
) -> None:
    der = encode_certs_only([issuing.certificate, root.certificate])
    (tmp_path / "certs.p7b").write_bytes(der)
    out = openssl(
        "pkcs7", "-inform", "DER", "-in", tmp_path / "certs.p7b", "-print_certs", "-noout"
    ).stdout.decode()
    assert out.count("subject=") == 2
    assert "CN = Fleet Test Devices" in out
    assert "CN = Fleet Test Root" in out


def test_round_trip_and_openssl_made_pkcs7(
    root: CertifiedKey, issuing: CertifiedKey, tmp_path: Path
) -> None:
    certs = sorted([issuing.certificate, root.certificate], key=sha256_fingerprint)
    # DER SET OF: the encoder sorts, so compare contents, not order.
    assert sorted(decode_certs_only(encode_certs_only(certs)), key=sha256_fingerprint) == certs
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(b"".join(certificate_to_pem(c) for c in certs))
    out = tmp_path / "o.p7b"
    openssl("crl2pkcs7", "-nocrl", "-certfile", bundle, "-outform", "DER", "-out", out)
    assert sorted(decode_certs_only(out.read_bytes()), key=sha256_fingerprint) == certs


@pytest.mark.parametrize("garbage", [b"", b"nonsense", b"\x30\x03\x02\x01\x01"])
def test_garbage_is_a_fleet_error(garbage: bytes) -> None:
    with pytest.raises(FleetError) as info:
        decode_certs_only(garbage)
    assert info.value.reason == "pkcs7_invalid"


def test_encoding_nothing_is_refused() -> None:
    with pytest.raises(FleetError, match="at least one"):
        encode_certs_only([])


def test_a_pkcs7_without_certificates_is_refused(tmp_path: Path) -> None:
    # openssl makes a certs-only SignedData holding just a CRL-less, cert-less body.
    openssl("crl2pkcs7", "-nocrl", "-outform", "DER", "-out", tmp_path / "empty.p7b")
    with pytest.raises(FleetError) as info:
        decode_certs_only((tmp_path / "empty.p7b").read_bytes())
    assert info.value.reason == "pkcs7_invalid"
