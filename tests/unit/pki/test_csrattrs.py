from __future__ import annotations

from pathlib import Path

import pytest

from fleet.kernel.errors import PolicyError
from fleet.kernel.keys import KeyType
from fleet.pki.csrattrs import (
    CHALLENGE_PASSWORD,
    ECDSA_WITH_SHA256,
    ECDSA_WITH_SHA384,
    ID_EC_PUBLIC_KEY,
    ID_ED25519,
    RSA_ENCRYPTION,
    SECP256R1,
    SECP384R1,
    SHA256_WITH_RSA_ENCRYPTION,
    decode_csr_attributes,
    encode_csr_attributes,
)
from tests.support.openssl import openssl


def _asn1parse(tmp_path: Path, der: bytes) -> str:
    (tmp_path / "attrs.der").write_bytes(der)
    return openssl("asn1parse", "-inform", "DER", "-in", tmp_path / "attrs.der").stdout.decode()


@pytest.mark.parametrize("require_pop", [True, False])
def test_p256_attributes_as_openssl_parses_them(require_pop: bool, tmp_path: Path) -> None:
    der = encode_csr_attributes(KeyType.EC_P256, require_pop=require_pop)
    text = _asn1parse(tmp_path, der)
    assert ":id-ecPublicKey" in text
    assert ":prime256v1" in text
    assert ":ecdsa-with-SHA256" in text
    assert (":challengePassword" in text) is require_pop


@pytest.mark.parametrize(
    ("key_type", "names"),
    [
        (KeyType.EC_P384, [":id-ecPublicKey", ":secp384r1", ":ecdsa-with-SHA384"]),
        (KeyType.ED25519, [":ED25519"]),
        (
            KeyType.RSA_2048,
            [":rsaEncryption", ":sha256WithRSAEncryption", "INTEGER           :0800"],
        ),
        (KeyType.RSA_3072, [":rsaEncryption", "INTEGER           :0C00"]),
    ],
)
def test_other_key_types_as_openssl_parses_them(
    key_type: KeyType, names: list[str], tmp_path: Path
) -> None:
    text = _asn1parse(tmp_path, encode_csr_attributes(key_type, require_pop=False))
    for name in names:
        assert name in text
    assert "challengePassword" not in text


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [
        (KeyType.EC_P256, [(ID_EC_PUBLIC_KEY, [SECP256R1]), ECDSA_WITH_SHA256]),
        (KeyType.EC_P384, [(ID_EC_PUBLIC_KEY, [SECP384R1]), ECDSA_WITH_SHA384]),
        (KeyType.ED25519, [ID_ED25519]),
        (KeyType.RSA_2048, [(RSA_ENCRYPTION, ["2048"]), SHA256_WITH_RSA_ENCRYPTION]),
        (KeyType.RSA_3072, [(RSA_ENCRYPTION, ["3072"]), SHA256_WITH_RSA_ENCRYPTION]),
    ],
)
def test_decode_round_trips(key_type: KeyType, expected: list[object]) -> None:
    assert decode_csr_attributes(encode_csr_attributes(key_type, require_pop=False)) == expected
    with_pop = decode_csr_attributes(encode_csr_attributes(key_type, require_pop=True))
    assert with_pop == [*expected, CHALLENGE_PASSWORD]


def test_decode_reads_an_rfc7030_style_example(tmp_path: Path) -> None:
    # The RFC 7030 section 4.5.2 example shape: bare OIDs plus one attribute,
    # built by openssl from a textual description so the encoder is not ours.
    conf = tmp_path / "attrs.cnf"
    conf.write_text(
        "asn1=SEQUENCE:attrs\n[attrs]\n"
        "a=OID:challengePassword\n"
        "b=SEQUENCE:ec\n"
        "c=OID:ecdsa-with-SHA384\n"
        "[ec]\ntype=OID:id-ecPublicKey\nvalues=SET:curve\n[curve]\nc=OID:secp384r1\n"
    )
    out = tmp_path / "attrs.der"
    openssl("asn1parse", "-genconf", conf, "-out", out, "-noout")
    decoded = decode_csr_attributes(out.read_bytes())
    assert decoded == [CHALLENGE_PASSWORD, (ID_EC_PUBLIC_KEY, [SECP384R1]), ECDSA_WITH_SHA384]


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello",
        b"\x04\x00",  # an OCTET STRING, not a SEQUENCE
        b"\x30\x03\x02\x01\x01",  # an INTEGER where an OID or Attribute belongs
        b"\x30\x04\x30\x02\x06\x00",  # an Attribute without values
        bytes.fromhex("3000") + b"\x00",  # trailing data
    ],
)
def test_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(PolicyError) as info:
        decode_csr_attributes(garbage)
    assert info.value.reason == "csrattrs_invalid"


def test_empty_csrattrs_decode_to_nothing() -> None:
    assert decode_csr_attributes(bytes.fromhex("3000")) == []
