"""The state directory on the device: identity, trust anchors, renewal in progress.

Layout (directory 0700, every file written atomically and durably)::

    agent.json, agent.json.bak   server URL, pinned root fingerprint, device id, bootstrap files
    cacerts.pem                  the CAs from /cacerts the agent trusts: issuing CA(s), the
                                 pinned root, then older roots kept during a root rollover
    current                      the generation number of the identity in use
    op<N>.key / op<N>.pem        key and certificate of generation N
    status.json                  last error and its reason code, consecutive failures,
                                 next renewal / attempt
    broker.json                  the MQTT connection as `fleet-agent run` last saw it

A renewal writes generation N+1 beside N and switches ``current`` only after
the new pair has been proven in a TLS handshake with the server; generation N
is deleted after that. So a power cut at any instant leaves ``current``
pointing at a complete pair. Every file is parsed when read: a corrupted or
truncated file is reported (``StateDir.warnings``) and the newest complete,
consistent pair is used instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from device_agent.errors import ConfigError
from device_agent.health import BrokerState
from device_agent.keystore import FileKeyStore, KeyHandle, KeyStore, KeyStoreError
from device_agent.testhooks import crash_point
from device_agent.trust import CaCerts, chain_from, common_name
from fleet.kernel.files import (
    PUBLIC_MODE,
    SECRET_MODE,
    ensure_private_dir,
    remove_durably,
    remove_stale_temporaries,
    write_atomic,
)
from fleet.kernel.rollover import is_self_signed

log = logging.getLogger("device_agent.state")

_GENERATION = re.compile(r"op(\d{1,9})\.(?:pem|key)")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """What `fleet-agent enroll` was told; later commands read it from the state directory."""

    server: str
    ca_fingerprint: str
    device_id: str | None = None
    bootstrap_cert: str | None = None
    bootstrap_key: str | None = None

    @property
    def has_bootstrap(self) -> bool:
        return bool(self.bootstrap_cert and self.bootstrap_key)


@dataclasses.dataclass(frozen=True)
class Identity:
    """The operational key and certificate in use (``common_name`` of it is the device id)."""

    generation: int
    key: KeyHandle
    certificate: x509.Certificate
    cert_path: Path

    @property
    def device_id(self) -> str:
        return common_name(self.certificate)

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


@dataclasses.dataclass(frozen=True)
class PendingRenewal:
    """Generation N+1 while it is being obtained: a key, then a certificate."""

    generation: int
    key: KeyHandle
    certificate: x509.Certificate | None
    cert_path: Path


@dataclasses.dataclass(frozen=True)
class AgentStatus:
    last_error: str | None = None
    last_error_at: dt.datetime | None = None
    # Reason code of the server's last refusal or hold (device_revoked, enrollment_pending...);
    # transient failures leave it as it was, a success clears it.
    last_reason: str | None = None
    failures: int = 0  # consecutive, reset by a success
    next_attempt: dt.datetime | None = None  # after a failure: not before this
    next_renewal: dt.datetime | None = None  # scheduled renewal of the current certificate


def _time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def entries(path: Path) -> frozenset[str] | None:
    """The names in directory ``path``, or None when it does not exist."""
    try:
        return frozenset(p.name for p in path.iterdir())
    except FileNotFoundError:
        return None


def undo_enrollment(path: Path, before: frozenset[str] | None) -> None:
    """Put ``path`` back as it was (``before``, from :func:`entries`) after a failed enrollment.

    A directory that did not exist is removed; in one that did (a systemd
    StateDirectory, a ``--force`` over an identity) only what the attempt
    added is removed. The caller holds the directory's lock.
    """
    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    added = [p for p in path.iterdir() if p.name not in before]
    for entry in added:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    remove_durably(*(p for p in added if not p.is_dir() or p.is_symlink()))


class StateDir:
    def __init__(self, path: Path, keystore: KeyStore | None = None) -> None:
        self.path = path
        self.keys: KeyStore = keystore or FileKeyStore(path)
        self.warnings: list[str] = []  # what was found broken, for status and logs

    # -- directory and config ----------------------------------------------------
    def create(self) -> None:
        ensure_private_dir(self.path)

    def exists(self) -> bool:
        return (self.path / "agent.json").exists() or (self.path / "agent.json.bak").exists()

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def save_config(self, config: AgentConfig) -> None:
        data = json.dumps(dataclasses.asdict(config), indent=2).encode() + b"\n"
        # Two copies: nothing else in the directory can tell us the server and the pin.
        write_atomic(self.path / "agent.json", data, mode=SECRET_MODE)
        write_atomic(self.path / "agent.json.bak", data, mode=SECRET_MODE)

    def load_config(self) -> AgentConfig:
        if not self.path.is_dir():
            raise ConfigError(
                f"state directory {self.path} does not exist",
                hint="Enroll first: fleet-agent enroll --server ... --state-dir ...",
            )
        problems = []
        for name in ("agent.json", "agent.json.bak"):
            try:
                raw = json.loads((self.path / name).read_bytes())
                config = AgentConfig(
                    server=str(raw["server"]),
                    ca_fingerprint=str(raw["ca_fingerprint"]),
                    device_id=raw.get("device_id"),
                    bootstrap_cert=raw.get("bootstrap_cert"),
                    bootstrap_key=raw.get("bootstrap_key"),
                )
            except FileNotFoundError:
                problems.append(f"{name} is missing")
                continue
            except (ValueError, KeyError, TypeError) as exc:
                self._warn(f"{self.path / name} is corrupted ({exc}); trying the other copy")
                problems.append(f"{name} is corrupted")
                continue
            if name == "agent.json.bak":
                self.save_config(config)  # repair the primary copy
            return config
        raise ConfigError(
            f"no usable agent configuration in {self.path}: {', '.join(problems)}",
            hint="Enroll again: fleet-agent enroll --server URL --ca-fingerprint FP "
            "--state-dir DIR ...",
        )

    # -- trust anchors ---------------------------------------------------------------
    def save_cacerts(self, cacerts: CaCerts) -> None:
        write_atomic(self.path / "cacerts.pem", cacerts.pem(), mode=PUBLIC_MODE)

    def load_cacerts(self, pinned_sha256: str) -> CaCerts | None:
        """The stored chain if it parses and holds the pinned root; None otherwise."""
        path = self.path / "cacerts.pem"
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            self._warn(f"{path} is corrupted; it will be fetched again from the server")
            return None
        try:
            # Every root in the file was trusted when the agent wrote it (pin first).
            return chain_from(certs, pinned_sha256, kept=[c for c in certs if is_self_signed(c)])
        except ValueError as exc:
            self._warn(f"{path}: {exc}; it will be fetched again from the server")
            return None

    @property
    def cacerts_path(self) -> Path:
        return self.path / "cacerts.pem"

    # -- identity --------------------------------------------------------------------
    def _names(self, generation: int) -> tuple[str, Path]:
        return f"op{generation}", self.path / f"op{generation}.pem"

    def _generations(self) -> list[int]:
        found = {
            int(m.group(1)) for p in self.path.iterdir() if (m := _GENERATION.fullmatch(p.name))
        }
        return sorted(found, reverse=True)

    def _current_pointer(self) -> int | None:
        path = self.path / "current"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            text = ""
        if text.isdigit():
            return int(text)
        self._warn(f"{path} is corrupted ({text[:20]!r}); looking for the newest complete pair")
        return None

    def _pair(self, generation: int, cacerts: CaCerts | None) -> Identity | None:
        """Generation ``generation`` if its key and certificate are readable and belong together."""
        name, cert_path = self._names(generation)
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            self._warn(f"{cert_path} is corrupted or truncated")
            return None
        try:
            key = self.keys.load(name)
        except KeyStoreError as exc:
            self._warn(f"key of generation {generation}: {exc.message}")
            return None
        if key.public_key() != cert.public_key():
            self._warn(f"{cert_path} does not belong to key {name}")
            return None
        if cacerts is not None and cacerts.issuer_of(cert) is None:
            self._warn(f"{cert_path} was not issued by the fleet CA in cacerts.pem")
            return None
        return Identity(generation, key, cert, cert_path)

    def load(self, cacerts: CaCerts | None = None) -> Identity | None:
        """The identity in use, or the newest complete pair if that one is damaged; None if none."""
        if not self.path.is_dir():
            return None
        remove_stale_temporaries(self.path)
        pointer = self._current_pointer()
        if pointer is not None:
            identity = self._pair(pointer, cacerts)
            if identity is not None:
                return identity
            self._warn(f"generation {pointer} is unusable; falling back to another complete pair")
        for generation in self._generations():
            if generation == pointer:
                continue
            identity = self._pair(generation, cacerts)
            if identity is not None:
                self._write_pointer(generation)
                self._warn(f"recovered: using generation {generation}")
                return identity
        return None

    def _write_pointer(self, generation: int) -> None:
        write_atomic(self.path / "current", f"{generation}\n".encode(), mode=SECRET_MODE)

    # -- renewal in progress ------------------------------------------------------------
    def pending(self, current: Identity | None) -> PendingRenewal | None:
        """A renewal interrupted earlier (its key, maybe its certificate), else None."""
        floor = current.generation if current else 0
        for generation in self._generations():
            if generation <= floor:
                break
            name, cert_path = self._names(generation)
            try:
                key = self.keys.load(name)
            except KeyStoreError as exc:
                self._warn(f"pending key {name}: {exc.message}; discarding that renewal")
                self._discard(generation)
                continue
            cert = None
            if cert_path.exists():
                try:
                    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                except ValueError:
                    self._warn(f"{cert_path} is corrupted; the certificate will be requested again")
                    remove_durably(cert_path)
                if cert is not None and cert.public_key() != key.public_key():
                    self._warn(f"{cert_path} does not match its key; requesting again")
                    remove_durably(cert_path)
                    cert = None
            return PendingRenewal(generation, key, cert, cert_path)
        return None

    def begin_renewal(self, current: Identity | None) -> PendingRenewal:
        """Generation N+1 with a new key, or the renewal left unfinished (its key is reused)."""
        pending = self.pending(current)
        if pending is not None:
            log.info("resuming the unfinished renewal of generation %d", pending.generation)
            return pending
        generations = self._generations()
        generation = max([*generations, current.generation if current else 0]) + 1
        name, cert_path = self._names(generation)
        key = self.keys.generate(name)
        crash_point("key_generated")
        return PendingRenewal(generation, key, None, cert_path)

    def store_certificate(
        self, pending: PendingRenewal, certificate: x509.Certificate
    ) -> PendingRenewal:
        """Write the new certificate beside the new key (not in use until proven)."""
        if certificate.public_key() != pending.key.public_key():
            raise ConfigError("the issued certificate is not for the key that asked for it")
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        write_atomic(pending.cert_path, pem, mode=PUBLIC_MODE)
        crash_point("cert_written")
        return dataclasses.replace(pending, certificate=certificate)

    def commit_renewal(self, pending: PendingRenewal) -> Identity:
        """The new pair was proven: make it current, then delete older generations."""
        if pending.certificate is None:
            raise ConfigError("cannot commit a renewal without its certificate")
        self._write_pointer(pending.generation)
        crash_point("proven")
        for generation in self._generations():
            if generation < pending.generation:
                self._discard(generation)
        crash_point("old_removed")
        return Identity(pending.generation, pending.key, pending.certificate, pending.cert_path)

    def abandon_renewal(self, pending: PendingRenewal) -> None:
        log.info("abandoning the renewal of generation %d", pending.generation)
        self._discard(pending.generation)

    def _discard(self, generation: int) -> None:
        name, cert_path = self._names(generation)
        remove_durably(cert_path)
        self.keys.delete(name)

    # -- status ------------------------------------------------------------------------
    def load_status(self) -> AgentStatus:
        path = self.path / "status.json"
        try:
            raw: Any = json.loads(path.read_bytes())
            return AgentStatus(
                last_error=raw.get("last_error"),
                last_error_at=_time(raw.get("last_error_at")),
                last_reason=raw.get("last_reason"),
                failures=int(raw.get("failures", 0)),
                next_attempt=_time(raw.get("next_attempt")),
                next_renewal=_time(raw.get("next_renewal")),
            )
        except FileNotFoundError:
            return AgentStatus()
        except (ValueError, TypeError, AttributeError):
            self._warn(f"{path} is corrupted; starting the status afresh")
            return AgentStatus()

    def save_status(self, status: AgentStatus) -> None:
        data = {
            k: (v.isoformat() if isinstance(v, dt.datetime) else v)
            for k, v in dataclasses.asdict(status).items()
        }
        write_atomic(self.path / "status.json", json.dumps(data, indent=2).encode() + b"\n")

    def record_error(
        self,
        message: str,
        *,
        now: dt.datetime,
        next_attempt: dt.datetime | None,
        reason: str | None = None,
    ) -> AgentStatus:
        """A failure; ``reason`` (a server's refusal or hold) replaces the recorded one."""
        old = self.load_status()
        status = dataclasses.replace(
            old,
            last_error=message,
            last_error_at=now,
            last_reason=reason if reason is not None else old.last_reason,
            failures=old.failures + 1,
            next_attempt=next_attempt,
        )
        self.save_status(status)
        return status

    def record_success(self, *, next_renewal: dt.datetime) -> AgentStatus:
        old = self.load_status()
        status = dataclasses.replace(
            old,
            failures=0,
            next_attempt=None,
            next_renewal=next_renewal,
            last_error=None,
            last_reason=None,
        )
        self.save_status(status)
        return status

    # -- the broker connection (written by `run`, read by `status`) ------------------------
    @property
    def broker_path(self) -> Path:
        return self.path / "broker.json"

    def save_broker(self, state: BrokerState) -> None:
        data = json.dumps(state.to_json(), indent=2).encode() + b"\n"
        write_atomic(self.broker_path, data)

    def load_broker(self) -> BrokerState | None:
        try:
            return BrokerState.from_json(json.loads(self.broker_path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            self._warn(f"{self.broker_path} is corrupted; the broker state is unknown")
            return None
