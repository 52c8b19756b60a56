"""strongSwan's `pki --est` (Debian package strongswan-pki) as a third-party EST client.

`pki --est` sends simpleenroll when it has no certificate (HTTP Basic only)
and simplereenroll whenever it is given --cert/--key, its bootstrap
certificate included. Its own TLS stack stops at TLS 1.2; 5.9.8 (Debian 12)
cannot decode base64 with line breaks (fixed in 5.9.11).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

from tests.support.binaries import need_binary


@dataclasses.dataclass
class PkiResult:
    returncode: int
    output: str  # stdout and stderr: pki logs the HTTP status there
    cert: Path | None  # the issued certificate (PEM) when pki wrote one


def pki_est(
    url: str,
    *,
    cacert: Path,
    csr: Path,
    out: Path,
    cert: Path | None = None,
    key: Path | None = None,
    userpass: str | None = None,
) -> PkiResult:
    """Run `pki --est`; never raises on a refusal (the caller asserts on it)."""
    exe = need_binary("pki")
    args = [exe, "--est", "--url", url, "--cacert", str(cacert), "--in", str(csr)]
    args += ["--outform", "pem", "--maxpolltime", "1", "--interval", "1"]
    if cert is not None:
        args += ["--cert", str(cert)]
    if key is not None:
        args += ["--key", str(key)]
    if userpass is not None:
        # --options reads arguments from a file: the password stays off the
        # command line (and out of `ps`).
        options = out.with_suffix(".options")
        descriptor = os.open(options, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(f"--userpass {userpass}\n")
        args += ["--options", str(options)]
    proc = subprocess.run(args, capture_output=True, timeout=60, check=False)
    output = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    written = None
    if proc.returncode == 0 and b"-----BEGIN CERTIFICATE-----" in proc.stdout:
        out.write_bytes(proc.stdout)
        written = out
    return PkiResult(proc.returncode, output, written)
