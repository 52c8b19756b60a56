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
