"""The sidecar's identity: a client certificate of the fleet issuing CA with a reserved CN.

The plugin accepts control commands only from a client whose certificate
(1) was issued by the fleet issuing CA (name and key identifier, like every
device), (2) has CN = ``sidecar_cn`` (default ``fleet:sidecar``: the ':' is
outside the device id alphabet, so fleet can never enroll a device with that
CN), (3) when ``pin_sidecar`` is on, has exactly the SHA-256 pinned in the
plugin's options, and (4) connects with client id = that CN.

It is minted with the issuing CA key, so run ``fleet-broker mosquitto
sidecar-cert`` where that key lives (the fleet server host) and copy the
certificate and key to the broker host. It is not recorded in the store and
cannot be revoked through the feed: rotate it (new certificate, regenerate
the config so the pin changes, restart the broker) if its key leaks.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.errors import ConfigError

DEFAULT_VALIDITY = dt.timedelta(days=365)


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
    try:
        ca_cert = x509.load_pem_x509_certificate(issuing_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(issuing_key.read_bytes(), passphrase)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot load the issuing CA ({issuing_cert}, {issuing_key}): {exc}",
            hint="Give the fleet issuing CA certificate and key (ca/issuing.pem, ca/issuing.key); "
            "an encrypted key needs FLEET_CA_KEY_PASSPHRASE.",
        ) from exc
    if not isinstance(
        ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigError(f"the issuing CA key type {type(ca_key).__name__} is not supported")
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(
            ca_key,
            None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256(),
        )
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    out_key.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(out_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key_pem)
    out_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert
