"""The fleet's own CA certificates, read from the data directory into their trust domains.

The one place the server, the CLI and ``fleet init`` learn which CAs are the
fleet's (root, issuing, admin), so that the kernel's trust-domain rule
(``fleet.kernel.domains``) is always given the complete set.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from fleet.config import FleetConfig
from fleet.kernel.domains import FleetAuthorities
from fleet.kernel.errors import ConfigError
from fleet.pki.ca import load_certificates_pem


def load_fleet_authorities(config: FleetConfig) -> FleetAuthorities:
    """Root, issuing and (when the data directory has one) admin CA certificates."""
    admin = config.admin.ca_cert
    return FleetAuthorities(
        roots=_read_certificates(config.ca.root_cert, "[ca] root_cert"),
        issuing=_read_certificates(config.ca.issuing_cert, "[ca] issuing_cert"),
        admin=_read_certificates(admin, "[admin] ca_cert") if admin.exists() else (),
    )


def root_links_path(config: FleetConfig) -> Path:
    """``ca/links.pem`` beside the root bundle: the link certificates of a root rollover."""
    return config.ca.root_cert.parent / "links.pem"


def load_root_links(config: FleetConfig) -> tuple[x509.Certificate, ...]:
    """OldWithNew / NewWithOld while a root rollover is in progress; () otherwise.

    They are not trust anchors for anyone who already trusts both roots (the
    server, the brokers); /cacerts serves them so that devices pinning one root
    can check the other (``fleet.kernel.rollover``).
    """
    path = root_links_path(config)
    if not path.exists() or not path.read_bytes().strip():
        return ()
    return _read_certificates(path, "ca/links.pem (written by `fleet ca rotate-root`)")


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
