"""The sidecar's identity: a client certificate of the fleet issuing CA with a reserved CN.

The plugin accepts control commands only from a client whose certificate
(1) was issued by the fleet issuing CA (name and key identifier, like every
device), (2) has CN = ``sidecar_cn`` (default ``fleet:sidecar``: the ':' is
outside the device id alphabet, so fleet can never enroll a device with that
CN), (3) when ``pin_sidecar`` is on, has exactly the SHA-256 pinned in the
plugin's options, and (4) connects with client id = that CN.

It is minted with the issuing CA key: ``fleet-broker mosquitto init`` (or
``sidecar-cert``) where that key lives, or, on a broker host without it,
``init --csr-only`` there and ``fleet broker-cert sign --kind sidecar`` on the
CA host (the key never leaves the broker host). The profiles of this and of
the broker's TLS server certificate are in :mod:`fleet.kernel.broker_certs`.
It is not recorded in the store and cannot be revoked through the feed:
rotate it (new certificate, regenerate the config so the pin changes, restart
the broker) if its key leaks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.kernel.broker_certs import (
    DEFAULT_VALIDITY,
    BrokerCertKind,
    SigningKey,
    broker_certificate,
    check_request,
    split_names,
)
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import PUBLIC_MODE, SECRET_MODE, write_atomic


def load_ca(
    cert_path: Path, key_path: Path, passphrase: bytes | None
) -> tuple[x509.Certificate, SigningKey]:
    """A fleet CA (certificate + key); ConfigError with a hint when it cannot be loaded."""
    try:
        ca_cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(key_path.read_bytes(), passphrase)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot load the CA ({cert_path}, {key_path}): {exc}",
            hint="Give the fleet data directory's CA certificate and key (ca/*.pem, ca/*.key); "
            "an encrypted key needs FLEET_CA_KEY_PASSPHRASE.",
        ) from exc
    if not isinstance(ca_key, SigningKey):
        raise ConfigError(f"the CA key type {type(ca_key).__name__} is not supported")
    return ca_cert, ca_key


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """The private key, PKCS#8 PEM, mode 0600 from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem, mode=SECRET_MODE)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE)


def write_csr(
    path: Path,
    key: ec.EllipticCurvePrivateKey,
    kind: BrokerCertKind,
    common_name: str,
    names: Sequence[str] = (),
) -> None:
    """A CSR for ``fleet broker-cert sign`` (the CA host writes the profile, not the CSR)."""
    check_request(kind, common_name, names)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if names:
        dns, ips = split_names(names)
        general: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        general += [x509.IPAddress(ip) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    csr = builder.sign(key, hashes_sha256())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, csr.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE)


def hashes_sha256() -> hashes.SHA256:
    return hashes.SHA256()


def issue_sidecar_certificate(
    *,
    issuing_cert: Path,
    issuing_key: Path,
    passphrase: bytes | None,
    common_name: str,
    out_cert: Path,
    out_key: Path,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> x509.Certificate:
    """Mint the sidecar's certificate and key (P-256) and write them (key mode 0600)."""
    return _mint_and_write(
        "sidecar", load_ca(issuing_cert, issuing_key, passphrase), common_name, (),
        out_cert=out_cert, out_key=out_key, now=now, validity=validity,
    )  # fmt: skip


def issue_server_certificate(
    *,
    root_cert: Path,
    root_key: Path,
    passphrase: bytes | None,
    names: Sequence[str],
    out_cert: Path,
    out_key: Path,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> x509.Certificate:
    """Mint the broker's TLS server certificate (fleet root, SANs ``names``) and key (0600)."""
    return _mint_and_write(
        "server", load_ca(root_cert, root_key, passphrase), names[0], names,
        out_cert=out_cert, out_key=out_key, now=now, validity=validity,
    )  # fmt: skip


def _mint_and_write(
    kind: BrokerCertKind,
    ca: tuple[x509.Certificate, SigningKey],
    common_name: str,
    names: Sequence[str],
    *,
    out_cert: Path,
    out_key: Path,
    now: dt.datetime,
    validity: dt.timedelta,
) -> x509.Certificate:
    """A new P-256 key and its ``kind`` certificate signed by ``ca``, both written (key 0600)."""
    ca_cert, ca_key = ca
    key = new_key()
    cert = broker_certificate(
        kind, public_key=key.public_key(), common_name=common_name, names=names,
        issuer_cert=ca_cert, issuer_key=ca_key, now=now, validity=validity,
    )  # fmt: skip
    write_key(out_key, key)
    write_cert(out_cert, cert)
    return cert
