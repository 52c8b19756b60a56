"""The kernel's CRL rule (server and Mosquitto sidecar): any bytes give a CRL or a
PolicyError ``crl_invalid``, never another exception."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.kernel.crl_check import check_crl, parse_crl
from fleet.kernel.errors import PolicyError
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca
from fleet.pki.crl import RevokedEntry, build_crl, crl_to_der, crl_to_pem

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def issuing() -> CertifiedKey:
    return create_issuing_ca(create_root_ca("CRL Rule Root", now=NOW), "CRL Rule CA", now=NOW)


@pytest.fixture(scope="module")
def signed(issuing: CertifiedKey) -> bytes:
    return _der(issuing)  # once: ECDSA signatures differ in length between signings


def _der(issuing: CertifiedKey, number: int = 7, next_update: dt.timedelta = 48 * HOUR) -> bytes:
    entries = [RevokedEntry(serial=0x1234 + i, revoked_at=NOW, reason=None) for i in range(3)]
    crl = build_crl(issuing, entries, now=NOW, next_update_in=next_update, crl_number=number)
    return crl_to_der(crl)


def test_a_current_crl_of_the_issuer_passes_in_der_and_pem(issuing: CertifiedKey) -> None:
    der = _der(issuing)
    crl = check_crl(der, issuing.certificate, now=NOW, min_remaining=HOUR)
    assert len(crl) == 3
    pem = crl_to_pem(parse_crl(der))
    assert check_crl(pem, issuing.certificate, now=NOW, min_remaining=HOUR).next_update_utc


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"now": NOW + 48 * HOUR}, "nextUpdate"),
        ({"now": NOW - HOUR}, "thisUpdate"),
        ({"not_below": 8}, "older than"),
    ],
)
def test_stale_future_or_older_crls_are_refused(
    issuing: CertifiedKey, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"now": NOW, "min_remaining": HOUR, **kwargs}
    with pytest.raises(PolicyError, match=message) as refused:
        check_crl(_der(issuing), issuing.certificate, **arguments)  # type: ignore[arg-type]
    assert refused.value.reason == "crl_invalid"


def test_another_issuer_is_refused(issuing: CertifiedKey) -> None:
    other = create_issuing_ca(create_root_ca("Other Root", now=NOW), "Other CA", now=NOW)
    with pytest.raises(PolicyError, match="names issuer"):
        check_crl(_der(issuing), other.certificate, now=NOW, min_remaining=HOUR)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_damage_to_the_bytes_is_a_crl_invalid_refusal_or_a_crl(
    issuing: CertifiedKey, signed: bytes, data: st.DataObject
) -> None:
    der = bytearray(signed)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(der) - 1))
        der[at] = data.draw(st.integers(min_value=0, max_value=255))
    if data.draw(st.booleans()):  # cut short as well, sometimes
        der = der[: data.draw(st.integers(min_value=1, max_value=len(der)))]
    assert _outcome(bytes(der), issuing) in {"crl", "crl_invalid"}


def _outcome(data: bytes, issuing: CertifiedKey) -> str:
    try:
        check_crl(data, issuing.certificate, now=NOW, min_remaining=HOUR)
    except PolicyError as refused:
        return refused.reason
    return "crl"
