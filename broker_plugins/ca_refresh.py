"""A broker's fleet CA bundle follows the fleet's issuing CAs, read from EST /cacerts.

``fleet ca rotate-issuing`` publishes the next issuing CA in ``/cacerts``
before it signs anything; ``fleet ca retire`` removes the old one. A broker
that fetches ``/cacerts`` every few seconds trusts the next CA before the
first certificate from it exists, and stops trusting a retired one, without
a restart.

Never on the server's word alone: only the roots the bundle already holds are
trust anchors (a new root comes with a rollover, not from here), and only a
CA certificate that one of them signed directly with pathlen 0 is taken as an
issuing CA. Anything else in the answer is dropped and logged. A fetch that
fails keeps the bundle as it is.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import ssl
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from fleet.kernel.errors import ConfigError
from fleet.kernel.files import PUBLIC_MODE, write_atomic

log = logging.getLogger("fleet.broker.ca")

MAX_CACERTS_BYTES = 256 * 1024


def fetch_cacerts(
    url: str, context: ssl.SSLContext, timeout: float = 10.0
) -> list[x509.Certificate]:
    """The certificates of an EST /cacerts answer (base64 certs-only PKCS#7)."""
    if not url.startswith("https://"):
        raise ConfigError(f"cacerts_url {url!r} must be https://")
    request = urllib.request.Request(url)  # noqa: S310 - https only, checked above
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
        body = response.read(MAX_CACERTS_BYTES + 1)
    if len(body) > MAX_CACERTS_BYTES:
        raise ConfigError(f"{url} answered more than {MAX_CACERTS_BYTES} bytes")
    try:
        return list(pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split()))))
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"{url} did not answer a certs-only PKCS#7: {exc}") from exc


def _is_root(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _pathlen(cert) is not None


def _pathlen(cert: x509.Certificate) -> int | None:
    """pathlen of a CA certificate (-1 = unlimited); None for a non-CA."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    if not bc.ca:
        return None
    return -1 if bc.path_length is None else bc.path_length


def _signed_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def accepted_bundle(
    current: Sequence[x509.Certificate],
    offered: Sequence[x509.Certificate],
    now: dt.datetime,
) -> list[x509.Certificate]:
    """The new bundle: offered issuing CAs signed by a root of ``current``, then those roots."""
    roots = [cert for cert in current if _is_root(cert)]
    if not roots:
        raise ConfigError("the fleet CA bundle holds no root to check /cacerts against")
    issuing: list[x509.Certificate] = []
    for cert in offered:
        if _is_root(cert) or cert in issuing:
            continue
        named = [r for r in roots if r.subject == cert.issuer]
        why = ""
        if not named:
            why = "not signed by a root this broker trusts"
        elif _pathlen(cert) != 0:
            why = "not a pathlen-0 CA"
        elif cert.not_valid_after_utc <= now:
            why = "expired"
        elif not any(_signed_by(cert, root) for root in named):  # roots may share a name
            why = "signature does not verify under the root"
        if why:
            _warn_once(cert, why)
            continue
        issuing.append(cert)
    if not issuing:
        raise ConfigError("/cacerts offered no issuing CA under a trusted root; bundle kept")
    return [*issuing, *roots]


_warned: set[bytes] = set()


def _warn_once(cert: x509.Certificate, why: str) -> None:
    # /cacerts is read every few seconds: say it once per certificate, not each time.
    # Root-rollover link certificates (pathlen 1) land here too; they are not issuing CAs.
    fingerprint = cert.fingerprint(hashes.SHA256())
    if fingerprint in _warned:
        return
    _warned.add(fingerprint)
    log.warning("ignored a /cacerts certificate %s: %s", cert.subject.rfc4514_string(), why)


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
