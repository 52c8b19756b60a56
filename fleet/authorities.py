"""The fleet's own CA certificates, read from the data directory into their trust domains.

The one place the server, the CLI and ``fleet init`` learn which CAs are the
fleet's (root, issuing, admin), so that the kernel's trust-domain rule
(``fleet.kernel.domains``) is always given the complete set.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from fleet.ca_registry import list_issuers
from fleet.config import FleetConfig
from fleet.kernel.domains import FleetAuthorities
from fleet.kernel.errors import ConfigError
from fleet.pki.ca import load_certificates_pem


def load_fleet_authorities(config: FleetConfig) -> FleetAuthorities:
    """Root, issuing and (when the data directory has one) admin CA certificates.

    ``issuing`` is every issuing CA of the registry (``fleet.ca_registry``):
    current first, then next and retiring, all trusted during a rotation.
    """
    admin = config.admin.ca_cert
    # Read through the config path first so that a missing current issuer
    # gives the setting's name.
    _read_certificates(config.ca.issuing_cert, "[ca] issuing_cert")
    return FleetAuthorities(
        roots=_read_certificates(config.ca.root_cert, "[ca] root_cert"),
        issuing=tuple(issuer.certificate for issuer in list_issuers(config)),
        admin=_read_certificates(admin, "[admin] ca_cert") if admin.exists() else (),
    )


def _read_certificates(path: Path, setting: str) -> tuple[x509.Certificate, ...]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the fleet CA certificate {path}: {exc.strerror}",
            hint=f"Check {setting} in fleet.toml; the fleet's own CAs are needed to keep trust "
            "domains apart (they can never be manufacturer CAs).",
        ) from exc
    return tuple(load_certificates_pem(data))
