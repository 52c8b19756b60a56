"""CrlPublisher and validate_crl against an in-memory store and a manual clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any, cast

import pytest
from cryptography import x509

from fleet.authority.crl import CrlPublisher, crl_number_at, reason_flag, validate_crl
from fleet.kernel.clock import ManualClock
from fleet.kernel.errors import ConfigError, PolicyError, ServerUnavailable, StoreUnavailable
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca
from fleet.pki.crl import build_crl, crl_to_der
from fleet.records import RevocationReason
from fleet.store.crl_numbers import CrlCounter, StoredCrl
from fleet.store.protocol import Store
from tests.unit.authority.revocation_fakes import FakeStore

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
HOURS_48 = dt.timedelta(hours=48)
HOUR = dt.timedelta(hours=1)
ADOPTER_DELAY = HOUR / 10  # a tenth of the refresh interval (HOUR in these tests)


@pytest.fixture(scope="module")
def issuing() -> CertifiedKey:
    root = create_root_ca("CRL Test Root", now=NOW)
    return create_issuing_ca(root, "CRL Test Devices", now=NOW)


def publisher(
    store: FakeStore, issuing: CertifiedKey, clock: ManualClock, **kwargs: Any
) -> CrlPublisher:
    return CrlPublisher(cast(Store, store), issuing, clock, HOURS_48, HOUR, **kwargs)


def test_every_stored_reason_maps_to_the_same_rfc5280_reason() -> None:
    for reason in RevocationReason:
        assert reason_flag(reason) is x509.ReasonFlags(reason.value)
    assert reason_flag(None) is None


def test_crl_number_is_microseconds_since_the_epoch() -> None:
    assert crl_number_at(dt.datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=dt.UTC)) == 1_000_005
    assert crl_number_at(NOW + dt.timedelta(microseconds=1)) == crl_number_at(NOW) + 1


def test_refresh_must_be_shorter_than_validity(issuing: CertifiedKey) -> None:
    with pytest.raises(ConfigError):
        CrlPublisher(cast(Store, FakeStore()), issuing, ManualClock(NOW), HOUR, HOUR)


async def test_crl_lists_revoked_serials_with_reason_and_time(issuing: CertifiedKey) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    for serial in (11, 12, 13):
        store.add(issuing, serial, NOW)
    store.revoke(11, RevocationReason.KEY_COMPROMISE, NOW + dt.timedelta(minutes=1))
    store.revoke(12, RevocationReason.UNSPECIFIED, NOW + dt.timedelta(minutes=2))
    signed = await publisher(store, issuing, clock).current()
    crl = validate_crl(signed.der, issuing.certificate, now=NOW, min_remaining=HOUR)
    assert x509.load_pem_x509_crl(signed.pem) == crl  # the PEM is the same CRL
    assert signed.this_update == NOW
    assert signed.next_update == NOW + HOURS_48
    assert signed.revoked_count == 2
    listed = {entry.serial_number: entry for entry in crl}
    assert set(listed) == {11, 12}
    assert listed[11].revocation_date_utc == NOW + dt.timedelta(minutes=1)
    assert listed[11].extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    # RFC 5280 5.3.1: "unspecified" is expressed by leaving the reason out.
    assert len(listed[12].extensions) == 0


async def test_certificates_of_another_issuer_are_not_listed(issuing: CertifiedKey) -> None:
    other = create_issuing_ca(create_root_ca("Other Root", now=NOW), "Other Devices", now=NOW)
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 21, NOW)
    store.add(other, 22, NOW)
    store.revoke(21, RevocationReason.SUPERSEDED, NOW)
    store.revoke(22, RevocationReason.SUPERSEDED, NOW)
    signed = await publisher(store, issuing, clock).current()
    assert [e.serial_number for e in x509.load_der_x509_crl(signed.der)] == [21]


async def test_expired_certificates_leave_the_crl_a_next_update_period_after_expiry(
    issuing: CertifiedKey,
) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    day = dt.timedelta(days=1)
    store.add(issuing, 31, NOW - 40 * day)  # valid 30 days: expired 10 days ago
    store.add(issuing, 32, NOW - 31 * day)  # expired a day ago, inside one nextUpdate (48 h)
    store.add(issuing, 33, NOW)
    for serial in (31, 32, 33):
        store.revoke(serial, RevocationReason.KEY_COMPROMISE, NOW - day)
    signed = await publisher(store, issuing, clock).current()
    assert sorted(e.serial_number for e in x509.load_der_x509_crl(signed.der)) == [32, 33]
    assert signed.revoked_count == 2


async def test_numbers_strictly_increase_even_when_the_clock_stands_still(
    issuing: CertifiedKey,
) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    pub = publisher(store, issuing, clock)
    numbers = [(await pub.regenerate()).number for _ in range(3)]
    assert numbers == [crl_number_at(NOW), crl_number_at(NOW) + 1, crl_number_at(NOW) + 2]
    # A restarted server (a new publisher) a second later continues above them.
    clock.advance(dt.timedelta(seconds=1))
    assert (await publisher(store, issuing, clock).regenerate()).number > numbers[-1]


async def test_current_is_cached_until_older_than_refresh(issuing: CertifiedKey) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    pub = publisher(store, issuing, clock)
    first = await pub.current()
    clock.advance(HOUR - dt.timedelta(seconds=1))
    assert await pub.current() is first
    clock.advance(dt.timedelta(seconds=1))
    second = await pub.current()
    assert second.number > first.number
    assert second.this_update == NOW + HOUR


async def test_a_store_outage_serves_the_last_crl_while_it_is_valid(
    issuing: CertifiedKey,
) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    pub = publisher(store, issuing, clock)
    first = await pub.current()
    store.down = True
    clock.advance(2 * HOUR)
    assert await pub.current() is first
    clock.advance(HOURS_48)  # past nextUpdate: never serve an expired CRL
    with pytest.raises(StoreUnavailable):
        await pub.current()


async def test_first_use_with_the_store_down_raises(issuing: CertifiedKey) -> None:
    store = FakeStore()
    store.down = True
    with pytest.raises(StoreUnavailable):
        await publisher(store, issuing, ManualClock(NOW)).current()


async def _wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(400):  # 2 s
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def test_run_regenerates_on_every_feed_event(issuing: CertifiedKey) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 31, NOW)
    store.add(issuing, 32, NOW)
    pub = publisher(store, issuing, clock)
    task = asyncio.create_task(pub.run())
    try:
        await _wait_for(lambda: pub.latest is not None)
        before = await pub.current()
        store.revoke(31, RevocationReason.KEY_COMPROMISE, NOW)
        await _wait_for(lambda: pub.latest is not None and pub.latest.revoked_count == 1)
        store.revoke(32, RevocationReason.CESSATION_OF_OPERATION, NOW)
        await _wait_for(lambda: pub.latest is not None and pub.latest.revoked_count == 2)
        after = await pub.current()
        assert after.number > before.number
        assert {e.serial_number for e in x509.load_der_x509_crl(after.der)} == {31, 32}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_resigns_when_the_crl_ages_without_events(issuing: CertifiedKey) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    pub = publisher(store, issuing, clock, max_sleep=0.01)
    task = asyncio.create_task(pub.run())
    try:
        await _wait_for(lambda: pub.latest is not None)
        await asyncio.sleep(0.05)
        calls = store.list_calls  # startup may sign twice (before and after the feed head)
        await asyncio.sleep(0.05)
        assert store.list_calls == calls  # nothing changed, nothing aged: no re-signing
        clock.advance(HOUR)
        await _wait_for(lambda: pub.latest is not None and pub.latest.this_update == NOW + HOUR)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_survives_a_store_outage(issuing: CertifiedKey) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 41, NOW)
    pub = publisher(store, issuing, clock, retry=0.01)
    task = asyncio.create_task(pub.run())
    try:
        await _wait_for(lambda: pub.latest is not None)
        store.down = True
        store.revoke(41, RevocationReason.KEY_COMPROMISE, NOW)
        await asyncio.sleep(0.05)
        assert pub.latest is not None
        assert pub.latest.revoked_count == 0
        store.down = False
        await _wait_for(lambda: pub.latest is not None and pub.latest.revoked_count == 1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_request_serves_a_revocation_the_follower_has_not_seen(
    issuing: CertifiedKey,
) -> None:
    # No run(): nothing follows the feed (as a follower polling slowly, or one that
    # lost its feed); the request itself sees the feed moved past its CRL.
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 51, NOW)
    pub = publisher(store, issuing, clock)
    first = await pub.current()
    store.revoke(51, RevocationReason.KEY_COMPROMISE, NOW)
    served = await pub.current()
    assert served.number > first.number
    assert {e.serial_number for e in x509.load_der_x509_crl(served.der)} == {51}
    assert await pub.current() is served  # covered now: not signed again


async def test_run_does_not_sign_again_what_a_request_signed(issuing: CertifiedKey) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 61, NOW)
    pub = publisher(store, issuing, clock)
    task = asyncio.create_task(pub.run())
    try:
        await _wait_for(lambda: pub.latest is not None)
        await asyncio.sleep(0.05)  # startup may sign twice (before and after the feed head)
        calls = store.list_calls
        store.revoke(61, RevocationReason.KEY_COMPROMISE, NOW)
        served = await pub.current()
        assert served.revoked_count == 1
        # The follower has seen the event and the loop has looked at it.
        await _wait_for(lambda: pub._seen_seq == 1 and not pub._changed.is_set())
        await asyncio.sleep(0.02)
        assert store.list_calls == calls + 1, "the same content was signed twice"
        assert pub.latest is served
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_failed_signing_serves_the_last_crl_and_backs_off(
    issuing: CertifiedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 71, NOW)
    pub = publisher(store, issuing, clock, retry=60.0)
    first = await pub.current()

    def token_gone(*_: object) -> None:
        raise ServerUnavailable("the token is not answering")

    monkeypatch.setattr(pub, "_sign", token_gone)
    store.revoke(71, RevocationReason.KEY_COMPROMISE, NOW)
    assert await pub.current() is first  # a 503 would hide a CRL valid for 48 hours
    calls = store.list_calls
    assert await pub.current() is first
    assert store.list_calls == calls, "every request retried the failed signing"
    monkeypatch.undo()
    clock.advance(HOURS_48)  # past nextUpdate: no backing off with an expired CRL
    assert (await pub.current()).revoked_count == 1


def _crl(issuer: CertifiedKey, *, now: dt.datetime, next_update_in: dt.timedelta) -> bytes:
    return crl_to_der(build_crl(issuer, [], now=now, next_update_in=next_update_in, crl_number=1))


def test_validate_refuses_garbage(issuing: CertifiedKey) -> None:
    with pytest.raises(PolicyError, match="cannot decode the CRL"):
        validate_crl(b"\x30\x03garbage", issuing.certificate, now=NOW, min_remaining=HOUR)


def test_validate_refuses_a_crl_signed_by_another_key(issuing: CertifiedKey) -> None:
    impostor = CertifiedKey(
        issuing.certificate,
        create_root_ca("key donor", now=NOW).private_key,
    )
    der = _crl(impostor, now=NOW, next_update_in=HOURS_48)
    with pytest.raises(PolicyError, match="signature does not verify") as caught:
        validate_crl(der, issuing.certificate, now=NOW, min_remaining=HOUR)
    assert caught.value.reason == "crl_invalid"


def test_validate_refuses_another_issuer(issuing: CertifiedKey) -> None:
    other = create_root_ca("Someone Else", now=NOW)
    der = _crl(other, now=NOW, next_update_in=HOURS_48)
    with pytest.raises(PolicyError, match="names issuer"):
        validate_crl(der, issuing.certificate, now=NOW, min_remaining=HOUR)


def test_validate_refuses_expired_or_nearly_expired(issuing: CertifiedKey) -> None:
    der = _crl(issuing, now=NOW - HOURS_48, next_update_in=HOURS_48 + dt.timedelta(minutes=5))
    with pytest.raises(PolicyError, match="nextUpdate"):
        validate_crl(der, issuing.certificate, now=NOW, min_remaining=dt.timedelta(minutes=10))
    validate_crl(der, issuing.certificate, now=NOW, min_remaining=dt.timedelta(minutes=1))


async def test_workers_sharing_a_store_never_serve_a_number_below_one_already_signed(
    issuing: CertifiedKey,
) -> None:
    """Two workers (or nodes) on one store: whichever a client asks next, the CRL
    number it gets never goes back, and a higher number never has older content."""
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 31, NOW)
    store.add(issuing, 32, NOW)
    a, b = publisher(store, issuing, clock), publisher(store, issuing, clock)
    first_a = await a.current()
    store.revoke(31, RevocationReason.KEY_COMPROMISE, NOW)
    first_b = await b.current()  # signed after the revocation: a higher number
    assert first_b.number > first_a.number
    assert first_b.revoked_count == 1
    # a's CRL is fresh by age but older than b's: a serves b's instead of going back.
    again_a = await a.current()
    assert (again_a.number, again_a.der) == (first_b.number, first_b.der)
    assert again_a.revoked_count == 1
    assert await b.current() is first_b  # and b has nothing to follow


async def test_workers_answering_in_turn_sign_once_and_serve_one_number(
    issuing: CertifiedKey,
) -> None:
    """A client's requests going to two workers in turn: one signs, the other serves
    that CRL from the store. Each signing reads every revoked record, and each new
    number makes every broker reinstall the CRL: none without a new revocation."""
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 81, NOW)
    store.revoke(81, RevocationReason.KEY_COMPROMISE, NOW)
    a, b = publisher(store, issuing, clock), publisher(store, issuing, clock)
    served = [await (a, b)[n % 2].current() for n in range(8)]
    assert [crl.number for crl in served] == [served[0].number] * 8
    assert {crl.der for crl in served} == {served[0].der}
    assert store.list_calls == 1, "signed again with nothing new"
    assert served[1].revoked_count == 1
    assert served[1].feed_seq == 1
    # A revocation: whichever answers next signs once, the other serves that one.
    store.add(issuing, 82, NOW)
    store.revoke(82, RevocationReason.KEY_COMPROMISE, NOW)
    after = [await (a, b)[n % 2].current() for n in range(1, 5)]
    assert [crl.number for crl in after] == [after[0].number] * 4
    assert after[0].number > served[0].number
    assert after[1].revoked_count == 2
    assert store.list_calls == 2


async def test_a_stored_crl_that_will_not_do_is_signed_again(issuing: CertifiedKey) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 91, NOW)
    a = publisher(store, issuing, clock)
    first = await a.current()
    # Missing a revocation the feed has (a kept CRL lags the signing of a newer one).
    store.revoke(91, RevocationReason.KEY_COMPROMISE, NOW)
    assert store.signed_crls
    b = publisher(store, issuing, clock)
    signed = await b.current()
    assert signed.number > first.number
    assert signed.revoked_count == 1
    # Due for refresh, even for a worker that did not sign it: signed again, not served.
    clock.advance(HOUR + ADOPTER_DELAY)
    calls = store.list_calls
    fresh = await publisher(store, issuing, clock).current()
    assert fresh.this_update == NOW + HOUR + ADOPTER_DELAY
    assert store.list_calls == calls + 1
    # Not a CRL of this CA (a damaged record): signed again, the damage never served.
    other = create_issuing_ca(create_root_ca("Other Root", now=NOW), "Other Devices", now=NOW)
    (scope,) = store.signed_crls
    bogus = crl_to_der(
        build_crl(other, [], now=clock.now(), next_update_in=HOURS_48, crl_number=10**18)
    )
    await store.keep_signed_crl(scope, StoredCrl(10**18, 1, bogus))
    store.crl_counters[scope] = CrlCounter(10**18, 1)
    served = await a.current()
    assert served.number > 10**18
    validate_crl(served.der, issuing.certificate, now=clock.now(), min_remaining=HOUR)


async def test_a_starting_worker_serves_the_kept_crl_without_signing(
    issuing: CertifiedKey,
) -> None:
    store, clock = FakeStore(), ManualClock(NOW)
    store.add(issuing, 95, NOW)
    store.revoke(95, RevocationReason.KEY_COMPROMISE, NOW)
    signed = await publisher(store, issuing, clock).current()
    calls = store.list_calls
    started = publisher(store, issuing, clock)
    task = asyncio.create_task(started.run())
    try:
        await _wait_for(lambda: started.latest is not None)
        await asyncio.sleep(0.05)  # the follower's first look at the feed head
        assert started.latest is not None
        assert (started.latest.number, started.latest.der) == (signed.number, signed.der)
        assert store.list_calls == calls, "a restart signed a CRL the store had"
        assert await started.current() is started.latest
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_signer_refreshes_and_the_workers_that_adopted_follow(
    issuing: CertifiedKey,
) -> None:
    """Workers that adopted one CRL would all find it due at the same moment and
    all sign; they refresh a little later than its signer, and adopt its new one."""
    store, clock = FakeStore(), ManualClock(NOW)
    signer, adopter = publisher(store, issuing, clock), publisher(store, issuing, clock)
    first = await signer.current()
    assert (await adopter.current()).number == first.number
    clock.advance(HOUR)
    # Not due yet for a worker that adopted it.
    assert (await adopter.current()).number == first.number
    assert store.list_calls == 1
    refreshed = await signer.current()
    assert refreshed.number > first.number
    assert (await adopter.current()).der == refreshed.der
    assert store.list_calls == 2
    # A signer that stopped: the others refresh themselves, only later.
    clock.advance(HOUR + ADOPTER_DELAY - dt.timedelta(seconds=1))
    assert (await adopter.current()).number == refreshed.number
    clock.advance(dt.timedelta(seconds=1))
    assert (await adopter.current()).number > refreshed.number
    assert store.list_calls == 3
