from __future__ import annotations

import datetime as dt

import pytest

from fleet.kernel.errors import ConfigError
from fleet.kernel.keys import KeyType
from fleet.pki.profile import DeviceProfile


def test_defaults() -> None:
    profile = DeviceProfile()
    assert profile.name == "default"
    assert profile.validity == dt.timedelta(days=30)
    assert profile.backdate == dt.timedelta(minutes=5)
    assert profile.allowed_key_types == {KeyType.EC_P256, KeyType.EC_P384, KeyType.ED25519}
    assert profile.preferred_key_type is KeyType.EC_P256
    assert profile.crl_url is None
    assert profile.ocsp_url is None


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"validity": dt.timedelta(0)}, "validity must be positive"),
        ({"validity": dt.timedelta(days=-1)}, "validity must be positive"),
        ({"backdate": dt.timedelta(seconds=-1)}, "backdate must not be negative"),
        ({"allowed_key_types": frozenset()}, "must not be empty"),
        (
            {"allowed_key_types": frozenset({KeyType.ED25519})},
            "preferred_key_type ec-p256 is not in allowed_key_types \\(ed25519\\)",
        ),
        ({"crl_url": "ldap://x"}, "crl_url must be an http"),
        ({"ocsp_url": "ocsp.example"}, "ocsp_url must be an http"),
        ({"name": ""}, "non-empty name"),
    ],
)
def test_invalid_profiles_are_refused(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        DeviceProfile(**kwargs)  # type: ignore[arg-type]


def test_a_profile_is_frozen() -> None:
    profile = DeviceProfile(name="sensors", backdate=dt.timedelta(0))
    with pytest.raises(AttributeError):
        profile.name = "other"  # type: ignore[misc]
