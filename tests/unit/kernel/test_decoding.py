"""One place turns cryptography's ways of refusing input into a client error (4xx)."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives import serialization

from fleet.kernel.decoding import decoding, load_certificate
from fleet.kernel.errors import CsrInvalid, EncodingInvalid, PolicyError
from fleet.pki.csr import load_csr
from fleet.pki.ocsp import parse_ocsp_request
from tests.support import hostile
from tests.support.factory import make_bootstrap, make_manufacturer


@pytest.fixture(scope="module")
def bootstrap_der() -> tuple[bytes, object]:
    manufacturer = make_manufacturer("Unit")
    cert = make_bootstrap(manufacturer, "dev-1").certificate
    return cert.public_bytes(serialization.Encoding.DER), manufacturer


@pytest.mark.parametrize("kind", ["v2", "printable"])
def test_certificates_cryptography_cannot_load_are_certificate_invalid(
    bootstrap_der: tuple[bytes, object], kind: str
) -> None:
    der, manufacturer = bootstrap_der
    make = hostile.v2_certificate if kind == "v2" else hostile.invalid_printable_string
    bad = make(der, manufacturer)  # type: ignore[arg-type]
    for data, pem in ((bad, False), (hostile.pem(bad), True)):
        with pytest.raises(EncodingInvalid) as caught:
            load_certificate(data, pem=pem)
        assert caught.value.reason == "certificate_invalid"
    assert load_certificate(der, pem=False).serial_number > 0


def test_a_csr_whose_version_is_not_0_is_csr_invalid() -> None:
    with pytest.raises(CsrInvalid, match="version"):
        load_csr(hostile.csr_with_version(hostile.csr_der(), 1))


@pytest.mark.parametrize("serial", [-1, 0, 2**159])
def test_an_ocsp_serial_that_is_not_a_positive_20_octet_integer_is_refused(
    bootstrap_der: tuple[bytes, object], serial: int
) -> None:
    manufacturer = bootstrap_der[1]
    issuer = manufacturer.certificate  # type: ignore[attr-defined]
    with pytest.raises(PolicyError) as caught:
        parse_ocsp_request(hostile.ocsp_request(issuer, serial))
    assert caught.value.reason == "ocsp_request_invalid"
    assert parse_ocsp_request(hostile.ocsp_request(issuer, 2**159 - 1)).serial_number > 0


def test_an_unexpected_exception_while_decoding_is_refused_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING, "fleet.decoding"),
        pytest.raises(EncodingInvalid),
        decoding("a test input"),
    ):
        raise RecursionError("maximum recursion depth exceeded")
    (record,) = caplog.records
    assert "RecursionError" in record.getMessage()
    assert record.exc_info is None  # a line, not a traceback
