"""A real fleet server with one trusted manufacturer, driven by curl + openssl."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import CertifiedKey
from fleet.records import ManifestEntry, ManufacturerCA
from tests.support.est_client import HttpResult, certs_from_response, curl, make_csr
from tests.support.factory import make_bootstrap, make_manufacturer, write_pem
from tests.support.fleet_server import FleetServer, make_data_dir

_ids = itertools.count(1)


@dataclasses.dataclass
class Device:
    device_id: str
    bootstrap: CertifiedKey
    cert: Path  # bootstrap certificate PEM
    key: Path  # bootstrap key


@dataclasses.dataclass
class Fleet:
    server: FleetServer
    manufacturer: CertifiedKey
    work: Path

    def new_device(
        self,
        *,
        in_manifest: bool = True,
        device_id: str | None = None,
        manufacturer: CertifiedKey | None = None,
        **bootstrap_args: object,
    ) -> Device:
        device_id = device_id or f"dev-{next(_ids):04d}"
        bootstrap = make_bootstrap(
            manufacturer or self.manufacturer,
            device_id,
            now=dt.datetime.now(dt.UTC),
            **bootstrap_args,  # type: ignore[arg-type]
        )
        safe = device_id.replace("/", "_")
        cert, key = write_pem(self.work / f"boot-{safe}-{next(_ids)}", bootstrap)
        if in_manifest:
            entry = ManifestEntry(device_id, sha256_fingerprint(bootstrap.certificate), "m1", "b1")
            self.server.store(lambda s: s.import_manifest([entry], dt.datetime.now(dt.UTC)))
        return Device(device_id, bootstrap, cert, key)

    def csr(self, name: str, subject: str = "/") -> tuple[Path, Path]:
        return make_csr(self.work, f"{name}-{next(_ids)}", subject=subject)

    def enroll(
        self,
        device: Device | None,
        csr_b64: Path,
        *,
        label: str | None = None,
        **kwargs: object,
    ) -> HttpResult:
        return curl(
            self.server.est("simpleenroll", label),
            cacert=self.server.root_pem,
            cert=device.cert if device else None,
            key=device.key if device else None,
            content_type="application/pkcs10",
            data_file=csr_b64,
            **kwargs,  # type: ignore[arg-type]
        )

    def reenroll(self, cert: Path, key: Path, csr_b64: Path) -> HttpResult:
        return curl(
            self.server.est("simplereenroll"),
            cacert=self.server.root_pem,
            cert=cert,
            key=key,
            content_type="application/pkcs10",
            data_file=csr_b64,
        )

    def issued(self, result: HttpResult, name: str) -> Path:
        assert result.status == 200, (result.status, result.text)
        return certs_from_response(result.body, self.work, f"{name}-{next(_ids)}")


def trust_manufacturer(server: FleetServer, manufacturer: CertifiedKey, name: str) -> None:
    pem = manufacturer.certificate.public_bytes(serialization.Encoding.PEM).decode()
    ca = ManufacturerCA(
        sha256_fingerprint(manufacturer.certificate), name, pem, dt.datetime.now(dt.UTC)
    )
    server.store(lambda s: s.add_manufacturer_ca(ca))


@contextlib.contextmanager
def running_fleet(
    base: Path,
    *,
    env: dict[str, str] | None = None,
    workers: int = 1,
    config_text: str = "",
    scheme: str = "https",
) -> Iterator[Fleet]:
    """A data directory, a running server with one trusted manufacturer, and a work dir."""
    config = make_data_dir(base / "data")
    if config_text:
        with config.open("a") as f:
            f.write(config_text)
    server = FleetServer(config, env=env, workers=workers, scheme=scheme).start()
    try:
        manufacturer = make_manufacturer("Acme", now=dt.datetime.now(dt.UTC))
        trust_manufacturer(server, manufacturer, "Acme")
        work = base / "work"
        work.mkdir()
        yield Fleet(server, manufacturer, work)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # A label with its own profile, to test /.well-known/est/<label>/.
    labels = '\n[labels.sensors]\nvalidity_days = 7\nkey_types = ["ec-p256"]\n'
    with running_fleet(tmp_path_factory.mktemp("est"), config_text=labels) as running:
        yield running
