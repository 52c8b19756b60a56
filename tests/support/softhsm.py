"""A real SoftHSM2 token in a temp dir: its own SOFTHSM2_CONF, its PIN in a 0600 file.

softhsm2-util reads PINs from its terminal, so the token is initialised through
a pseudo-terminal: the PIN never appears on a command line. A PKCS#11 module
reads its configuration once per process (at C_Initialize), so the test process
shares one SoftHSM2 directory and token for the whole session
(:func:`shared_softhsm`); tests tell their keys apart by label and CKA_ID.
"""

from __future__ import annotations

import dataclasses
import os
import pty
import secrets
import select
import subprocess
from pathlib import Path

import pytest

from tests.support.binaries import need_binary, strict

# Debian's softhsm2 ships the module here (a symlink into the multiarch directory).
_MODULES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
)
TOKEN_LABEL = "fleet-test"


@dataclasses.dataclass(frozen=True)
class SoftHsm:
    directory: Path
    conf: Path
    module: Path
    pin_file: Path  # mode 0600
    token: str

    @property
    def uri(self) -> str:
        return f"pkcs11:token={self.token}"

    @property
    def pin(self) -> bytes:
        return self.pin_file.read_bytes().strip()

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}


def softhsm_module() -> Path:
    """The SoftHSM2 PKCS#11 module; skip (or fail under FLEET_STRICT=1) when absent."""
    need_binary("softhsm2-util")
    for path in _MODULES:
        if path.exists():
            return path
    message = "libsofthsm2.so not found; install it with: apt-get install -y softhsm2"
    if strict():
        pytest.fail(f"FLEET_STRICT=1: {message}")
    pytest.skip(message)


def make_softhsm(directory: Path, label: str = TOKEN_LABEL) -> SoftHsm:
    """A SoftHSM2 directory under ``directory`` with one initialised token ``label``."""
    module = softhsm_module()
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    pin_file = directory / "user.pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    pin = secrets.token_hex(8)
    os.write(fd, pin.encode() + b"\n")
    os.close(fd)
    so_pin = secrets.token_hex(8)
    _init_token(label, answers=[so_pin, so_pin, pin, pin], env={"SOFTHSM2_CONF": str(conf)})
    return SoftHsm(directory, conf, module, pin_file, label)


def _init_token(label: str, *, answers: list[str], env: dict[str, str]) -> None:
    """`softhsm2-util --init-token`, answering its PIN prompts through a pty."""
    util = need_binary("softhsm2-util")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [util, "--init-token", "--free", "--label", label],
        stdin=slave, stdout=slave, stderr=slave,
        env={**os.environ, **env}, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    output = b""
    pending = [a.encode() + b"\n" for a in answers]
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 1024)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            output += chunk
            if chunk.rstrip().endswith(b":") and pending:
                os.write(master, pending.pop(0))
    finally:
        os.close(master)
    code = proc.wait(timeout=30)
    if code != 0 or b"has been initialized" not in output:
        raise RuntimeError(f"softhsm2-util --init-token failed ({code}): {output!r}")


_SHARED: SoftHsm | None = None


def shared_softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """The session's one SoftHSM2 token, with SOFTHSM2_CONF set for this process."""
    global _SHARED
    if _SHARED is None:
        _SHARED = make_softhsm(tmp_path_factory.mktemp("softhsm"))
        os.environ["SOFTHSM2_CONF"] = str(_SHARED.conf)
    return _SHARED
