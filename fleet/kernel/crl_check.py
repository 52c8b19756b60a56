"""Whether a CRL may be served or installed: one rule for the server and the Mosquitto sidecar.

A CRL that fails here must never replace a good one: Mosquitto runs with no
revocation checking after reloading a garbage crlfile and refuses every device
after loading an expired one; a server must not serve a damaged CRL read back
from its store. The bytes are not trusted before the signature is checked, and
cryptography decodes names, extensions and entries lazily (raising ValueError,
TypeError and others on bad ones), so every field is decoded here first.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from fleet.kernel.decoding import decoding
from fleet.kernel.errors import PolicyError
from fleet.kernel.reasons import Reason

# A thisUpdate this far ahead of our clock is a CRL from the future (or a clock off).
FUTURE_SKEW = dt.timedelta(minutes=5)
DEFAULT_HINT = "Nothing was replaced; check the fleet server's CRL and the clocks."


def crl_invalid(message: str, hint: str = DEFAULT_HINT) -> PolicyError:
    return PolicyError(message, reason=Reason.CRL_INVALID, hint=hint)


def parse_crl(data: bytes, hint: str = DEFAULT_HINT) -> x509.CertificateRevocationList:
    """The CRL in ``data`` (PEM or DER) with every field decoded; PolicyError if not."""
    with decoding("the CRL", lambda message: crl_invalid(message, hint)):
        if data.lstrip().startswith(b"-----"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        crl.issuer.rfc4514_string()
        crl.last_update_utc  # noqa: B018
        crl.next_update_utc  # noqa: B018
        for extension in crl.extensions:
            extension.value  # noqa: B018
        for entry in crl:
            entry.serial_number  # noqa: B018
            entry.revocation_date_utc  # noqa: B018
            for extension in entry.extensions:
                extension.value  # noqa: B018
    return crl


def crl_number(crl: x509.CertificateRevocationList, hint: str = DEFAULT_HINT) -> int:
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound as exc:
        raise crl_invalid("the CRL has no CRL number", hint) from exc
    if number < 0:
        raise crl_invalid("the CRL number is negative", hint)
    return number


def check_crl(
    data: bytes,
    issuer: x509.Certificate,
    *,
    now: dt.datetime,
    min_remaining: dt.timedelta,
    not_below: int | None = None,
    hint: str = DEFAULT_HINT,
) -> x509.CertificateRevocationList:
    """The parsed CRL if it is a current CRL signed by ``issuer``, valid at least
    ``min_remaining`` more, numbered at least ``not_below``; PolicyError
    (``crl_invalid``) naming what is wrong otherwise."""
    crl = parse_crl(data, hint)
    if crl.issuer != issuer.subject:
        raise crl_invalid(f"the CRL names issuer {crl.issuer.rfc4514_string()!r}", hint)
    public_key: CertificateIssuerPublicKeyTypes = issuer.public_key()  # type: ignore[assignment]
    if not crl.is_signature_valid(public_key):
        raise crl_invalid("the CRL signature does not verify with the issuing CA", hint)
    next_update = crl.next_update_utc
    if next_update is None:
        raise crl_invalid("the CRL has no nextUpdate", hint)
    if next_update - now < min_remaining:
        raise crl_invalid(
            f"the CRL's nextUpdate {next_update.isoformat()} is not at least "
            f"{min_remaining} after now ({now.isoformat()})",
            hint,
        )
    if crl.last_update_utc > now + FUTURE_SKEW:
        raise crl_invalid(f"the CRL's thisUpdate {crl.last_update_utc.isoformat()} is ahead", hint)
    number = crl_number(crl, hint)
    if not_below is not None and number < not_below:
        raise crl_invalid(f"CRL #{number} is older than #{not_below}", hint)
    return crl
