from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.kernel.errors import CsrInvalid
from fleet.kernel.keys import KeyType
from fleet.pki.csr import load_csr, verify_csr_signature
from fleet.pki.keys import PrivateKey
from tests.support.openssl import openssl
from tests.unit.pki.helpers import csr_der, make_csr


def test_load_der_and_pem(key_of: Callable[[KeyType], PrivateKey]) -> None:
    csr = make_csr(key_of(KeyType.EC_P256), common_name="dev-1")
    assert load_csr(csr_der(csr)) == csr
    assert load_csr(csr.public_bytes(Encoding.PEM)) == csr
    verify_csr_signature(csr)


@pytest.mark.parametrize(
    ("curve_args", "key_type"),
    [
        (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], KeyType.EC_P256),
        (["-newkey", "ed25519"], KeyType.ED25519),
    ],
)
def test_openssl_made_csrs_load_and_verify(
    curve_args: list[str], key_type: KeyType, tmp_path: Path
) -> None:
    for form in ("DER", "PEM"):
        out = tmp_path / f"req.{form}"
        openssl(
            "req", "-new", *curve_args, "-nodes", "-keyout", tmp_path / "key.pem",
            "-subj", "/CN=dev-7", "-outform", form, "-out", out,
        )  # fmt: skip
        csr = load_csr(out.read_bytes())
        verify_csr_signature(csr)
        assert csr.subject.rfc4514_string() == "CN=dev-7"


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x30\x03\x02\x01\x01",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"not a csr at all",
        b"\x30" * 70_000,
    ],
)
def test_garbage_is_csr_invalid(garbage: bytes) -> None:
    with pytest.raises(CsrInvalid):
        load_csr(garbage)


def test_a_certificate_is_not_a_csr(
    key_of: Callable[[KeyType], PrivateKey], tmp_path: Path
) -> None:
    openssl(
        "req", "-x509", "-newkey", "ed25519", "-nodes", "-keyout", tmp_path / "k.pem",
        "-subj", "/CN=x", "-outform", "DER", "-out", tmp_path / "c.der",
    )  # fmt: skip
    with pytest.raises(CsrInvalid, match="DER PKCS#10"):
        load_csr((tmp_path / "c.der").read_bytes())


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.ED25519, KeyType.RSA_2048])
def test_tampered_csr_fails_signature(
    key_type: KeyType, key_of: Callable[[KeyType], PrivateKey]
) -> None:
    der = csr_der(make_csr(key_of(key_type), common_name="dev-1"))
    tampered = load_csr(der.replace(b"dev-1", b"dev-2"))
    with pytest.raises(CsrInvalid, match="does not verify"):
        verify_csr_signature(tampered)
