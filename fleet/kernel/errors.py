"""The fleet exception tree.

Every error the product raises on purpose is a :class:`FleetError`. Each one
carries a short, safe ``message`` (fit for an HTTP response or a device log)
and ``diagnostics()``: what a person should do next. Only the HTTP layer maps
errors to status codes; CLIs print ``diagnostics()`` and exit non-zero.

::

    FleetError
    ├── ConfigError                     bad fleet.toml, data directory, environment
    ├── PolicyError                     the request is understood and refused
    │   ├── EncodingInvalid             body is not the base64/DER it must be (400)
    │   ├── RequestInvalid              a parameter or field is missing or wrong (400)
    │   │   └── ManifestInvalid         a manifest line is wrong (``line`` says which)
    │   ├── CsrInvalid                  not a CSR, bad signature (400)
    │   ├── KeyNotAllowed               key type outside the profile
    │   ├── DeviceIdInvalid             characters, length, reserved id
    │   ├── IdentityMismatch            CSR asks for another identity
    │   ├── UnsupportedMediaType        wrong Content-Type (415)
    │   ├── TrustDomainsMixed         a CA offered to one trust domain belongs to another
    │   ├── StateConflict               the record is not in a state the action applies to (409)
    │   │   ├── ReplacementChoiceRequired   approve of a replacement request without --replace
    │   │   └── NoReplacementRequest        --replace/--revoke without a pending request
    │   └── ConfirmationRequired        a bulk action over the cap needs an explicit confirm (428)
    ├── AuthError                       who is asking cannot be established or trusted
    │   ├── CredentialsRequired         no usable credential was presented (401)
    │   ├── RoleInsufficient            an admin's role does not allow the action (403)
    │   ├── UnknownIssuer               chain does not lead to a trusted CA
    │   ├── CertificateExpired          outside its validity, beyond the skew allowance
    │   ├── EnrollmentRefused           policy said no (reason code says which rule)
    │   ├── CertificateRevoked
    │   ├── BootstrapReused             possible clone
    │   └── TokenInvalid                unknown, used or expired enrollment token
    ├── NotFound
    │   ├── DeviceNotFound
    │   ├── CertificateNotFound
    │   └── AdminNotFound               no admin credential with that fingerprint
    ├── StoreError
    │   ├── StoreConflict               a concurrent change won; nothing was written
    │   ├── StoreUnavailable            backend down or corrupt; nothing was written
    │   └── StoreRecordInvalid          a stored record does not decode (hand-edited, foreign)
    └── TransportError
        ├── ServerUnavailable
        └── EnrollmentPending           202: retry after ``retry_after`` seconds

``reason`` is a stable machine-readable code (audit log, metrics, HTTP 403
bodies); ``message`` is for people and never contains secrets.
"""

from __future__ import annotations

from fleet.kernel.reasons import Reason


class FleetError(Exception):
    """Root of every deliberate fleet error."""

    reason: str = Reason.ERROR
    hint: str = "See the message above."

    def __init__(self, message: str, *, reason: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if hint is not None:
            self.hint = hint

    def diagnostics(self) -> str:
        """A person-readable explanation and the next step to take."""
        return f"{self.message}\n  reason: {self.reason}\n  what to do: {self.hint}"


class ConfigError(FleetError):
    reason = Reason.CONFIG_INVALID
    hint = "Fix the setting named above in fleet.toml (or its FLEET_* override) and retry."


class PolicyError(FleetError):
    reason = Reason.POLICY_REFUSED
    hint = "The request was refused by policy; it will be refused again unless it changes."


class EncodingInvalid(PolicyError):
    reason = Reason.ENCODING_INVALID
    hint = "Send the DER structure base64-encoded (RFC 8951 section 3.1)."


class RequestInvalid(PolicyError):
    reason = Reason.REQUEST_INVALID
    # The API and the CLIs both raise it: name where each describes its parameters.
    hint = (
        "Fix the value named above (`--help` lists a command's options; "
        "/api/v1/openapi.json the API's fields)."
    )


class ManifestInvalid(RequestInvalid):
    """A factory manifest that cannot be imported; ``line`` is 1-based (None: whole file)."""

    reason = Reason.MANIFEST_INVALID
    hint = "Fix the manifest line named above and import the file again; nothing was imported."

    def __init__(self, message: str, *, line: int | None = None, hint: str | None = None):
        super().__init__(f"line {line}: {message}" if line is not None else message, hint=hint)
        self.line = line


class CsrInvalid(PolicyError):
    reason = Reason.CSR_INVALID
    hint = "Send a DER PKCS#10 request (base64 for EST) signed by the key it carries."


class KeyNotAllowed(PolicyError):
    reason = Reason.KEY_NOT_ALLOWED
    hint = "Generate a key of an allowed type (see /csrattrs) and send a new CSR."


class DeviceIdInvalid(PolicyError):
    reason = Reason.DEVICE_ID_INVALID
    hint = "Device ids are 1-64 characters of A-Z a-z 0-9 . _ - and not a reserved name."


class IdentityMismatch(PolicyError):
    reason = Reason.IDENTITY_MISMATCH
    hint = "Leave the CSR subject empty or set CN to the device id; request no other names."


class UnsupportedMediaType(PolicyError):
    reason = Reason.UNSUPPORTED_MEDIA_TYPE
    hint = "Send the Content-Type the EST operation requires (RFC 7030 section 3.2.4)."


class StateConflict(PolicyError):
    reason = Reason.STATE_CONFLICT
    hint = "Look at the record's current state; the action does not apply to it."


class ReplacementChoiceRequired(StateConflict):
    """``approve`` of an active device whose bootstrap certificate was presented again."""

    reason = Reason.REPLACEMENT_CHOICE_REQUIRED
    hint = (
        'If the device was factory-reset, approve with --replace (API: {"replace": true}): '
        "its current certificates are revoked as superseded and the new key is issued at its "
        "next retry. If it is a clone, reject it (`fleet device reject ID`), adding --revoke "
        '(API: {"revoke": true}) when its operational key may be stolen too (revoked as '
        "keyCompromise). The device keeps working until you decide."
    )


class ReplacementKeyRequired(StateConflict):
    """``approve --replace`` that does not say which key, or names one the request does not."""

    reason = Reason.REPLACEMENT_KEY_REQUIRED
    hint = (
        "Confirm with the device's owner which key is the factory-reset device's (the SHA-256 "
        'of its new public key) and approve that one: --key SHA256 (API: "key_sha256"). '
        "Several keys presented with one bootstrap certificate is what a clone looks like: "
        "if in doubt, reject (--revoke)."
    )


class NoReplacementRequest(StateConflict):
    """--replace or --revoke given for a device without a pending replacement request."""

    reason = Reason.NO_REPLACEMENT_REQUEST
    hint = (
        "See the device with `fleet device show ID`. To revoke its certificates, use "
        "`fleet device revoke` or `fleet cert revoke`."
    )


class TrustDomainsMixed(PolicyError):
    """A certificate offered to one trust domain belongs to (or chains into) another."""

    reason = Reason.TRUST_DOMAINS_MIXED
    hint = (
        "Each trust domain has its own CAs: manufacturer CAs sign bootstrap certificates only; "
        "the fleet root and issuing CAs sign operational certificates only; the admin CA "
        "signs admin credentials only. Give the manufacturer's own CA certificate."
    )


class ConfirmationRequired(PolicyError):
    reason = Reason.CONFIRMATION_REQUIRED
    hint = "Check the blast radius with a dry run, then repeat with confirm (--confirm)."


class AuthError(FleetError):
    reason = Reason.AUTH_FAILED
    hint = "Present a credential the fleet trusts."


class CredentialsRequired(AuthError):
    reason = Reason.CREDENTIALS_REQUIRED
    hint = "Present a bootstrap certificate, or HTTP Basic with the device id and a one-time token."


class RoleInsufficient(AuthError):
    reason = Reason.ROLE_INSUFFICIENT
    hint = "Ask an admin for a credential with the role this action needs."


class UnknownIssuer(AuthError):
    reason = Reason.UNKNOWN_ISSUER
    hint = "Add the issuing CA to the right trust list (e.g. `fleet trust add-manufacturer`)."


class CertificateExpired(AuthError):
    reason = Reason.CERTIFICATE_EXPIRED
    hint = "The certificate is outside its validity period; check the device clock or re-enroll."


class EnrollmentRefused(AuthError):
    reason = Reason.ENROLLMENT_REFUSED
    hint = "An admin can see why with `fleet device why ID`; the request will not succeed as is."


class CertificateRevoked(AuthError):
    reason = Reason.CERTIFICATE_REVOKED
    hint = "This certificate is revoked; the device must be re-approved by an admin."


class BootstrapReused(AuthError):
    reason = Reason.BOOTSTRAP_REUSED
    hint = "The bootstrap certificate was already used; an admin must approve a re-enrollment."


class TokenInvalid(AuthError):
    reason = Reason.TOKEN_INVALID
    hint = "Ask an admin for a new one-time token (`fleet device token ID`)."


class NotFound(FleetError):
    reason = Reason.NOT_FOUND
    hint = "Check the identifier; list what exists with the matching `list` command."


class DeviceNotFound(NotFound):
    reason = Reason.DEVICE_NOT_FOUND


class CertificateNotFound(NotFound):
    reason = Reason.CERTIFICATE_NOT_FOUND


class AdminNotFound(NotFound):
    reason = Reason.ADMIN_NOT_FOUND


class StoreError(FleetError):
    reason = Reason.STORE_ERROR


class StoreConflict(StoreError):
    reason = Reason.STORE_CONFLICT
    hint = "Another request changed this record first; nothing was written. Re-read and retry."


class StoreUnavailable(StoreError):
    reason = Reason.STORE_UNAVAILABLE
    hint = "Check that the database file is readable and intact, or that Redis is reachable."


class StoreRecordInvalid(StoreError):
    """A record in the store does not decode: written by hand or by another version.

    Refused where it is read, never used as a guess; the message names the record.
    """

    reason = Reason.STORE_RECORD_INVALID
    hint = (
        "A record in the store was changed by hand or written by another fleet version. "
        "Restore it from a backup (fleet reads and writes it only through its own API)."
    )


class TransportError(FleetError):
    reason = Reason.TRANSPORT_ERROR


class ServerUnavailable(TransportError):
    reason = Reason.SERVER_UNAVAILABLE
    hint = "The server could not be reached or is overloaded; retry later with backoff."


class EnrollmentPending(TransportError):
    reason = Reason.ENROLLMENT_PENDING
    hint = "An admin must approve this device; retry after the given delay."

    def __init__(self, message: str, *, retry_after: int, reason: str | None = None):
        super().__init__(message, reason=reason)
        self.retry_after = retry_after
