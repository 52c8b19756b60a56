"""A stand-in manufacturer for tests: a manufacturer CA, bootstrap certificates, manifests.

Real factories give each device an IDevID-like bootstrap certificate from their
own CA and ship a manifest CSV; these helpers make the same things in memory
(pure functions on top of fleet.pki and cryptography) so that tests of trust,
manifest import and EST enrollment start from realistic material.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.keys import KeyType, key_type_of
from fleet.manifest import HEADER
from fleet.pki.ca import (
    CertifiedKey,
    authority_key_identifier,
    certificate_to_pem,
    create_root_ca,
    end_entity_usage,
)
from fleet.pki.keys import generate_private_key, signing_hash
from fleet.pki.serial import random_serial
from fleet.records import ManifestEntry

BOOTSTRAP_VALIDITY = dt.timedelta(days=20 * 365)
MANUFACTURER_VALIDITY = dt.timedelta(days=30 * 365)
_BACKDATE = dt.timedelta(minutes=5)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_manufacturer(
    name: str = "Acme",
    now: dt.datetime | None = None,
    *,
    key_type: KeyType = KeyType.EC_P256,
    validity: dt.timedelta = MANUFACTURER_VALIDITY,
) -> CertifiedKey:
    """A manufacturer root CA: CN "<name> Device CA", O "<name>", 30 years, EC P-256."""
    return create_root_ca(
        f"{name} Device CA",
        now=now or _now(),
        key_type=key_type,
        validity=validity,
        organization=name,
    )


def make_bootstrap(
    manufacturer: CertifiedKey,
    device_id: str,
    *,
    now: dt.datetime | None = None,
    serial_number_attr: bool = True,
    not_after: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
    client_auth: bool = True,
    common_name: str | None = None,
    key_type: KeyType = KeyType.EC_P256,
) -> CertifiedKey:
    """An IDevID-like bootstrap certificate for ``device_id``, signed by ``manufacturer``.

    Subject: CN = ``common_name`` or ``device_id``, and (``serial_number_attr``)
    serialNumber = ``device_id``. The device id is NOT validated, so tests can
    make certificates with hostile ids. Validity: from ``now`` minus 5 minutes
    for 20 years, capped by the CA; pass ``not_after`` in the past for an
    expired certificate. ``client_auth`` adds EKU clientAuth.
    """
    now = now or _now()
    key = generate_private_key(key_type)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name or device_id)]
    if serial_number_attr:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id))
    ca_cert = manufacturer.certificate
    if not_after is None:
        not_after = min(now + BOOTSTRAP_VALIDITY, ca_cert.not_valid_after_utc)
    if not_before is None:
        not_before = min(now - _BACKDATE, not_after - dt.timedelta(days=365))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(end_entity_usage(key_type_of(key)), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority_key_identifier(ca_cert), critical=False)
    )
    if client_auth:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    signer = manufacturer.private_key
    return CertifiedKey(builder.sign(signer, signing_hash(signer)), key)


def write_pem(path: Path, certified: CertifiedKey) -> tuple[Path, Path]:
    """Write the certificate to ``path`` (.pem) and its key beside it (.key, mode 0600)."""
    cert_path = path if path.suffix == ".pem" else path.with_name(path.name + ".pem")
    key_path = cert_path.with_suffix(".key")
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(certificate_to_pem(certified.certificate))
    key_pem = certified.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key_pem)
    key_path.chmod(0o600)  # O_CREAT's mode does not apply to an existing file
    return cert_path, key_path


def manifest_entry(
    bootstrap: CertifiedKey, *, device_id: str | None = None, model: str = "", batch: str = ""
) -> ManifestEntry:
    """The manifest line the factory writes for ``bootstrap`` (device id from its CN)."""
    if device_id is None:
        (cn,) = bootstrap.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        device_id = str(cn.value)
    return ManifestEntry(
        device_id=device_id,
        bootstrap_sha256=sha256_fingerprint(bootstrap.certificate),
        model=model,
        batch=batch,
    )


def manifest_csv(rows: Iterable[ManifestEntry | Sequence[str]]) -> str:
    """A manifest CSV (header included) of ``rows``: entries or raw cells."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for row in rows:
        if isinstance(row, ManifestEntry):
            writer.writerow([row.device_id, row.bootstrap_sha256, row.model, row.batch])
        else:
            writer.writerow(row)
    return out.getvalue()
