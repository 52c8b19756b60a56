"""Our subject hash is the one `openssl x509 -hash` prints (what capath lookups use)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from broker_plugins.subject_hash import subject_hash
from fleet.pki.ca import CertifiedKey, certificate_to_pem, create_issuing_ca, create_root_ca
from tests.support.openssl import openssl

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "name",
    [
        "fleet device issuing CA 2030-01-01 1a2b3c4d",
        "  Mixed   CASE\tname  ",
        "Ünïcode CA — with dash",
    ],
)
def test_matches_openssl(tmp_path: Path, name: str) -> None:
    root = create_root_ca("fleet root CA", now=NOW, organization="Acme Fleet Ops")
    ca: CertifiedKey = create_issuing_ca(root, name, now=NOW, organization="ACME  Devices")
    for cert in (root.certificate, ca.certificate):
        pem = tmp_path / "ca.pem"
        pem.write_bytes(certificate_to_pem(cert))
        expected = openssl("x509", "-in", pem, "-noout", "-hash").stdout.decode().strip()
        assert subject_hash(cert.subject) == expected


def test_printable_string_is_canonicalised_like_utf8() -> None:
    printable = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.COMMON_NAME, "X"),
        ]
    )
    assert len(subject_hash(printable)) == 8
