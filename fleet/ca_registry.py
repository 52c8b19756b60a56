"""The set of issuing CAs (current, next, retiring), kept as files in the data directory.

Layout, beside ``[ca] issuing_cert`` (default ``ca/``)::

    issuing.pem / issuing.key            current: signs every new certificate
    issuing-next.pem / issuing-next.key  next: trusted and published, signs nothing yet
                                         (the key alone: a signing ceremony is under way)
    retiring/<issuer_id>.pem / .key       retiring: still trusted; its key signs only its
                                         CRL and OCSP answers, until ``fleet ca retire``
    issuing-generation                   a counter bumped by every change of the set
    issuing-set.pem                      every trusted issuing CA, current first: for a
                                         broker beside the server (Mosquitto's issuing_ca)
    renew-before                         ``fleet device renew --all --before DATE``

The current issuer keeps the path every existing reader uses (the brokers'
init, ``fleet broker-cert``), so a data directory that never rotated is
unchanged. Every change is a sequence of atomic file writes ordered so that a
crash between two of them leaves a set the server can load (the new issuer is
written before the old one is removed), and ends with the generation bump that
running servers poll (``fleet serve`` re-reads the set when it changes, and on
SIGHUP). Several nodes share it by sharing (or syncing) the ``ca/`` directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from pathlib import Path

from cryptography import x509

from fleet.config import FleetConfig
from fleet.kernel.errors import ConfigError, PolicyError
from fleet.kernel.files import PUBLIC_MODE, SECRET_MODE, ensure_private_dir, write_atomic
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.reasons import Reason
from fleet.pki.ca import CertifiedKey, certificate_to_pem, issuer_id, load_certificates_pem
from fleet.pki.keys import load_private_key_pem
from fleet.pki.keystore import CaKeySecrets, KeyRole, key_uri, load_ca_key

_NEXT = "issuing-next"
_RETIRING = "retiring"
_GENERATION = "issuing-generation"
ISSUING_SET = "issuing-set.pem"
_RENEW_BEFORE = "renew-before"


class IssuerState(enum.StrEnum):
    CURRENT = "current"
    NEXT = "next"
    RETIRING = "retiring"


class RotationRefused(PolicyError):
    reason = Reason.CA_ROTATION_REFUSED
    hint = "Run `fleet ca status` to see the issuing CAs and what each one holds."


@dataclasses.dataclass(frozen=True, slots=True)
class RegisteredIssuer:
    state: IssuerState
    certificate: x509.Certificate
    cert_path: Path
    key_path: Path

    @property
    def sha256(self) -> str:
        return sha256_fingerprint(self.certificate)

    @property
    def short_id(self) -> str:
        """The issuer's name in URLs (``/crl/<short_id>``) and file names."""
        return issuer_id(self.certificate)


def _ca_dir(config: FleetConfig) -> Path:
    return config.ca.issuing_cert.parent


def next_key_path(config: FleetConfig) -> Path:
    return _ca_dir(config) / f"{_NEXT}.key"


def _next_cert_path(config: FleetConfig) -> Path:
    return _ca_dir(config) / f"{_NEXT}.pem"


def list_issuers(config: FleetConfig) -> list[RegisteredIssuer]:
    """Every issuing CA the fleet trusts: current first, then next, then retiring."""
    found = [
        RegisteredIssuer(
            IssuerState.CURRENT,
            _read_cert(config.ca.issuing_cert),
            config.ca.issuing_cert,
            config.ca.issuing_key,
        )
    ]
    if _next_cert_path(config).exists():
        found.append(
            RegisteredIssuer(
                IssuerState.NEXT,
                _read_cert(_next_cert_path(config)),
                _next_cert_path(config),
                next_key_path(config),
            )
        )
    retiring = _ca_dir(config) / _RETIRING
    if retiring.is_dir():
        for cert_path in sorted(retiring.glob("*.pem")):
            found.append(
                RegisteredIssuer(
                    IssuerState.RETIRING,
                    _read_cert(cert_path),
                    cert_path,
                    cert_path.with_suffix(".key"),
                )
            )
    return found


def load_signing_issuers(
    config: FleetConfig, passphrase: bytes | None, *, pkcs11_pin: bytes | None = None
) -> list[tuple[RegisteredIssuer, CertifiedKey]]:
    """Each registered issuer with its key (the server signs CRLs and OCSP with each).

    The current issuer's key may be in a PKCS#11 token ([ca] key_store); next and
    retiring issuers are files (`fleet ca rotate-issuing` refuses a token fleet).
    """
    loaded = []
    seen: set[str] = set()
    for issuer in list_issuers(config):
        if issuer.sha256 in seen:  # mid-promote: the new CA is both next and current
            continue
        seen.add(issuer.sha256)
        if issuer.state is IssuerState.CURRENT and key_uri(config, KeyRole.ISSUING) is not None:
            secrets = CaKeySecrets(passphrase=passphrase, pkcs11_pin=pkcs11_pin)
            loaded.append(
                (issuer, load_ca_key(config, KeyRole.ISSUING, issuer.certificate, secrets))
            )
            continue
        key = load_private_key_pem(_read(issuer.key_path), passphrase)
        if key.public_key() != issuer.certificate.public_key():
            # A promote is being written (or the files were mixed up by hand).
            raise ConfigError(
                f"{issuer.key_path} is not the key of {issuer.cert_path}",
                hint="If a `fleet ca promote` is running, this clears when it ends; if one "
                "was cut short, run `fleet ca promote` again to finish it; otherwise "
                "restore the matching key.",
            )
        loaded.append((issuer, CertifiedKey(issuer.certificate, key)))
    return loaded


def generation(config: FleetConfig) -> int:
    """The set's version; 0 for a data directory that never rotated."""
    try:
        return int((_ca_dir(config) / _GENERATION).read_text().strip() or "0")
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {_ca_dir(config) / _GENERATION}: {exc}") from exc


def write_issuing_set(config: FleetConfig) -> Path:
    """ca/issuing-set.pem: the trusted issuing CAs as one PEM bundle, current first."""
    path = _ca_dir(config) / ISSUING_SET
    certs = list_issuers(config)
    write_atomic(path, b"".join(certificate_to_pem(i.certificate) for i in certs), mode=PUBLIC_MODE)
    return path


def _bump(config: FleetConfig) -> int:
    # The generation first: cut short between the two, the set is the one left
    # outdated, which a second `fleet ca promote` sees and rewrites.
    value = generation(config) + 1
    write_atomic(_ca_dir(config) / _GENERATION, f"{value}\n".encode(), mode=PUBLIC_MODE)
    write_issuing_set(config)
    return value


def begin_ceremony(config: FleetConfig, key_pem: bytes) -> None:
    """Keep the new issuing key (only the key) until the ceremony's certificate comes back."""
    _refuse_if_next(config)
    _refuse_if_ceremony(config)
    write_atomic(next_key_path(config), key_pem, mode=SECRET_MODE)


def install_next(config: FleetConfig, certificate: x509.Certificate, key_pem: bytes | None) -> int:
    """Make ``certificate`` the next issuer; ``key_pem`` None = the key a ceremony left."""
    _refuse_if_next(config)
    if key_pem is not None:
        _refuse_if_ceremony(config)
        write_atomic(next_key_path(config), key_pem, mode=SECRET_MODE)
    elif not next_key_path(config).exists():
        raise RotationRefused(
            "no issuing-CA key is waiting for a certificate",
            hint="Start with fleet ca rotate-issuing --csr-out FILE on this server.",
        )
    write_atomic(_next_cert_path(config), certificate_to_pem(certificate), mode=PUBLIC_MODE)
    return _bump(config)


def _refuse_if_next(config: FleetConfig) -> None:
    if _next_cert_path(config).exists():
        raise RotationRefused(
            "a next issuing CA is already installed",
            hint="Promote it first (fleet ca promote), or look at fleet ca status.",
        )


def _refuse_if_ceremony(config: FleetConfig) -> None:
    # Overwriting the key would make the certificate the ceremony brings back useless.
    if next_key_path(config).exists():
        raise RotationRefused(
            f"a signing ceremony is under way: {next_key_path(config)} waits for its certificate",
            hint="Finish it with fleet ca install-issuing --cert FILE; to abandon it, delete "
            "that key file.",
        )


def promote(config: FleetConfig) -> tuple[RegisteredIssuer, RegisteredIssuer]:
    """next → current, current → retiring; returns (old current, new current).

    The steps, each an atomic write: old current copied to retiring (key, then
    certificate), next's key over the current key, next's certificate over the
    current certificate, next's key and certificate removed, generation bumped.
    Run again after a crash, it finishes from where the files show it stopped,
    and never copies the current key to retiring once it is the next one's (that
    would overwrite the only copy of the old key).
    """
    issuers = list_issuers(config)
    current = issuers[0]
    nxt = next((i for i in issuers if i.state is IssuerState.NEXT), None)
    if nxt is None:
        if _set_outdated(config, issuers):  # cut short before the generation bump
            _bump(config)
            return _newest_retiring(config, current), current
        raise RotationRefused(
            "there is no next issuing CA to promote",
            hint="Make one first: fleet ca rotate-issuing.",
        )
    retiring = _ca_dir(config) / _RETIRING
    if nxt.certificate == current.certificate:  # cut short after the certificate
        return _finish_promote(config, nxt, _newest_retiring(config, nxt))
    old = RegisteredIssuer(
        IssuerState.RETIRING,
        current.certificate,
        retiring / f"{current.short_id}.pem",
        retiring / f"{current.short_id}.key",
    )
    if not (nxt.key_path.exists() and _read(current.key_path) == _read(nxt.key_path)):
        ensure_private_dir(retiring)
        # Old current kept as retiring before it is overwritten: a crash anywhere
        # below leaves both keys on disk.
        write_atomic(old.key_path, _read(current.key_path), mode=SECRET_MODE)
        write_atomic(old.cert_path, certificate_to_pem(current.certificate), mode=PUBLIC_MODE)
        write_atomic(config.ca.issuing_key, _read(nxt.key_path), mode=SECRET_MODE)
    elif not old.key_path.exists():  # the key was swapped, but not by promote
        raise RotationRefused(
            f"{config.ca.issuing_key} holds the next issuing CA's key and no copy of the "
            f"current one is in {retiring}",
            hint="Restore the current issuing CA's key from a backup, then promote again.",
        )
    write_atomic(config.ca.issuing_cert, certificate_to_pem(nxt.certificate), mode=PUBLIC_MODE)
    return _finish_promote(config, nxt, old)


def _finish_promote(
    config: FleetConfig, nxt: RegisteredIssuer, old: RegisteredIssuer
) -> tuple[RegisteredIssuer, RegisteredIssuer]:
    # The key first: a next certificate left alone is recognised as a promote to
    # finish; a next key left alone would look like a ceremony under way.
    nxt.key_path.unlink(missing_ok=True)
    nxt.cert_path.unlink()
    _bump(config)
    new = RegisteredIssuer(
        IssuerState.CURRENT, nxt.certificate, config.ca.issuing_cert, config.ca.issuing_key
    )
    return old, new


def _set_outdated(config: FleetConfig, issuers: list[RegisteredIssuer]) -> bool:
    """Whether issuing-set.pem lists other CAs than the files (a change not yet bumped)."""
    path = _ca_dir(config) / ISSUING_SET
    if not path.exists():
        return False  # a data directory that never rotated
    return path.read_bytes() != b"".join(certificate_to_pem(i.certificate) for i in issuers)


def _newest_retiring(config: FleetConfig, nxt: RegisteredIssuer) -> RegisteredIssuer:
    """The issuer a promote cut short retired: the newest retiring copy."""
    found = [i for i in list_issuers(config) if i.state is IssuerState.RETIRING]
    if not found:
        raise RotationRefused(
            f"the next issuing CA {nxt.short_id} is already current, but no retiring copy "
            "of the one it replaced is on disk",
            hint="Restore the replaced issuing CA's files from a backup into "
            f"{_ca_dir(config) / _RETIRING}, then promote again.",
        )
    return max(found, key=lambda i: i.cert_path.stat().st_mtime_ns)


def remove_retiring(config: FleetConfig, issuer: RegisteredIssuer) -> None:
    """Forget a retiring issuer (the caller checked nothing good chains to it)."""
    if issuer.state is not IssuerState.RETIRING:
        raise RotationRefused(f"issuer {issuer.short_id} is {issuer.state}, not retiring")
    issuer.cert_path.unlink()
    issuer.key_path.unlink(missing_ok=True)
    _bump(config)


def renew_before(config: FleetConfig) -> dt.datetime | None:
    """The deadline of ``fleet device renew --all --before``, if one is set."""
    try:
        text = (_ca_dir(config) / _RENEW_BEFORE).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{_ca_dir(config) / _RENEW_BEFORE} holds {text!r}: {exc}") from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def set_renew_before(config: FleetConfig, deadline: dt.datetime | None) -> int:
    path = _ca_dir(config) / _RENEW_BEFORE
    if deadline is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, f"{deadline.isoformat()}\n".encode(), mode=PUBLIC_MODE)
    return _bump(config)


def _read_cert(path: Path) -> x509.Certificate:
    return load_certificates_pem(_read(path))[0]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
