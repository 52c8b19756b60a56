"""Where each fleet CA key lives (a file, or a PKCS#11 token) and the one way to load it.

Every CA key — root, issuing (which also signs the CRL and OCSP answers) and
admin — is loaded here, from a PEM file (the default) or from the token its
``key_store`` URI names. Either way the caller gets a cryptography private-key
object and signs through it, so nothing else changes when the key is in a
token. A key is only handed out after checking that it is the key its CA
certificate certifies: a wrong key fails at startup, not at the first
enrollment.

This module takes the settings structurally (it may not import ``fleet.config``,
being part of the pure PKI package); secrets come in from the CLI, which is
the only place that reads them.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.kernel.errors import ConfigError
from fleet.kernel.keys import KeyType
from fleet.kernel.reasons import Reason
from fleet.pki.ca import CertifiedKey
from fleet.pki.keys import PrivateKey, load_private_key_pem
from fleet.pki.pkcs11_key import (
    TokenEcPrivateKey,
    TokenRsaPrivateKey,
    generate_token_key,
    load_token_key,
)
from fleet.pki.pkcs11_session import open_token
from fleet.pki.pkcs11_uri import Pkcs11Uri, parse_pkcs11_uri

FILE_STORE = "file"


class KeyRole(enum.StrEnum):
    ROOT = "root"
    ISSUING = "issuing"  # device certificates, the CRL, OCSP answers
    ADMIN = "admin"


class _CaSettings(Protocol):
    @property
    def root_cert(self) -> Path: ...
    @property
    def issuing_cert(self) -> Path: ...
    @property
    def issuing_key(self) -> Path: ...
    @property
    def key_store(self) -> str: ...
    @property
    def root_key_store(self) -> str: ...
    @property
    def pkcs11_module(self) -> Path | None: ...


class _AdminSettings(Protocol):
    @property
    def ca_cert(self) -> Path: ...
    @property
    def ca_key(self) -> Path: ...
    @property
    def key_store(self) -> str: ...


class KeySettings(Protocol):
    """The part of ``FleetConfig`` that says where the CA keys are."""

    @property
    def ca(self) -> _CaSettings: ...
    @property
    def admin(self) -> _AdminSettings: ...


@dataclasses.dataclass(frozen=True, slots=True)
class KeyLocation:
    """Where one CA key lives: a file path, or a PKCS#11 URI (never with a PIN)."""

    name: str  # root, issuing, admin
    where: str
    store: Literal["file", "pkcs11"]


@dataclasses.dataclass(frozen=True, slots=True)
class CaKeySecrets:
    """What unlocks the CA keys: a file key's passphrase, the token's user PIN."""

    passphrase: bytes | None = None
    pkcs11_pin: bytes | None = None

    def __repr__(self) -> str:  # never print a secret, even in a traceback
        return "CaKeySecrets(...)"


def _where(config: KeySettings, role: KeyRole) -> tuple[str, str, Path]:
    """(setting name, its value, the key file used when the value is "file")."""
    match role:
        case KeyRole.ROOT:
            ca = config.ca
            return "[ca] root_key_store", ca.root_key_store, ca.root_cert.with_suffix(".key")
        case KeyRole.ISSUING:
            return "[ca] key_store", config.ca.key_store, config.ca.issuing_key
        case KeyRole.ADMIN:
            return "[admin] key_store", config.admin.key_store, config.admin.ca_key


def certificate_path(config: KeySettings, role: KeyRole) -> Path:
    """The CA certificate that certifies the key of ``role``."""
    match role:
        case KeyRole.ROOT:
            return config.ca.root_cert
        case KeyRole.ISSUING:
            return config.ca.issuing_cert
        case KeyRole.ADMIN:
            return config.admin.ca_cert


def key_uri(config: KeySettings, role: KeyRole) -> Pkcs11Uri | None:
    """The token key ``role`` is configured to use, or None for a file key."""
    setting, value, _ = _where(config, role)
    if value == FILE_STORE:
        return None
    return parse_pkcs11_uri(value, setting=setting, key_required=True)


def key_locations(config: KeySettings) -> list[KeyLocation]:
    """Where each CA key lives, for `fleet ca status` (no secret, no key material)."""
    locations = []
    for role in KeyRole:
        uri = key_uri(config, role)
        if uri is None:
            locations.append(KeyLocation(role.value, str(_where(config, role)[2]), "file"))
        else:
            locations.append(KeyLocation(role.value, str(uri), "pkcs11"))
    return locations


def load_ca_key(
    config: KeySettings, role: KeyRole, certificate: x509.Certificate, secrets: CaKeySecrets
) -> CertifiedKey:
    """The CA key of ``role``, checked to be the key ``certificate`` certifies.

    ConfigError with the reason when the key is missing (file or token object),
    locked (passphrase, PIN), or not the certificate's key (``ca_key_mismatch``).
    """
    setting, _, path = _where(config, role)
    uri = key_uri(config, role)
    key: PrivateKey
    if uri is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the {role.value} CA key {path}: {exc.strerror}",
                reason=Reason.CA_KEY_MISSING,
                hint=f"Put the key there, or point {setting} at the PKCS#11 key holding it.",
            ) from exc
        key = load_private_key_pem(data, secrets.passphrase)
    else:
        module = config.ca.pkcs11_module
        if module is None:  # pragma: no cover - fleet.config refuses this already
            raise ConfigError(f"{setting} needs [ca] pkcs11_module")
        session = open_token(module, uri, secrets.pkcs11_pin or b"")
        key = load_token_key(session, uri)
    require_matching_key(certificate, key, what=f"the {role.value} CA key ({setting})")
    return CertifiedKey(certificate, key)


def require_matching_key(certificate: x509.Certificate, key: PrivateKey, *, what: str) -> None:
    """ConfigError ``ca_key_mismatch`` unless ``key`` is the one ``certificate`` certifies."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = certificate.public_key().public_bytes(serialization.Encoding.DER, spki)
    if ours != theirs:
        raise ConfigError(
            f"{what} is not the key of certificate {certificate.subject.rfc4514_string()!r}",
            reason=Reason.CA_KEY_MISMATCH,
            hint="The certificate and the key do not belong together: point the setting at "
            "the key the certificate was issued for (or restore the matching certificate).",
        )


class TokenKeyMaker:
    """Makes `fleet init`'s CA keys inside a token, labelled ``fleet-<role>``."""

    def __init__(self, module: Path, token: Pkcs11Uri, pin: bytes) -> None:
        self._session = open_token(module, token, pin, rw=True)

    def make(self, role: KeyRole, key_type: KeyType) -> PrivateKey:
        return generate_token_key(self._session, f"fleet-{role.value}", key_type)


def token_uri_of(key: PrivateKey) -> Pkcs11Uri | None:
    """The URI of a token-backed key (what `fleet init` records), None for an in-memory key."""
    if isinstance(key, TokenEcPrivateKey | TokenRsaPrivateKey):
        return key.uri
    return None
