"""A new fleet root and the link certificates between it and the old one (pure).

RFC 4210 section 4.4 / RFC 7030 section 4.1.3: the old root's key signs
**OldWithNew** (the new root's subject and key), the new root's key signs
**NewWithOld** (the old root's subject and key). A device that pins the old
root learns the new one through OldWithNew (``fleet.kernel.rollover`` decides
whether it may); relying parties already on the new root verify what the old
root signed through NewWithOld. The links live exactly as long as the overlap:
after it, the old root is retired and nobody needs to cross over any more.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509

from fleet.kernel.errors import ConfigError, PolicyError
from fleet.kernel.keys import key_type_of
from fleet.pki._time import require_utc
from fleet.pki.ca import CA_BACKDATE, CertifiedKey, authority_key_identifier, create_root_ca
from fleet.pki.keys import signing_hash
from fleet.pki.serial import random_serial


@dataclasses.dataclass(frozen=True)
class NewRoot:
    """The new root (with its key) and the two link certificates."""

    new_root: CertifiedKey
    old_with_new: x509.Certificate  # new root's subject and key, signed by the old root's key
    new_with_old: x509.Certificate  # old root's subject and key, signed by the new root's key

    @property
    def links(self) -> tuple[x509.Certificate, x509.Certificate]:
        return (self.old_with_new, self.new_with_old)


def roll_root(
    old: CertifiedKey,
    *,
    now: dt.datetime,
    overlap: dt.timedelta | None = None,
) -> NewRoot:
    """A new root like ``old`` (same subject, key type and lifetime) and the links between them.

    ``overlap`` (default: until the old root expires) is how long the links,
    and so the crossing from the old root to the new one, stay valid; it
    never extends past the old root's own end.
    """
    require_utc(now)
    old_cert = old.certificate
    if now >= old_cert.not_valid_after_utc:
        raise PolicyError(
            f"the fleet root {old_cert.subject.rfc4514_string()!r} expired at "
            f"{old_cert.not_valid_after_utc.isoformat()}: devices that pin it can no longer "
            "be led to a new root",
            reason="ca_expired",
            hint="Devices must be re-provisioned with the new root's fingerprint.",
        )
    end = old_cert.not_valid_after_utc
    if overlap is not None:
        if overlap <= dt.timedelta(0):
            raise ConfigError(f"the overlap must be positive, got {overlap}")
        end = min(end, now + overlap)
    lifetime = old_cert.not_valid_after_utc - old_cert.not_valid_before_utc - CA_BACKDATE
    new = create_root_ca(
        "",
        subject=old_cert.subject,  # same name: the links are self-issued (RFC 4210 section 4.4)
        now=now,
        key_type=key_type_of(old.private_key.public_key()),
        validity=lifetime,
    )
    return NewRoot(
        new_root=new,
        old_with_new=link_certificate(new.certificate, old, now=now, not_after=end),
        new_with_old=link_certificate(old_cert, new, now=now, not_after=end),
    )


def link_certificate(
    subject: x509.Certificate, signer: CertifiedKey, *, now: dt.datetime, not_after: dt.datetime
) -> x509.Certificate:
    """``subject``'s name, key and CA constraints, signed by ``signer``'s key."""
    require_utc(now)
    constraints = subject.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = subject.extensions.get_extension_for_class(x509.KeyUsage).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject.subject)
        .issuer_name(signer.certificate.subject)
        .public_key(subject.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(min(not_after, signer.certificate.not_valid_after_utc))
        .add_extension(constraints, critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject.public_key()), critical=False
        )
        .add_extension(authority_key_identifier(signer.certificate), critical=False)
    )
    return builder.sign(signer.private_key, signing_hash(signer.private_key))
