"""OcspResponder: status from the store, OCSP-level errors for everything else."""

from __future__ import annotations

import datetime as dt
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from fleet.authority.ocsp import OcspResponder
from fleet.kernel.clock import ManualClock
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca
from fleet.records import RevocationReason
from fleet.store.protocol import Store
from tests.unit.authority.revocation_fakes import FakeStore, device_certificate

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def issuing() -> CertifiedKey:
    return create_issuing_ca(create_root_ca("OCSP Root", now=NOW), "OCSP Devices", now=NOW)


def _request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes = b"n" * 16) -> bytes:
    builder = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 - what clients send
        .add_extension(x509.OCSPNonce(nonce), critical=False)
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def _responder(store: FakeStore, issuing: CertifiedKey) -> OcspResponder:
    return OcspResponder(cast(Store, store), issuing, ManualClock(NOW), dt.timedelta(minutes=60))


async def test_good_revoked_and_unknown(issuing: CertifiedKey) -> None:
    store = FakeStore()
    good = store.add(issuing, 101, NOW)
    revoked = store.add(issuing, 102, NOW)
    store.revoke(102, RevocationReason.KEY_COMPROMISE, NOW - dt.timedelta(minutes=3))
    never_recorded = device_certificate(issuing, 103, NOW)
    responder = _responder(store, issuing)

    answer = await responder.respond(_request(good, issuing.certificate))
    response = ocsp.load_der_ocsp_response(answer.der)
    assert (answer.outcome, answer.serial) == ("good", 101)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.this_update_utc == NOW
    assert response.next_update_utc == NOW + dt.timedelta(minutes=60)
    nonce = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert nonce == b"n" * 16
    public_key = issuing.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    public_key.verify(  # raises if the issuing CA did not sign it
        response.signature,
        response.tbs_response_bytes,
        ec.ECDSA(response.signature_hash_algorithm),
    )

    answer = await responder.respond(_request(revoked, issuing.certificate))
    response = ocsp.load_der_ocsp_response(answer.der)
    assert answer.outcome == "revoked"
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == NOW - dt.timedelta(minutes=3)
    assert response.revocation_reason is x509.ReasonFlags.key_compromise

    answer = await responder.respond(_request(never_recorded, issuing.certificate))
    assert answer.outcome == "unknown"
    response = ocsp.load_der_ocsp_response(answer.der)
    assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN


async def test_a_stored_serial_from_another_ca_is_unknown(issuing: CertifiedKey) -> None:
    other = create_issuing_ca(create_root_ca("Old Root", now=NOW), "OCSP Devices", now=NOW)
    store = FakeStore()
    store.add(other, 104, NOW)  # same serial, same CA name, different key
    ours = device_certificate(issuing, 104, NOW)
    answer = await _responder(store, issuing).respond(_request(ours, issuing.certificate))
    assert answer.outcome == "unknown"


@pytest.mark.parametrize("garbage", [b"", b"\x30\x03abc", b"\x00" * 20_000])
async def test_garbage_is_malformed(issuing: CertifiedKey, garbage: bytes) -> None:
    answer = await _responder(FakeStore(), issuing).respond(garbage)
    assert answer.outcome == "malformed"
    response = ocsp.load_der_ocsp_response(answer.der)
    assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


async def test_another_issuer_is_unauthorized(issuing: CertifiedKey) -> None:
    other = create_root_ca("Stranger", now=NOW)
    cert = device_certificate(other, 105, NOW)
    answer = await _responder(FakeStore(), issuing).respond(_request(cert, other.certificate))
    assert answer.outcome == "unauthorized"
    response = ocsp.load_der_ocsp_response(answer.der)
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


async def test_store_down_is_try_later(issuing: CertifiedKey) -> None:
    store = FakeStore()
    cert = store.add(issuing, 106, NOW)
    store.down = True
    answer = await _responder(store, issuing).respond(_request(cert, issuing.certificate))
    assert answer.outcome == "try_later"
    response = ocsp.load_der_ocsp_response(answer.der)
    assert response.response_status is ocsp.OCSPResponseStatus.TRY_LATER
