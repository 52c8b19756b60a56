"""The two certificates a broker host holds: its TLS server certificate and its sidecar's.

Both are minted by the fleet's CAs, either on the CA host in one go
(``fleet-broker mosquitto init`` with the fleet data directory) or from a CSR
made on the broker host, whose keys never leave it (``init --csr-only``, then
``fleet broker-cert sign``). One profile each, written here once:

* **server**: signed by the fleet root (devices' trust anchor), EKU
  serverAuth, the DNS names and IP addresses devices dial as SANs.
* **sidecar**: signed by the issuing CA (the plugin admits its chain like a
  device's), EKU clientAuth, a CN outside the device-id alphabet (``fleet:sidecar``)
  so that no device can ever hold it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.device_id import is_device_id
from fleet.kernel.errors import ConfigError, PolicyError

BrokerCertKind = Literal["server", "sidecar"]
KINDS: tuple[BrokerCertKind, ...] = ("server", "sidecar")
DEFAULT_VALIDITY = dt.timedelta(days=365)
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def split_names(names: Sequence[str]) -> tuple[list[str], list[IpAddress]]:
    """DNS names and IP addresses of ``names`` (an IP literal is an address)."""
    dns: list[str] = []
    ips: list[IpAddress] = []
    for name in names:
        try:
            ips.append(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            if not name or any(c.isspace() or c in "/@:" for c in name):
                raise ConfigError(f"{name!r} is neither a DNS name nor an IP address") from None
            dns.append(name.lower())
    return dns, ips


def _key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def broker_certificate(
    kind: BrokerCertKind,
    *,
    public_key: PublicKey,
    common_name: str,
    names: Sequence[str] = (),
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> x509.Certificate:
    """The ``kind`` certificate for ``public_key``; ConfigError when the request is wrong."""
    check_request(kind, common_name, names)
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
        raise PolicyError("an RSA key must have at least 2048 bits", reason="key_not_allowed")
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + validity, issuer_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    if kind == "server":
        dns, ips = split_names(names)
        general: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        general += [x509.IPAddress(ip) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    digest = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, digest)


def check_request(kind: BrokerCertKind, common_name: str, names: Sequence[str]) -> None:
    if kind == "server":
        if not names:
            raise ConfigError(
                "a broker server certificate needs at least one DNS name or IP",
                hint="Is this the sidecar's CSR? Sign it with --kind sidecar.",
            )
        split_names(names)
    elif kind == "sidecar":
        if not common_name or is_device_id(common_name) or any(c.isspace() for c in common_name):
            raise ConfigError(
                f"the sidecar CN {common_name!r} must contain a character outside the device-id "
                "alphabet (e.g. 'fleet:sidecar'), so that no device can ever hold it"
            )
        if names:
            raise ConfigError(
                "a sidecar certificate carries no subject alternative names",
                hint="Is this the broker's CSR? Sign it with --kind server.",
            )
    else:  # pragma: no cover - Literal
        raise ConfigError(f"unknown broker certificate kind {kind!r}")


def request_contents(
    csr: x509.CertificateSigningRequest,
) -> tuple[PublicKey, str, list[str]]:
    """(public key, CN, SAN names) of a CSR whose signature verifies; PolicyError otherwise."""
    if not csr.is_signature_valid:
        raise PolicyError("the CSR's signature does not verify", reason="csr_invalid")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise PolicyError(f"key type {type(key).__name__} is not allowed", reason="key_not_allowed")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        raise PolicyError("the CSR must name exactly one CN", reason="csr_invalid")
    names: list[str] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for entry in san:
            if isinstance(entry, x509.DNSName):
                names.append(entry.value)
            elif isinstance(entry, x509.IPAddress):
                names.append(str(entry.value))
            else:
                raise PolicyError(
                    f"the CSR asks for a {type(entry).__name__}; only DNS names and IPs",
                    reason="csr_invalid",
                )
    return key, cns[0].value, names
