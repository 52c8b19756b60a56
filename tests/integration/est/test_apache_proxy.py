"""Proxy mode behind a real Apache httpd 2.4 running docs/apache/fleet-est.conf.

With SSLVerifyClient optional_no_ca, Apache has a client certificate on some
connections and none on others. Both must reach fleet correctly: a
certificate as the URL-escaped header, no certificate as none (Apache's
"(null)" included), or token enrollment and bearer-token admin calls break.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.apache import Apache
from tests.support.est_client import curl
from tests.support.nginx import REPO
from tests.support.openssl import openssl

PROXY = "127.0.0.3"  # Apache connects from here (ProxySourceAddress); fleet trusts only it


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Apache]]:
    base = tmp_path_factory.mktemp("apache")
    env = {"FLEET_SERVER_MODE": "proxy", "FLEET_SERVER_TRUSTED_PROXIES": f'["{PROXY}"]'}
    with running_fleet(base, env=env, scheme="http") as fleet:
        apache = Apache(
            base / "apache",
            REPO / "docs/apache/fleet-est.conf",
            {
                "FLEET": f"127.0.0.1:{fleet.server.port}",
                "CERT": str(fleet.server.data_dir / "tls/server.pem"),
                "KEY": str(fleet.server.data_dir / "tls/server.key"),
                "PROXY_BIND": PROXY,
            },
        ).start()
        try:
            yield fleet, apache
        finally:
            apache.stop()


def url(apache: Apache, path: str) -> str:
    return f"https://127.0.0.1:{apache.port}{path}"


def fleet_cli(fleet: Fleet, *args: str | Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args), "--config", fleet.server.config_path],
        capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if k != "FLEET_CONFIG"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_enroll_and_reenroll_through_apache(proxied: tuple[Fleet, Apache]) -> None:
    fleet, apache = proxied
    root = fleet.server.root_pem
    device = fleet.new_device()
    key, csr = fleet.csr("ap")
    result = curl(
        url(apache, "/.well-known/est/simpleenroll"), cacert=root, cert=device.cert,
        key=device.key, content_type="application/pkcs10", data_file=csr,
    )  # fmt: skip
    cert = fleet.issued(result, "ap")
    openssl("verify", "-CAfile", root, "-untrusted", fleet.server.issuing_pem, cert)
    _, csr2 = fleet.csr("ap2")
    renewed = curl(
        url(apache, "/.well-known/est/simplereenroll"), cacert=root, cert=cert, key=key,
        content_type="application/pkcs10", data_file=csr2,
    )  # fmt: skip
    assert renewed.status == 200, renewed.text


def test_token_enrollment_without_a_certificate_through_apache(
    proxied: tuple[Fleet, Apache],
) -> None:
    fleet, apache = proxied
    token_file = fleet.work / "apache-token"
    fleet_cli(fleet, "device", "token", "apache-tok", "--out", token_file)
    _, csr = fleet.csr("tok")
    result = curl(
        url(apache, "/.well-known/est/simpleenroll"), cacert=fleet.server.root_pem,
        user=f"apache-tok:{token_file.read_text().strip()}",
        content_type="application/pkcs10", data_file=csr,
    )  # fmt: skip
    assert result.status == 200, (result.status, result.text)


def test_bearer_token_admin_call_through_apache(proxied: tuple[Fleet, Apache]) -> None:
    fleet, apache = proxied
    token_file = fleet.work / "apache-admin-token"
    fleet_cli(fleet, "admin", "token", "apache-ci", "--role", "viewer", "--out", token_file)
    result = curl(
        url(apache, "/api/v1/devices"), cacert=fleet.server.root_pem,
        headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
    )  # fmt: skip
    assert result.status == 200, (result.status, result.text)


def test_a_header_forged_through_apache_never_reaches_fleet(
    proxied: tuple[Fleet, Apache],
) -> None:
    fleet, apache = proxied
    device = fleet.new_device()
    _, csr = fleet.csr("forged")
    result = curl(
        url(apache, "/.well-known/est/simpleenroll"), cacert=fleet.server.root_pem,
        headers={"X-SSL-Client-Cert": quote(Path(device.cert).read_text())},
        content_type="application/pkcs10", data_file=csr,
    )  # fmt: skip
    assert result.status == 401  # Apache replaced the header: no certificate at all


def test_the_naive_header_form_without_a_certificate_is_no_certificate(
    proxied: tuple[Fleet, Apache], tmp_path: Path
) -> None:
    # "%{SSL_CLIENT_CERT}s" sends "(null)" when the client sent no certificate;
    # fleet reads that as none (it used to answer 400 certificate_invalid).
    fleet, _ = proxied
    shipped = (REPO / "docs/apache/fleet-est.conf").read_text()
    escaped = '"expr=%{escape:%{SSL_CLIENT_CERT}}"'
    assert escaped in shipped
    naive_conf = tmp_path / "naive.conf"
    naive_conf.write_text(shipped.replace(escaped, '"%{SSL_CLIENT_CERT}s"'))
    naive = Apache(
        tmp_path / "apache",
        naive_conf,
        {
            "FLEET": f"127.0.0.1:{fleet.server.port}",
            "CERT": str(fleet.server.data_dir / "tls/server.pem"),
            "KEY": str(fleet.server.data_dir / "tls/server.key"),
            "PROXY_BIND": PROXY,
        },
    ).start()
    try:
        token_file = fleet.work / "naive-admin-token"
        fleet_cli(fleet, "admin", "token", "naive-ci", "--role", "viewer", "--out", token_file)
        result = curl(
            url(naive, "/api/v1/devices"), cacert=fleet.server.root_pem,
            headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
        )  # fmt: skip
        assert result.status == 200, (result.status, result.text)
        device_token = fleet.work / "naive-device-token"
        fleet_cli(fleet, "device", "token", "naive-tok", "--out", device_token)
        _, csr = fleet.csr("naive")
        enrolled = curl(
            url(naive, "/.well-known/est/simpleenroll"), cacert=fleet.server.root_pem,
            user=f"naive-tok:{device_token.read_text().strip()}",
            content_type="application/pkcs10", data_file=csr,
        )  # fmt: skip
        assert enrolled.status == 200, (enrolled.status, enrolled.text)
        no_credentials = curl(url(naive, "/api/v1/devices"), cacert=fleet.server.root_pem)
        assert no_credentials.status == 401, (no_credentials.status, no_credentials.text)
    finally:
        naive.stop()
