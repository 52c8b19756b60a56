"""Shared PKI fixtures: one CA hierarchy and a pool of keys per test session.

Key generation (RSA above all) dominates the run time, so keys and CAs are made
once. Tests that need a CA of another shape build their own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from fleet.kernel.keys import KeyType
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca
from fleet.pki.keys import PrivateKey, generate_private_key
from tests.unit.pki.helpers import PKI_NOW


@pytest.fixture(scope="session")
def pki_now() -> dt.datetime:
    return PKI_NOW


@pytest.fixture(scope="session")
def key_of() -> Callable[[KeyType], PrivateKey]:
    """One cached private key per key type (generated on first use)."""
    cache: dict[KeyType, PrivateKey] = {}

    def get(key_type: KeyType) -> PrivateKey:
        if key_type not in cache:
            cache[key_type] = generate_private_key(key_type)
        return cache[key_type]

    return get


@pytest.fixture(scope="session")
def root() -> CertifiedKey:
    return create_root_ca("Fleet Test Root", now=PKI_NOW, organization="Fleet Tests")


@pytest.fixture(scope="session")
def issuing(root: CertifiedKey) -> CertifiedKey:
    return create_issuing_ca(root, "Fleet Test Devices", now=PKI_NOW)
