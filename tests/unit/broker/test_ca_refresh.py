"""What a broker takes from /cacerts: issuing CAs under roots it already trusts, no more."""

from __future__ import annotations

import datetime as dt

import pytest

from broker_plugins.ca_refresh import accepted_bundle
from fleet.kernel.errors import ConfigError
from fleet.pki.ca import create_issuing_ca, create_root_ca

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_only_issuing_cas_under_a_known_root_are_taken() -> None:
    root = create_root_ca("fleet root", now=NOW)
    current = create_issuing_ca(root, "I1", now=NOW).certificate
    nxt = create_issuing_ca(root, "I2", now=NOW).certificate
    stranger_root = create_root_ca("fleet root", now=NOW)  # same name, another key
    forged = create_issuing_ca(stranger_root, "I3", now=NOW).certificate
    offered = [nxt, current, forged, stranger_root.certificate, root.certificate]
    bundle = accepted_bundle([current, root.certificate], offered, NOW)
    assert bundle == [nxt, current, root.certificate]
    # A retired CA leaves the bundle when /cacerts stops listing it.
    assert accepted_bundle(bundle, [nxt, root.certificate], NOW) == [nxt, root.certificate]


def test_an_answer_with_no_usable_issuing_ca_keeps_the_bundle() -> None:
    root = create_root_ca("fleet root", now=NOW)
    expired = create_issuing_ca(root, "old", now=NOW - dt.timedelta(days=400),
                                validity=dt.timedelta(days=10)).certificate  # fmt: skip
    with pytest.raises(ConfigError, match="no issuing CA"):
        accepted_bundle([root.certificate], [expired, root.certificate], NOW)
    with pytest.raises(ConfigError, match="no root"):
        accepted_bundle([expired], [expired], NOW)
