"""Trust domains and the one rule that keeps them apart (pure).

A fleet has four kinds of certificate authority, each trusted for one purpose:

* **manufacturer** CAs sign bootstrap (factory) certificates; an admin lists them;
* the fleet **root** and its **issuing** CAs sign operational device
  certificates (and the server's and the broker sidecar's own identities);
* the **admin** CA (below the root) signs admin credentials.

If one CA belonged to two domains, a credential of one kind would pass as
another: the admin CA trusted as a manufacturer lets an admin's certificate
enroll as a device; the issuing CA trusted as a manufacturer lets any device
re-bootstrap under another name. :func:`check_manufacturer_ca` is the only
place this is decided, for the API, the CLI and ``fleet init`` alike.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.kernel.certs import is_ca, issued_by
from fleet.kernel.errors import TrustDomainsMixed
from fleet.kernel.fingerprint import sha256_fingerprint


class TrustDomain(enum.StrEnum):
    MANUFACTURER = "manufacturer"
    FLEET_ROOT = "fleet root"
    FLEET_ISSUING = "fleet issuing"
    ADMIN = "admin"


@dataclasses.dataclass(frozen=True, slots=True)
class FleetAuthorities:
    """The fleet's own CAs by domain. No certificate or key may appear in two domains."""

    roots: tuple[x509.Certificate, ...]
    issuing: tuple[x509.Certificate, ...]
    admin: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[bytes, TrustDomain] = {}
        for domain, cert in self.by_domain():
            for identity in (_sha256(cert), _spki(cert)):
                other = seen.setdefault(identity, domain)
                if other is not domain:
                    raise TrustDomainsMixed(
                        f"CA {_name(cert)} is configured both as {other} CA and as {domain} CA"
                    )

    def by_domain(self) -> Iterable[tuple[TrustDomain, x509.Certificate]]:
        for cert in self.roots:
            yield TrustDomain.FLEET_ROOT, cert
        for cert in self.issuing:
            yield TrustDomain.FLEET_ISSUING, cert
        for cert in self.admin:
            yield TrustDomain.ADMIN, cert


def check_manufacturer_ca(cert: x509.Certificate, fleet: FleetAuthorities) -> None:
    """Raise TrustDomainsMixed if ``cert`` belongs to, or chains into, a fleet domain.

    Refused: any fleet CA itself (same certificate, or the same key under
    another certificate), a CA issued by a fleet CA (it would let the fleet's
    keys mint bootstrap certificates), and a CA that issued a fleet CA (a
    cross-certificate above the fleet root).
    """
    identities = {_sha256(cert), _spki(cert)}
    for domain, own in fleet.by_domain():
        if identities & {_sha256(own), _spki(own)}:
            raise TrustDomainsMixed(
                f"certificate {_name(cert)} is this fleet's {domain} CA "
                f"(SHA-256 {sha256_fingerprint(own)[:16]}…)"
            )
    fleet_cas = [own for _, own in fleet.by_domain()]
    parent = issued_by(cert, fleet_cas)
    if parent is not None:
        raise TrustDomainsMixed(
            f"certificate {_name(cert)} was issued by this fleet's CA {_name(parent)}"
        )
    if is_ca(cert):
        for own in fleet_cas:
            if own.subject != own.issuer and issued_by(own, [cert]) is not None:
                raise TrustDomainsMixed(
                    f"certificate {_name(cert)} issued this fleet's CA {_name(own)}"
                )


def _sha256(cert: x509.Certificate) -> bytes:
    return sha256_fingerprint(cert).encode()


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _name(cert: x509.Certificate) -> str:
    return repr(cert.subject.rfc4514_string() or "(empty subject)")
