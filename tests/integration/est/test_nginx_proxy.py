"""Proxy mode: a real nginx terminates TLS and forwards the client certificate."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.est.conftest import Fleet
from tests.support.binaries import need_binary
from tests.support.est_client import curl
from tests.support.nginx import Nginx, proxied_fleet
from tests.support.openssl import openssl

PROXY = "127.0.0.2"  # nginx connects from here; fleet trusts only this address


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Nginx]]:
    with proxied_fleet(tmp_path_factory.mktemp("proxy"), PROXY) as running:
        yield running


def est(nginx: Nginx, operation: str) -> str:
    return f"https://127.0.0.1:{nginx.port}/.well-known/est/{operation}"


def test_enroll_and_reenroll_through_nginx(proxied: tuple[Fleet, Nginx]) -> None:
    fleet, nginx = proxied
    root = fleet.server.root_pem
    device = fleet.new_device()
    key, csr = fleet.csr("px")
    result = curl(
        est(nginx, "simpleenroll"), cacert=root, cert=device.cert, key=device.key,
        content_type="application/pkcs10", data_file=csr,
    )  # fmt: skip
    cert = fleet.issued(result, "px")
    openssl("verify", "-CAfile", root, "-untrusted", fleet.server.issuing_pem, cert)
    _, csr2 = fleet.csr("px2")
    renewed = curl(
        est(nginx, "simplereenroll"), cacert=root, cert=cert, key=key,
        content_type="application/pkcs10", data_file=csr2,
    )  # fmt: skip
    assert renewed.status == 200, renewed.text


def test_a_header_forged_through_nginx_never_reaches_fleet(proxied: tuple[Fleet, Nginx]) -> None:
    fleet, nginx = proxied
    device = fleet.new_device()
    forged = quote(Path(device.cert).read_text())
    _, csr = fleet.csr("forged")
    result = curl(
        est(nginx, "simpleenroll"), cacert=fleet.server.root_pem,
        headers={"X-SSL-Client-Cert": forged},
        content_type="application/pkcs10", data_file=csr,
    )  # fmt: skip
    assert result.status == 401  # nginx replaced the header: no certificate at all


def test_a_forged_header_from_an_untrusted_address_is_refused(
    proxied: tuple[Fleet, Nginx],
) -> None:
    fleet, _ = proxied
    device = fleet.new_device()
    forged = quote(Path(device.cert).read_text())
    _, csr = fleet.csr("direct")
    result = curl(
        fleet.server.est("simpleenroll"), cacert=fleet.server.root_pem,
        headers={"X-SSL-Client-Cert": forged},
        content_type="application/pkcs10", data_file=csr,
    )  # fmt: skip
    assert result.status == 403
    assert result.headers["x-fleet-reason"] == "untrusted_proxy_header"


def test_nginx_staples_a_good_ocsp_answer_from_fleet(proxied: tuple[Fleet, Nginx]) -> None:
    fleet, nginx = proxied
    exe = need_binary("openssl")
    deadline = time.monotonic() + 30
    while True:  # nginx fetches the OCSP answer after the first handshake that asks
        result = subprocess.run(
            [exe, "s_client", "-connect", f"127.0.0.1:{nginx.port}", "-status",
             "-CAfile", str(fleet.server.root_pem), "-servername", "localhost"],
            input=b"", capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        out = result.stdout.decode(errors="replace")
        if "OCSP Response Status: successful" in out or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "OCSP Response Status: successful" in out, out
    assert "Cert Status: good" in out, out
    assert "Verify return code: 0 (ok)" in out, out
