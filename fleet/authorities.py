"""The fleet's own CA certificates, read from the data directory into their trust domains.

The one place the server, the CLI and ``fleet init`` learn which CAs are the
fleet's (root, issuing, admin), so that the kernel's trust-domain rule
(``fleet.kernel.domains``) is always given the complete set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography import x509

from fleet.ca_registry import list_issuers
from fleet.config import FleetConfig
from fleet.kernel.domains import FleetAuthorities
from fleet.kernel.errors import ConfigError, FleetError
from fleet.pki.ca import load_certificates_pem

log = logging.getLogger("fleet.authorities")


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


class PublishedCas:
    """The roots part of /cacerts: every trusted root (signing root first) and, during a
    root rollover, the link certificates (RFC 7030 section 4.1.3); the issuing CAs in
    front of them come from the live issuing set (fleet.authority.issuers).

    Re-read when ``fleet ca rotate-root``/``retire-root`` replaced the files (a
    new inode, size or mtime), so a running server publishes a rollover
    without a restart; a damaged file keeps the last good answer (logged).
    """

    def __init__(self, config: FleetConfig) -> None:
        self._config = config
        self._paths = (config.ca.root_cert, root_links_path(config))
        self._stamp: tuple[tuple[int, int, int] | None, ...] = ()
        self._chain: tuple[x509.Certificate, ...] = ()
        self.chain()
        if not self._chain:  # at startup a broken root bundle is a configuration error
            raise ConfigError(f"cannot publish the fleet CAs from {self._paths[0]}")

    def chain(self) -> tuple[x509.Certificate, ...]:
        stamp = tuple(_stamp(path) for path in self._paths)
        if stamp != self._stamp:
            try:
                roots = _read_certificates(self._config.ca.root_cert, "[ca] root_cert")
                links = load_root_links(self._config)
            except FleetError as exc:
                log.error("keeping the published CA certificates: %s", exc.message)
                if not self._chain:
                    raise
                return self._chain
            self._chain, self._stamp = (*roots, *links), stamp
        return self._chain


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


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
