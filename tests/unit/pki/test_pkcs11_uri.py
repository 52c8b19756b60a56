"""RFC 7512 URIs from fleet.toml and the command line: strictly parsed, hostile ones refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import parse_config
from fleet.kernel.errors import ConfigError
from fleet.kernel.reasons import Reason
from fleet.pki.keystore import key_locations
from fleet.pki.pkcs11_uri import Pkcs11Uri, parse_pkcs11_uri


def _key(text: str) -> Pkcs11Uri:
    return parse_pkcs11_uri(text, setting="[ca] key_store", key_required=True)


def test_a_key_uri_with_every_attribute() -> None:
    uri = _key(
        "pkcs11:token=my%20fleet;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;"
        "serial=0123abcd;object=fleet-issuing;id=%01%a2;type=private"
    )
    assert uri == Pkcs11Uri(
        token="my fleet",
        manufacturer="SoftHSM project",
        model="SoftHSM v2",
        serial="0123abcd",
        object="fleet-issuing",
        id=b"\x01\xa2",
    )
    # The canonical form parses back to the same key.
    assert _key(str(uri)) == uri
    assert str(uri).endswith("object=fleet-issuing;id=%01%a2;type=private")


def test_a_token_uri_for_init() -> None:
    uri = parse_pkcs11_uri("pkcs11:token=fleet", setting="--pkcs11-uri", key_required=False)
    assert uri == Pkcs11Uri(token="fleet")
    assert str(uri) == "pkcs11:token=fleet"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "must start with 'pkcs11:'"),
        ("file:/etc/passwd", "must start with 'pkcs11:'"),
        ("PKCS11:token=a;object=b", "must start with 'pkcs11:'"),
        ("pkcs11:", "names no token"),
        ("pkcs11:object=k", "names no token"),
        ("pkcs11:token=a", "names no key"),
        ("pkcs11:token=a;object=k?pin-value=1234", "query attributes"),
        ("pkcs11:token=a;object=k?module-path=/tmp/evil.so", "query attributes"),
        ("pkcs11:token=a;object=k;pin-value=1234", "unknown attribute 'pin-value'"),
        ("pkcs11:token=a;object=k;x-vendor=1", "unknown attribute"),
        ("pkcs11:token=a;token=b;object=k", "given twice"),
        ("pkcs11:token=;object=k", "is empty"),
        ("pkcs11:token=a;object", "has no '='"),
        ("pkcs11:token=a b;object=k", "percent-encode"),
        ("pkcs11:token=a;object=k/../x", "percent-encode"),
        ("pkcs11:token=a;object=%zz", "percent-encode"),
        ("pkcs11:token=a;object=%ff%fe", "not UTF-8"),
        ("pkcs11:token=a;object=a%0ab", "control characters"),
        ("pkcs11:token=a;object=k;type=secret-key", "type must be 'private'"),
        ("pkcs11:token=" + "a" * 33 + ";object=k", "longer than 32 bytes"),
        ("pkcs11:token=a;object=" + "k" * 2000, "limit is 1024"),
    ],
)
def test_hostile_uris_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _key(text)
    assert caught.value.reason == Reason.PKCS11_URI_INVALID
    assert why in caught.value.message
    assert "[ca] key_store" in caught.value.message


def test_init_takes_a_token_not_a_key() -> None:
    with pytest.raises(ConfigError, match="only the token"):
        parse_pkcs11_uri("pkcs11:token=a;object=k", setting="--pkcs11-uri", key_required=False)


_ISSUING = "pkcs11:token=fleet;object=fleet-issuing;id=%01"


def test_config_validates_key_stores_and_needs_the_module(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"ca": {"key_store": "pkcs11:token=fleet"}}, base_dir=tmp_path)
    assert caught.value.reason == Reason.PKCS11_URI_INVALID
    with pytest.raises(ConfigError) as caught:
        parse_config({"admin": {"key_store": _ISSUING}}, base_dir=tmp_path)
    assert caught.value.reason == Reason.PKCS11_MODULE_UNAVAILABLE
    with pytest.raises(ConfigError, match="root_key_store"):
        parse_config({"ca": {"root_key_store": "/etc/ca.key"}}, base_dir=tmp_path)


def test_key_locations_name_files_and_uris_without_secrets(tmp_path: Path) -> None:
    config = parse_config(
        {
            "ca": {
                "key_store": _ISSUING,
                "pkcs11_module": "/usr/lib/softhsm/libsofthsm2.so",
                "pkcs11_pin_file": "pin",
            }
        },
        base_dir=tmp_path,
    )
    locations = {location.name: location for location in key_locations(config)}
    assert locations["issuing"].store == "pkcs11"
    assert (
        locations["issuing"].where == "pkcs11:token=fleet;object=fleet-issuing;id=%01;type=private"
    )
    assert locations["root"].store == "file"
    assert locations["root"].where == str(tmp_path / "ca/root.key")
    assert locations["admin"].where == str(tmp_path / "ca/admin.key")
    assert config.ca.pkcs11_pin_file == tmp_path / "pin"
