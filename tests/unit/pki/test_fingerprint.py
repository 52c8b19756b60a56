from __future__ import annotations

from pathlib import Path

import pytest

from fleet.kernel.errors import ConfigError
from fleet.kernel.fingerprint import normalize_fingerprint, sha256_fingerprint
from fleet.pki.ca import CertifiedKey
from tests.support.openssl import openssl
from tests.unit.pki.helpers import write_pem


def test_fingerprint_matches_openssl(root: CertifiedKey, tmp_path: Path) -> None:
    path = write_pem(tmp_path, "root.pem", root.certificate)
    out = openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha256").stdout.decode()
    # "sha256 Fingerprint=AB:CD:..."
    theirs = out.strip().split("=", 1)[1]
    ours = sha256_fingerprint(root.certificate)
    assert len(ours) == 64
    assert ours == ours.lower()
    assert ours == normalize_fingerprint(theirs)


def test_normalize_accepts_common_spellings() -> None:
    hex64 = "ab" * 32
    colons = ":".join(["AB"] * 32)
    spaced = " ".join(["ab"] * 32)
    for text in (hex64, hex64.upper(), colons, spaced, f"  {hex64}\n"):
        assert normalize_fingerprint(text) == hex64


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ab" * 31, "62 hex digits"),
        ("ab" * 33, "66 hex digits"),
        ("", "0 hex digits"),
        ("zz" * 32, "non-hex"),
        ("ab" * 31 + "-x", "non-hex"),
    ],
)
def test_normalize_refuses_wrong_lengths_and_characters(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        normalize_fingerprint(text)
