"""Certificate fingerprints: the SHA-256 of the DER encoding, as the manifest pins them."""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fleet.kernel.errors import ConfigError

_SEPARATORS = re.compile(r"[:\s]")
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER, without separators."""
    return cert.fingerprint(hashes.SHA256()).hex()


def normalize_fingerprint(text: str) -> str:
    """``text`` as lowercase hex; accepts any case with or without colons or spaces.

    Manifests come from many tools (openssl prints ``AB:CD:...``, others plain
    hex), so normalise before comparing instead of asking people to reformat.
    """
    cleaned = _SEPARATORS.sub("", text).lower()
    cleaned = cleaned.rsplit("=", 1)[-1]  # "sha256 Fingerprint=AB:CD:..." as openssl prints it
    if _HEX64.fullmatch(cleaned):
        return cleaned
    bad = sorted({c for c in cleaned if c not in "0123456789abcdef"})
    problem = (
        f"it contains non-hex characters {''.join(bad)!r}"
        if bad
        else f"it has {len(cleaned)} hex digits"
    )
    raise ConfigError(
        f"{text!r} is not a SHA-256 fingerprint: expected 64 hex digits "
        f"(colons and spaces allowed), but {problem}"
    )


MIN_PREFIX = 8  # hex digits: enough to name one of a fleet's credentials or keys


def fingerprint_prefix(text: str) -> str | None:
    """``text`` as a lowercase hex fingerprint prefix (colons and spaces dropped, at
    least 8 digits, at most 64), or None if it is not one."""
    cleaned = _SEPARATORS.sub("", text).lower()
    if not MIN_PREFIX <= len(cleaned) <= 64 or any(c not in "0123456789abcdef" for c in cleaned):
        return None
    return cleaned
