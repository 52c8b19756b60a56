"""Compile the C units of ``plugin/`` into one Mosquitto plugin with the system compiler.

The units include ``fleet_kernel.h`` (in this directory; generated from the trust
kernel by ``python -m fleet.kernel.cheader``), so both ship in the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from fleet.kernel.errors import ConfigError

SOURCE_DIR = Path(__file__).with_name("plugin")
# One unit per concept (fleet_plugin.h lists them); a unit missing here would
# only show as an undefined symbol when Mosquitto loads the plugin.
SOURCES = tuple(
    SOURCE_DIR / name
    for name in (
        "fleet_plugin.c",
        "admission.c",
        "certificate.c",
        "identifiers.c",
        "acl.c",
        "control.c",
        "revocation.c",
        "sessions.c",
        "trust.c",
        "event_log.c",
        "table.c",
    )
)
KERNEL_HEADER = Path(__file__).with_name("fleet_kernel.h")
PLUGIN_NAME = "fleet_plugin.so"
APT_PACKAGES = ("gcc", "mosquitto-dev", "libmosquitto-dev", "libssl-dev")
# header -> Debian package that ships it
HEADERS = {
    "mosquitto_broker.h": "mosquitto-dev",
    "mosquitto_plugin.h": "mosquitto-dev",
    "mosquitto.h": "libmosquitto-dev",
    "openssl/ssl.h": "libssl-dev",
}
CFLAGS = (
    "-fPIC",
    "-shared",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Wformat=2",
    "-Wshadow",
    "-Wconversion",
    "-Wmissing-prototypes",  # a function shared between units is declared in fleet_plugin.h
    "-Werror",
    "-fstack-protector-strong",
    "-D_FORTIFY_SOURCE=2",
)
LIBS = ("-lcrypto",)


def missing_headers(include_dirs: Sequence[Path] = (Path("/usr/include"),)) -> list[str]:
    """Debian packages whose headers are absent, in install order."""
    missing: list[str] = []
    for header, package in HEADERS.items():
        if not any((d / header).exists() for d in include_dirs) and package not in missing:
            missing.append(package)
    return missing


def build_plugin(out_dir: Path, *, compiler: str | None = None) -> Path:
    """Compile the plugin into ``out_dir``; returns the .so path. ConfigError on failure."""
    cc = compiler or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ConfigError(
            "no C compiler found",
            hint=f"Install the build packages: apt-get install -y {' '.join(APT_PACKAGES)}",
        )
    missing = missing_headers()
    if missing:
        raise ConfigError(
            f"the headers of {', '.join(missing)} are missing",
            hint=f"Install the build packages: apt-get install -y {' '.join(APT_PACKAGES)}",
        )
    if not KERNEL_HEADER.is_file():
        raise ConfigError(
            f"{KERNEL_HEADER} is missing (the plugin's trust constants)",
            hint="Reinstall the package, or regenerate it: "
            f"python -m fleet.kernel.cheader > {KERNEL_HEADER}",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / PLUGIN_NAME
    partial = out_dir / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
    command = [
        cc, *CFLAGS, "-I", str(KERNEL_HEADER.parent), "-o", str(partial),
        *(str(source) for source in SOURCES), *LIBS
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    except OSError as exc:
        raise ConfigError(f"cannot run the compiler {cc}: {exc.strerror}") from exc
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ConfigError(
            f"compiling the plugin ({SOURCE_DIR.name}/*.c) failed:\n{result.stderr.strip()}",
            hint=f"Command: {' '.join(command)}",
        )
    partial.chmod(0o755)
    # Replace atomically: a running broker keeps its mapping of the old file.
    partial.replace(target)
    return target
