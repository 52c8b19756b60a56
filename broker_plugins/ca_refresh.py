"""A broker's fleet CA bundle follows the fleet's issuing CAs, read from EST /cacerts.

``fleet ca rotate-issuing`` publishes the next issuing CA in ``/cacerts``
before it signs anything; ``fleet ca retire`` removes the old one. A broker
that fetches ``/cacerts`` every few seconds trusts the next CA before the
first certificate from it exists, and stops trusting a retired one, without
a restart.

Never on the server's word alone: what is adopted is the trust kernel's
decision (:mod:`fleet.kernel.ca_bundle`): issuing CAs with pathlen 0 signed
directly by a trusted root, and a new root of a rollover only through a link
certificate from a root the bundle already holds (the agent's rule). This
module only fetches, logs and writes. Anything else in the answer is dropped
and logged; a fetch that fails, or an answer with no acceptable issuing CA,
keeps the bundle as it is.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from broker_plugins.fleet_fetch import fetch
from fleet.kernel.ca_bundle import follow_cacerts
from fleet.kernel.certs import Problem, describe
from fleet.kernel.decoding import decode_certificate_fields, decoding
from fleet.kernel.errors import ConfigError, FleetError
from fleet.kernel.files import PUBLIC_MODE, write_atomic

log = logging.getLogger("fleet.broker.ca")

MAX_CACERTS_BYTES = 256 * 1024


def fetch_cacerts(
    url: str, context: ssl.SSLContext, timeout: float = 10.0
) -> list[x509.Certificate]:
    """The certificates of an EST /cacerts answer (base64 certs-only PKCS#7)."""
    if not url.startswith("https://"):
        raise ConfigError(f"cacerts_url {url!r} must be https://")
    body = fetch(url, context, what="/cacerts", limit=MAX_CACERTS_BYTES, timeout=timeout)

    def invalid(message: str) -> FleetError:
        return ConfigError(f"{url} did not answer a certs-only PKCS#7 ({message})")

    # Every field decoded here (kernel decoding): the kernel's judgement of the
    # answer must not be the first to read a name or extension that does not decode.
    with decoding("the /cacerts answer", invalid):
        certs = list(pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split()))))
        for cert in certs:
            decode_certificate_fields(cert)
    return certs


def accepted_bundle(
    current: Sequence[x509.Certificate],
    offered: Sequence[x509.Certificate],
    now: dt.datetime,
) -> list[x509.Certificate]:
    """The new bundle (the kernel's rule, :func:`fleet.kernel.ca_bundle.follow_cacerts`), logged."""
    update = follow_cacerts(current, offered, now=now)
    for problem in update.dropped:
        _warn_once(problem)
    bundle = update.bundle()
    for root in update.adopted_roots:
        log.info("adopted a new fleet root from /cacerts (link-certified): %s", describe(root))
    return bundle


_warned: set[str] = set()


def _warn_once(problem: Problem) -> None:
    # /cacerts is read every few seconds: say it once per certificate and reason, not each time.
    if problem.detail in _warned:
        return
    _warned.add(problem.detail)
    log.warning("ignored a /cacerts certificate (%s): %s", problem.reason.value, problem.detail)


def bundle_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(Encoding.PEM) for cert in certs)


def refresh_bundle(path: Path, url: str, context: ssl.SSLContext, now: dt.datetime) -> bool:
    """Fetch /cacerts and rewrite ``path`` (atomically) when the accepted set changed."""
    try:
        current_pem = path.read_bytes()
        current = x509.load_pem_x509_certificates(current_pem)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the fleet CA bundle {path}: {exc}") from exc
    new = bundle_pem(accepted_bundle(current, fetch_cacerts(url, context), now))
    if new == current_pem:
        return False
    write_atomic(path, new, mode=PUBLIC_MODE)
    log.info("fleet CA bundle %s updated from %s", path, url)
    return True
