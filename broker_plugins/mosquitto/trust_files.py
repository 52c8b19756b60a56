"""The trust files the sidecar keeps for Mosquitto and the plugin: cafile, capath
(Mosquitto re-reads it per handshake) and the plugin's issuing-CA set, following
the fleet's /cacerts by the kernel's rule (fleet.kernel.ca_bundle).
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from broker_plugins.ca_refresh import refresh_bundle
from broker_plugins.mosquitto.config import (
    MosquittoSettings,
)
from broker_plugins.subject_hash import subject_hash
from fleet.kernel.ca_bundle import bundle_roots
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import PUBLIC_MODE, write_atomic

log = logging.getLogger("fleet.broker.mosquitto")


def write_public(path: Path, data: bytes) -> None:
    """Atomically replace a file Mosquitto (possibly another user) reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=PUBLIC_MODE)


def write_cafile(settings: MosquittoSettings) -> None:
    """Mosquitto's cafile: the issuing CA and the root (a chain must reach the root).

    With cacerts_url, the issuing set (once there is one) as well: it holds the
    roots adopted in a rollover (see refresh_issuing_set for why capath is not
    enough for them).
    """
    try:
        data = settings.issuing_ca.read_bytes().rstrip() + b"\n" + settings.root_ca.read_bytes()
        if settings.cacerts_url and settings.issuing_set.exists():
            known = x509.load_pem_x509_certificates(data)
            followed = x509.load_pem_x509_certificates(settings.issuing_set.read_bytes())
            data += b"".join(c.public_bytes(Encoding.PEM) for c in followed if c not in known)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the fleet CA certificates: {exc}") from exc
    write_public(settings.cafile, data)


def write_cadir(settings: MosquittoSettings) -> None:
    """Mosquitto's capath: every CA of the issuing set under ``<subject hash>.<n>``.

    Each file is written atomically before a stale one is removed, so a
    handshake never finds the directory without a CA it needs.
    """
    certs = x509.load_pem_x509_certificates(settings.issuing_set.read_bytes())
    directory = settings.cadir
    directory.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, bytes] = {}
    for cert in certs:
        stem = subject_hash(cert.subject)
        n = 0
        while f"{stem}.{n}" in wanted:
            n += 1
        wanted[f"{stem}.{n}"] = cert.public_bytes(Encoding.PEM)
    for name, data in wanted.items():
        if not (directory / name).exists() or (directory / name).read_bytes() != data:
            write_public(directory / name, data)
    for stale in directory.iterdir():
        if stale.name not in wanted:
            stale.unlink()


def seed_issuing_set(settings: MosquittoSettings) -> None:
    """First start with cacerts_url: the configured issuing CAs and root, until /cacerts works."""
    if settings.issuing_set.exists():
        return
    try:
        data = settings.issuing_ca.read_bytes().rstrip() + b"\n" + settings.root_ca.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the fleet CA certificates: {exc}") from exc
    write_public(settings.issuing_set, data)


def refresh_issuing_set(settings: MosquittoSettings) -> bool:
    """Follow /cacerts (the kernel's rule, fleet.kernel.ca_bundle); True when it changed.

    A new root (a rollover, link-certified) reaches the plugin at the SIGHUP, but
    not Mosquitto's TLS layer: OpenSSL looks capath up only for names it has not
    cached, and the new root has the old one's name. It is written into cafile,
    which Mosquitto reads at its next start, and the operator is told to restart it.
    """
    context = cacerts_context(settings)
    before = _roots_of(settings.issuing_set)
    changed = refresh_bundle(
        settings.issuing_set, settings.cacerts_url, context, dt.datetime.now(dt.UTC)
    )
    if changed or not settings.cadir.exists():
        write_cadir(settings)
    if changed:
        write_cafile(settings)
        if any(root not in before for root in _roots_of(settings.issuing_set)):
            log.warning(
                "a new fleet root was adopted from /cacerts (root rollover): the plugin trusts "
                "it now, Mosquitto's TLS layer only once mosquitto is restarted (cafile %s "
                "holds it); restart mosquitto before devices under the new root connect",
                settings.cafile,
                extra={"fields": {"event": "fleet_root_adopted", "restart_needed": True}},
            )
    return changed


def cacerts_context(settings: MosquittoSettings) -> ssl.SSLContext:
    """Trust for fetching /cacerts: crl_cafile, or root_ca and the roots adopted from it.

    After ``fleet ca retire-root`` the server's certificate comes from the new root:
    a node that adopted it keeps following /cacerts with the root_ca it was set up with.
    """
    context = ssl.create_default_context(cafile=str(settings.crl_cafile or settings.root_ca))
    if settings.crl_cafile is None:
        for root in _roots_of(settings.issuing_set):
            context.load_verify_locations(cadata=root.public_bytes(Encoding.PEM).decode())
    return context


def _roots_of(bundle: Path) -> list[x509.Certificate]:
    try:
        return bundle_roots(x509.load_pem_x509_certificates(bundle.read_bytes()))
    except (OSError, ValueError):
        return []


def load_issuing_ca(settings: MosquittoSettings) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(settings.issuing_ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the issuing CA {settings.issuing_ca}: {exc}") from exc
