"""The simulated factory: a manufacturer CA, a bootstrap identity per device, a manifest.

A real factory gives every device an IDevID-like certificate from the
manufacturer's own CA and ships a manifest (device id, SHA-256 of the
bootstrap certificate, model, batch). This module makes the same things:
:func:`make_manufacturer` and :func:`make_bootstrap` are pure (keys and
certificates in memory), :func:`run_factory` writes them out::

    OUT/manufacturer/ca.pem     the manufacturer CA (for `fleet trust add-manufacturer`)
    OUT/manufacturer/ca.key     0600
    OUT/devices/ID/bootstrap.pem
    OUT/devices/ID/bootstrap.key   0600
    OUT/manifest.csv            for `fleet manifest import`

Bootstrap certificates are X.509 v3: CN and subject serialNumber = device id,
AKI/SKI, basicConstraints CA:FALSE, keyUsage digitalSignature, EKU clientAuth,
valid 20 years (capped by the CA), EC P-256.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.device_id import validate_device_id
from fleet.kernel.files import PUBLIC_MODE, SECRET_MODE, ensure_private_dir, write_atomic
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.keys import KeyType
from fleet.manifest import HEADER
from fleet.pki.ca import (
    CertifiedKey,
    authority_key_identifier,
    certificate_to_pem,
    create_root_ca,
    end_entity_usage,
)
from fleet.pki.keys import generate_private_key, private_key_to_pem, signing_hash
from fleet.pki.serial import random_serial

MANUFACTURER_VALIDITY = dt.timedelta(days=30 * 365)
BOOTSTRAP_VALIDITY = dt.timedelta(days=20 * 365)
_BACKDATE = dt.timedelta(minutes=5)
DEFAULT_MANUFACTURER = "Acme"
DEFAULT_MODEL = "TH-200"
DEFAULT_PREFIX = "sensor"


@dataclasses.dataclass(frozen=True, slots=True)
class FactoryDevice:
    device_id: str
    cert: Path
    key: Path
    bootstrap_sha256: str
    model: str
    batch: str


@dataclasses.dataclass(frozen=True, slots=True)
class FactoryOutput:
    out_dir: Path
    ca_cert: Path
    ca_key: Path
    manifest: Path
    devices: tuple[FactoryDevice, ...]


def default_batch(now: dt.datetime) -> str:
    """The ISO week of manufacture, e.g. 2026-W22."""
    year, week, _ = now.isocalendar()
    return f"{year}-W{week:02d}"


def device_ids(count: int, prefix: str = DEFAULT_PREFIX, start: int = 1) -> list[str]:
    """``prefix-0001`` ... (validated: they must be usable device ids)."""
    width = max(4, len(str(start + count - 1)))
    return [validate_device_id(f"{prefix}-{n:0{width}d}") for n in range(start, start + count)]


def make_manufacturer(
    name: str = DEFAULT_MANUFACTURER,
    *,
    now: dt.datetime,
    validity: dt.timedelta = MANUFACTURER_VALIDITY,
) -> CertifiedKey:
    """The manufacturer's device CA: CN "<name> Device CA", O "<name>", EC P-256, CA:TRUE."""
    return create_root_ca(
        f"{name} Device CA",
        now=now,
        key_type=KeyType.EC_P256,
        validity=validity,
        organization=name,
    )


def make_bootstrap(
    manufacturer: CertifiedKey,
    device_id: str,
    *,
    now: dt.datetime,
    validity: dt.timedelta = BOOTSTRAP_VALIDITY,
) -> CertifiedKey:
    """An IDevID-like bootstrap certificate for ``device_id`` (validated) and its new key."""
    validate_device_id(device_id)
    key = generate_private_key(KeyType.EC_P256)
    ca_cert = manufacturer.certificate
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(end_entity_usage(KeyType.EC_P256), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority_key_identifier(ca_cert), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    signer = manufacturer.private_key
    return CertifiedKey(builder.sign(signer, signing_hash(signer)), key)


def manifest_text(devices: Sequence[FactoryDevice]) -> str:
    """The manifest CSV (header first) for ``devices``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for device in devices:
        writer.writerow([device.device_id, device.bootstrap_sha256, device.model, device.batch])
    return out.getvalue()


def _write_pair(directory: Path, stem: str, pair: CertifiedKey) -> tuple[Path, Path]:
    ensure_private_dir(directory)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    write_atomic(key_path, private_key_to_pem(pair.private_key), mode=SECRET_MODE)
    write_atomic(cert_path, certificate_to_pem(pair.certificate), mode=PUBLIC_MODE)
    return cert_path, key_path


def run_factory(
    out_dir: Path,
    count: int,
    *,
    now: dt.datetime,
    manufacturer: str = DEFAULT_MANUFACTURER,
    model: str = DEFAULT_MODEL,
    batch: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    start: int = 1,
) -> FactoryOutput:
    """Make a manufacturer CA and ``count`` devices in ``out_dir``; write the manifest."""
    if count < 1:
        raise ValueError("count must be at least 1")
    ids = device_ids(count, prefix, start)  # validate before writing anything
    batch = default_batch(now) if batch is None else batch
    out_dir = out_dir.resolve()
    ensure_private_dir(out_dir)
    ca = make_manufacturer(manufacturer, now=now)
    ca_cert, ca_key = _write_pair(out_dir / "manufacturer", "ca", ca)
    devices = []
    for device_id in ids:
        pair = make_bootstrap(ca, device_id, now=now)
        cert, key = _write_pair(out_dir / "devices" / device_id, "bootstrap", pair)
        devices.append(
            FactoryDevice(
                device_id=device_id,
                cert=cert,
                key=key,
                bootstrap_sha256=sha256_fingerprint(pair.certificate),
                model=model,
                batch=batch,
            )
        )
    manifest = out_dir / "manifest.csv"
    write_atomic(manifest, manifest_text(devices).encode(), mode=PUBLIC_MODE)
    return FactoryOutput(out_dir, ca_cert, ca_key, manifest, tuple(devices))
