"""The CRL the sidecar installs for Mosquitto (``crl_backstop``): fetched from fleet
serve's /crl, validated (nothing unvalidated is ever installed: a garbage CRL turns
Mosquitto's checking off, an expired one refuses every device), written atomically,
and the broker sent SIGHUP.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import ssl
import time
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from broker_plugins.fleet_fetch import DEADLINE_SECONDS, FetchFailed, fetch
from broker_plugins.mosquitto.config import (
    MosquittoSettings,
)
from broker_plugins.mosquitto.trust_files import write_public
from fleet.kernel.crl_check import check_crl
from fleet.kernel.crl_check import crl_number as kernel_crl_number
from fleet.kernel.crl_check import parse_crl as kernel_parse_crl
from fleet.kernel.errors import FleetError

log = logging.getLogger("fleet.broker.mosquitto")

# A CRL installed for Mosquitto must stay valid at least this long.
MIN_CRL_REMAINING = dt.timedelta(minutes=10)
MAX_CRL_BYTES = 64 * 1024 * 1024


def signal_broker(pid_file: Path) -> bool:
    """SIGHUP the broker named by the PID file; False if it is not running.

    The process must be a ``mosquitto``: a stale PID file must not make us
    signal whatever process reused the number.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    if comm != "mosquitto":
        log.warning("PID file %s names process %d (%s), not mosquitto", pid_file, pid, comm)
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


# -- CRL -------------------------------------------------------------------------


# Said with every refusal: what the sidecar did about it.
KEPT = "The installed crlfile was kept. Check the fleet server's /crl and the clocks."


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """The fetched or installed CRL, every field decoded (fleet.kernel.crl_check)."""
    return kernel_parse_crl(data, KEPT)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return kernel_crl_number(crl, KEPT)


def validate_crl(
    data: bytes,
    issuer: x509.Certificate,
    *,
    now: dt.datetime,
    installed_number: int | None,
    min_remaining: dt.timedelta = MIN_CRL_REMAINING,
) -> x509.CertificateRevocationList:
    """The parsed CRL if Mosquitto may load it (the kernel's CRL rule, never older than
    the installed one); PolicyError (``crl_invalid``) if not."""
    return check_crl(
        data, issuer, now=now, min_remaining=min_remaining, not_below=installed_number, hint=KEPT
    )


def installed_crl_number(path: Path, issuer: x509.Certificate) -> int | None:
    """The CRL number of the crlfile in place, if it is a CRL of ``issuer``."""
    try:
        crl = parse_crl(path.read_bytes())
        return crl_number(crl) if crl.issuer == issuer.subject else None
    except (OSError, FleetError):
        return None


def fetch_crl(url: str, cafile: Path, *, deadline: float = DEADLINE_SECONDS) -> bytes:
    try:
        return fetch(
            url,
            ssl.create_default_context(cafile=str(cafile)),
            what="the CRL",
            limit=MAX_CRL_BYTES,
            headers={"Accept": "application/pkix-crl"},
            deadline=deadline,
        )
    except FetchFailed as exc:
        raise FleetError(exc.message, reason="crl_unavailable") from exc


class CrlKeeper:
    """Installs the newest valid CRL of the issuing CA as Mosquitto's crlfile."""

    def __init__(self, settings: MosquittoSettings, issuer: x509.Certificate) -> None:
        self._settings = settings
        self._issuer = issuer
        # Unix time the installed crlfile was last fetched and validated (0: none).
        # A CRL of the issuer already in place (`sync --once`, an earlier run) counts
        # from when it was written, so its age is known before the first fetch.
        self.installed_at = 0.0
        if installed_crl_number(settings.crlfile, issuer) is not None:
            with contextlib.suppress(OSError):
                self.installed_at = settings.crlfile.stat().st_mtime

    def refresh(self, want: Iterable[int] = ()) -> tuple[bool, set[int]]:
        """Fetch, validate and install the CRL if newer. Returns (installed, missing serials).

        ``missing`` are serials of ``want`` the fetched CRL does not list yet
        (the server re-signs its CRL shortly after a revocation).
        """
        s = self._settings
        data = fetch_crl(s.crl_url, s.crl_cafile or s.root_ca)
        installed = installed_crl_number(s.crlfile, self._issuer)
        crl = validate_crl(
            data, self._issuer, now=dt.datetime.now(dt.UTC), installed_number=installed
        )
        listed = {entry.serial_number for entry in crl}
        missing = set(want) - listed
        if installed is not None and crl_number(crl) == installed:
            self.installed_at = time.time()
            return False, missing
        write_public(s.crlfile, crl.public_bytes(Encoding.PEM))
        self.installed_at = time.time()
        # Only a crlfile Mosquitto reads needs a reload (and a reload re-checks every session).
        hupped = signal_broker(s.pid_file) if s.crl_backstop else False
        log.info(
            "installed CRL #%d (%d revoked)%s",
            crl_number(crl),
            len(listed),
            "; broker reloaded" if hupped else "",
            extra={
                "fields": {
                    "event": "crl_installed",
                    "crl_number": crl_number(crl),
                    "revoked": len(listed),
                    "broker_reloaded": hupped,
                }
            },
        )
        return True, missing


# -- MQTT link to the plugin --------------------------------------------------
