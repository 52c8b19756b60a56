"""Finding the real third-party programs tests run.

A missing program skips the test with the command that installs it, except
when FLEET_STRICT=1 (CI), where it fails the test: CI must never go green by
skipping the real thing.
"""

from __future__ import annotations

import os
import shutil

import pytest

# program -> Debian package that provides it
PACKAGES = {
    "openssl": "openssl",
    "curl": "curl",
    "redis-server": "redis-server",
    "mosquitto": "mosquitto",
    "mosquitto_pub": "mosquitto-clients",
    "mosquitto_sub": "mosquitto-clients",
    "nginx": "nginx",
    "apache2": "apache2",
    "gcc": "gcc",
    "nm": "binutils",
    "pki": "strongswan-pki",
    "chromium": "chromium",
    "ip": "iproute2",
    "haproxy": "haproxy",
    "redis-sentinel": "redis-sentinel",
    "postgres": "postgresql",
    "softhsm2-util": "softhsm2",
}

_EXTRA_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def strict() -> bool:
    return os.environ.get("FLEET_STRICT", "") == "1"


def need_binary(name: str) -> str:
    """Absolute path of ``name``; skip (or fail under FLEET_STRICT=1) when absent."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_DIRS])
    path = shutil.which(name, path=search)
    if path is not None:
        return path
    package = PACKAGES.get(name, name)
    message = f"{name} is not installed; install it with: apt-get install -y {package}"
    if strict():
        pytest.fail(f"FLEET_STRICT=1: {message}")
    pytest.skip(message)
