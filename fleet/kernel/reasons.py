"""The reason-code vocabulary: one enum for logs, metrics, HTTP answers, the audit log and brokers.

A reason code is a stable, machine-readable word for *why* something was
refused or happened. The same condition has the same code wherever it is
decided: an expired certificate is ``certificate_expired`` in an EST 403, in
the audit log, in a broker's refusal log line and in a metric label. The C
plugin's codes are generated from this enum (``fleet.kernel.cheader``), so a
code cannot drift between Python and C.

A test (``tests/unit/kernel/test_reasons.py``) walks the source tree and
refuses any ``reason="..."`` literal that is not a member here.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # -- generic roots of the error tree -------------------------------------------
    ERROR = "error"
    CONFIG_INVALID = "config_invalid"
    POLICY_REFUSED = "policy_refused"
    AUTH_FAILED = "auth_failed"
    NOT_FOUND = "not_found"
    STORE_ERROR = "store_error"
    TRANSPORT_ERROR = "transport_error"
    INTERNAL_ERROR = "internal_error"

    # -- client-certificate admission (server, agent, both brokers) ------------------
    NO_CERTIFICATE = "no_certificate"
    UNKNOWN_ISSUER = "unknown_issuer"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    ISSUER_EXPIRED = "issuer_expired"
    NOT_CLIENT_CERT = "not_client_cert"
    KEY_NOT_ALLOWED = "key_not_allowed"
    DEVICE_ID_INVALID = "device_id_invalid"
    CLIENT_ID_MISMATCH = "client_id_mismatch"
    CERTIFICATE_REVOKED = "certificate_revoked"
    DEVICE_REVOKED = "device_revoked"
    REVOCATION_STATE_STALE = "revocation_state_stale"
    SIDECAR_PIN_MISMATCH = "sidecar_pin_mismatch"

    # -- topic ACL ------------------------------------------------------------------------
    TOPIC_NOT_ALLOWED = "topic_not_allowed"
    WILL_NOT_ALLOWED = "will_not_allowed"

    # -- trust domains --------------------------------------------------------------------
    TRUST_DOMAINS_MIXED = "trust_domains_mixed"
    NOT_A_CA = "not_a_ca"
    CA_EXPIRED = "ca_expired"
    # -- root rollover (RFC 7030 section 4.1.3) ----------------------------------------------
    ROOT_NOT_CERTIFIED = "root_not_certified"  # a new root no link from a trusted root certifies
    ROOT_STILL_IN_USE = "root_still_in_use"  # retire-root while something chains only to it
    CERTIFICATE_OUTLIVES_ISSUER = "certificate_outlives_issuer"
    CA_ROTATION_REFUSED = "ca_rotation_refused"  # promote/retire/install not possible now
    ISSUING_CSR_INVALID = "issuing_csr_invalid"  # a signing-ceremony CSR that is not acceptable
    ROOT_KEY_MISSING = "root_key_missing"  # the root is offline: sign in a ceremony

    # -- requests and encodings -------------------------------------------------------
    ENCODING_INVALID = "encoding_invalid"
    REQUEST_INVALID = "request_invalid"
    MANIFEST_INVALID = "manifest_invalid"
    CSR_INVALID = "csr_invalid"
    CSRATTRS_INVALID = "csrattrs_invalid"
    IDENTITY_MISMATCH = "identity_mismatch"
    SUBJECT_MISMATCH = "subject_mismatch"
    SAN_NOT_ALLOWED = "san_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNKNOWN_LABEL = "unknown_label"
    UNKNOWN_OPERATION = "unknown_operation"
    SERVERKEYGEN_DISABLED = "serverkeygen_disabled"
    POP_MISMATCH = "pop_mismatch"
    POP_REQUIRES_TLS12 = "pop_requires_tls12"
    PKCS7_INVALID = "pkcs7_invalid"
    TLS_UNSUPPORTED = "tls_unsupported"
    TLS_FAILED = "tls_failed"
    UNTRUSTED_PROXY_HEADER = "untrusted_proxy_header"
    CERTIFICATE_INVALID = "certificate_invalid"  # a client certificate that cannot be decoded
    REQUEST_MALFORMED = "request_malformed"  # not parseable as HTTP/1.1
    URI_TOO_LONG = "uri_too_long"
    HEADERS_TOO_LARGE = "headers_too_large"
    JSON_TOO_DEEP = "json_too_deep"
    CLIENT_GONE = "client_gone"  # the client closed the connection before its request was read
    PEM_INVALID = "pem_invalid"
    FINGERPRINT_INVALID = "fingerprint_invalid"
    REASON_INVALID = "reason_invalid"
    SELECTION_EMPTY = "selection_empty"
    STATE_CONFLICT = "state_conflict"
    CONFIRMATION_REQUIRED = "confirmation_required"
    OCSP_REQUEST_INVALID = "ocsp_request_invalid"
    OCSP_UNKNOWN_ISSUER = "ocsp_unknown_issuer"
    WEBHOOK_SIGNATURE_INVALID = "webhook_signature_invalid"
    UNEXPECTED_ANSWER = "unexpected_answer"

    # -- credentials ----------------------------------------------------------------------
    CREDENTIALS_REQUIRED = "credentials_required"
    ROLE_INSUFFICIENT = "role_insufficient"
    TOKEN_INVALID = "token_invalid"
    ADMIN_UNKNOWN = "admin_unknown"
    ADMIN_DISABLED = "admin_disabled"
    CSRF_INVALID = "csrf_invalid"  # a console form without its session's CSRF token
    SIGNED_IN = "signed_in"  # a console session began
    SIGNED_OUT = "signed_out"  # the admin ended a console session
    SESSION_EXPIRED = "session_expired"  # a console session outlived its lifetime

    # -- enrollment decisions (policy, audit log) ------------------------------------------
    ENROLLMENT_REFUSED = "enrollment_refused"
    ENROLLMENT_PENDING = "enrollment_pending"
    ENROLLMENT_TOKEN_ISSUED = "enrollment_token_issued"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_DEVICE_HELD = "unknown_device_held"
    BOOTSTRAP_PINNED = "bootstrap_pinned"
    BOOTSTRAP_PIN_MISMATCH = "bootstrap_pin_mismatch"
    BOOTSTRAP_REUSED = "bootstrap_reused"
    BOOTSTRAP_REUSED_HELD = "bootstrap_reused_held"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    TOKEN = "token"
    RENEWAL = "renewal"
    DEVICE_SUSPENDED = "device_suspended"
    DEVICE_REJECTED = "device_rejected"
    DEVICE_NOT_PENDING = "device_not_pending"
    DEVICE_NOT_ENROLLED = "device_not_enrolled"
    REPLY_REPLAYED = "reply_replayed"  # a lost-reply retry: the recorded certificate again
    # A bootstrap replay on an active device is a replacement request beside it.
    REPLACEMENT_APPROVED = "replacement_approved"
    REPLACEMENT_REJECTED = "replacement_rejected"
    REPLACEMENT_KEY_MISMATCH = "replacement_key_mismatch"
    REPLACEMENT_CHOICE_REQUIRED = "replacement_choice_required"
    NO_REPLACEMENT_REQUEST = "no_replacement_request"
    REPLACEMENT_KEY_REQUIRED = "replacement_key_required"
    SUPERSEDED = "superseded"  # older certificates revoked because a newer one replaced them

    # -- lookups, store, CRL, operations ----------------------------------------------------
    DEVICE_NOT_FOUND = "device_not_found"
    CERTIFICATE_NOT_FOUND = "certificate_not_found"
    CERTIFICATE_UNKNOWN = "certificate_unknown"
    ADMIN_NOT_FOUND = "admin_not_found"
    STORE_CONFLICT = "store_conflict"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_RECORD_INVALID = "store_record_invalid"
    SERVER_UNAVAILABLE = "server_unavailable"
    AUDIT_CHAIN_BROKEN = "audit_chain_broken"
    CRL_INVALID = "crl_invalid"
    CRL_ROLLBACK = "crl_rollback"
    CRL_UNAVAILABLE = "crl_unavailable"
    DATA_DIR_EXISTS = "data_dir_exists"
    LISTEN_FAILED = "listen_failed"

    # -- CA keys in a PKCS#11 token ----------------------------------------------------------
    PKCS11_URI_INVALID = "pkcs11_uri_invalid"
    PKCS11_MODULE_UNAVAILABLE = "pkcs11_module_unavailable"
    PKCS11_TOKEN_NOT_FOUND = "pkcs11_token_not_found"
    PKCS11_PIN_MISSING = "pkcs11_pin_missing"
    PKCS11_PIN_INCORRECT = "pkcs11_pin_incorrect"
    PKCS11_FAILED = "pkcs11_failed"  # the token refused an operation (locked, removed, ...)
    CA_KEY_MISSING = "ca_key_missing"
    CA_KEY_AMBIGUOUS = "ca_key_ambiguous"
    CA_KEY_MISMATCH = "ca_key_mismatch"  # the key is not the one the CA certificate certifies


# The codes a broker may give for refusing a connection, in the order the C
# plugin counts them (its refusal table is generated from this tuple; the last
# entry catches anything unexpected).
BROKER_REFUSALS: tuple[Reason, ...] = (
    Reason.NO_CERTIFICATE,
    Reason.UNKNOWN_ISSUER,
    Reason.CERTIFICATE_EXPIRED,
    Reason.CERTIFICATE_NOT_YET_VALID,
    Reason.ISSUER_EXPIRED,
    Reason.NOT_CLIENT_CERT,
    Reason.KEY_NOT_ALLOWED,
    Reason.DEVICE_ID_INVALID,
    Reason.CLIENT_ID_MISMATCH,
    Reason.CERTIFICATE_REVOKED,
    Reason.DEVICE_REVOKED,
    Reason.REVOCATION_STATE_STALE,
    Reason.SIDECAR_PIN_MISMATCH,
    Reason.INTERNAL_ERROR,
)

# A revoked credential, whichever was revoked: the certificate or the whole device.
REVOKED: tuple[Reason, ...] = (Reason.CERTIFICATE_REVOKED, Reason.DEVICE_REVOKED)
