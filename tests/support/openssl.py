"""Running the real `openssl` command line as a third-party checker."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.binaries import need_binary


def openssl(
    *args: str | Path, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """Run ``openssl ARGS``; on ``check`` a non-zero exit fails with its stderr."""
    exe = need_binary("openssl")
    proc = subprocess.run(
        [exe, *map(str, args)], input=input, capture_output=True, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"openssl {' '.join(map(str, args))} exited {proc.returncode}:\n"
            f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}"
        )
    return proc


def tls_handshake(
    port: int, *, ca: Path, cert: Path, key: Path, args: tuple[str, ...]
) -> tuple[bool, str]:
    """One `openssl s_client` handshake to 127.0.0.1:port with a client certificate.

    Returns (handshake completed, s_client's output). ``args`` choose the
    version and the suites offered (e.g. ``-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA``).
    """
    proc = openssl(
        "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca, "-cert", cert, "-key", key,
        "-brief", *args,
        input=b"", check=False,
    )  # fmt: skip
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    return proc.returncode == 0 and "CONNECTION ESTABLISHED" in output, output
