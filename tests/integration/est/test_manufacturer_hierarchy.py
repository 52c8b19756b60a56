"""Manufacturer hierarchies (IEEE 802.1AR): root → intermediate → device, made by `openssl`.

The admin trusts the manufacturer's root only. A device is accepted when its
intermediate comes from the admin's pool (`fleet trust add-intermediate`) or
from the device's own TLS handshake; behind nginx only the pool can help,
since nginx forwards the leaf alone.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.est_client import HttpResult, curl
from tests.support.manufacturer_pki import Issued, issue, root_ca
from tests.support.nginx import Nginx, proxied_fleet

PROXY = "127.0.0.2"
LINE_CA = "CN=Initech Line 7 CA,O=Initech"


def cli(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", "trust", "--config", str(config), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "FLEET_CONFIG"},
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


class Hierarchy:
    """Initech: root (trusted) → line CA (pathlen 0) → devices."""

    def __init__(self, fleet: Fleet, directory: Path) -> None:
        self.fleet = fleet
        self.dir = directory
        self.root = root_ca(directory, "Initech Root CA")
        self.line = issue(directory, self.root, "/O=Initech/CN=Initech Line 7 CA", ca=True)
        self.config = fleet.server.config_path
        ok(cli(self.config, "add-manufacturer", self.root.cert))
        self._n = 0

    def device(self, issuer: Issued | None = None) -> tuple[str, Issued]:
        self._n += 1
        device_id = f"initech-{self._n:03d}-{self.dir.name[-6:]}"
        subject = f"/CN={device_id}/serialNumber={device_id}"
        device = issue(self.dir, issuer or self.line, subject, ca=False)
        entry = device.manifest_entry(device_id)
        now = dt.datetime.now(dt.UTC)
        self.fleet.server.store(lambda s: s.import_manifest([entry], now))
        return device_id, device

    def enroll(self, url: str, cert: Path, key: Path) -> HttpResult:
        _, csr = self.fleet.csr("h")
        return curl(
            url, cacert=self.fleet.server.root_pem, cert=cert, key=key,
            content_type="application/pkcs10", data_file=csr,
        )  # fmt: skip


def eventually(request: Callable[[], HttpResult], status: int) -> HttpResult:
    """The server reloads its trust lists within seconds: wait for that, not a fixed time."""
    deadline = time.monotonic() + 15
    while True:
        result = request()
        if result.status == status or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def assert_unknown_issuer_names_the_line_ca(result: HttpResult) -> None:
    assert result.status == 403, result.text
    assert result.headers["x-fleet-reason"] == "unknown_issuer"
    assert LINE_CA in result.text
    assert "fleet trust add-intermediate" in result.text


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hierarchy]:
    base = tmp_path_factory.mktemp("hierarchy")
    with running_fleet(base) as fleet:
        yield Hierarchy(fleet, base / "initech")


def test_the_leaf_alone_is_refused_naming_the_missing_intermediate(direct: Hierarchy) -> None:
    _, device = direct.device()
    result = direct.enroll(direct.fleet.server.est("simpleenroll"), device.cert, device.key)
    assert_unknown_issuer_names_the_line_ca(result)


def test_the_intermediate_sent_in_the_handshake_is_used(direct: Hierarchy) -> None:
    _, device = direct.device()
    chain = device.chain_file(direct.line)  # curl sends the leaf and the line CA
    result = direct.enroll(direct.fleet.server.est("simpleenroll"), chain, device.key)
    assert result.status == 200, result.text


def test_an_intermediate_from_the_pool_admits_the_leaf_alone(direct: Hierarchy) -> None:
    added = ok(cli(direct.config, "add-intermediate", direct.line.cert))
    assert "Added manufacturer intermediate CA 'Initech Line 7 CA'" in added
    fingerprint = added.split("sha256: ")[1].split()[0]
    listed = ok(cli(direct.config, "list"))
    assert fingerprint in listed
    assert "intermediate" in listed
    try:
        _, device = direct.device()
        url = direct.fleet.server.est("simpleenroll")
        result = eventually(lambda: direct.enroll(url, device.cert, device.key), 200)
        assert result.status == 200, result.text
    finally:
        ok(cli(direct.config, "remove-intermediate", fingerprint))
    assert fingerprint not in ok(cli(direct.config, "list"))
    _, after = direct.device()
    refused = eventually(lambda: direct.enroll(url, after.cert, after.key), 403)
    assert_unknown_issuer_names_the_line_ca(refused)


def test_an_intermediate_below_an_untrusted_root_is_not_added(direct: Hierarchy) -> None:
    other = root_ca(direct.dir / "globex", "Globex Root CA")
    line = issue(direct.dir / "globex", other, "/O=Globex/CN=Globex Line CA", ca=True)
    result = cli(direct.config, "add-intermediate", line.cert)
    assert result.returncode == 1
    assert "unknown_issuer" in result.stderr
    assert "Globex Root CA" in result.stderr
    assert "Globex Line CA" not in ok(cli(direct.config, "list"))


def test_an_intermediate_of_the_fleet_is_refused(direct: Hierarchy) -> None:
    data = direct.fleet.server.data_dir
    fleet_root = Issued(data / "ca/root.pem", data / "ca/root.key")
    rogue = issue(direct.dir / "rogue", fleet_root, "/CN=Rogue Line CA", ca=True)
    result = cli(direct.config, "add-intermediate", rogue.cert)
    assert result.returncode == 1
    assert "trust_domains_mixed" in result.stderr


def test_path_length_constraints_are_honoured(direct: Hierarchy) -> None:
    # A root that may have no intermediate below it (pathlen 0).
    strict = root_ca(direct.dir / "strict", "Initech Strict Root CA", pathlen=0)
    ok(cli(direct.config, "add-manufacturer", strict.cert))
    line = issue(direct.dir / "strict", strict, "/O=Initech/CN=Initech Strict Line CA", ca=True)
    _, device = direct.device(line)
    url = direct.fleet.server.est("simpleenroll")
    # The server sees a newly trusted root within its trust cache (2 s); until then the
    # refusal is "no issuer", after it the chain is built and refused for its length.
    deadline = time.monotonic() + 10
    while True:
        result = direct.enroll(url, device.chain_file(line), device.key)
        assert result.status == 403, result.text
        assert result.headers["x-fleet-reason"] == "unknown_issuer"
        if "path length constraint violated" in result.text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "path length constraint violated" in result.text


def test_max_chain_depth_bounds_the_chain(tmp_path: Path) -> None:
    with running_fleet(tmp_path, env={"FLEET_POLICY_MAX_CHAIN_DEPTH": "0"}) as fleet:
        hierarchy = Hierarchy(fleet, tmp_path / "initech")
        _, device = hierarchy.device()
        url = fleet.server.est("simpleenroll")
        deep = hierarchy.enroll(url, device.chain_file(hierarchy.line), device.key)
        assert deep.status == 403, deep.text
        assert "max depth" in deep.text
        # Signed by the root itself: depth 0 is fine.
        _, flat = hierarchy.device(hierarchy.root)
        assert hierarchy.enroll(url, flat.cert, flat.key).status == 200


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hierarchy, Nginx]]:
    base = tmp_path_factory.mktemp("hierarchy-proxy")
    with proxied_fleet(base, PROXY) as (fleet, nginx):
        yield Hierarchy(fleet, base / "initech"), nginx


def test_behind_nginx_the_pool_admits_the_device(proxied: tuple[Hierarchy, Nginx]) -> None:
    hierarchy, nginx = proxied
    url = f"https://127.0.0.1:{nginx.port}/.well-known/est/simpleenroll"
    _, device = hierarchy.device()
    # nginx forwards the leaf only, even when the device sends its chain.
    before = hierarchy.enroll(url, device.chain_file(hierarchy.line), device.key)
    assert_unknown_issuer_names_the_line_ca(before)
    ok(cli(hierarchy.config, "add-intermediate", hierarchy.line.cert))
    result = eventually(lambda: hierarchy.enroll(url, device.cert, device.key), 200)
    assert result.status == 200, result.text
