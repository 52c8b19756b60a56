"""Where device private keys live, behind a protocol so that hardware can plug in.

A key is reached through a handle that can do the two things the agent needs
a private key for: sign a CSR, and authenticate a TLS client. A PKCS#11 or TPM
store implements the same protocol (CSR signing through the token, TLS through
an OpenSSL provider) and the private key never leaves the hardware.
``FileKeyStore`` keeps PEM PKCS#8 files, mode 0600, EC P-256 by default.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from device_agent.errors import ConfigError
from fleet.kernel.files import SECRET_MODE, remove_durably, write_atomic

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
KEY_TYPES = ("ec-p256", "ec-p384", "ed25519")


class KeyStoreError(ConfigError):
    """A key is missing, unreadable or corrupted."""


class KeyHandle(Protocol):
    """A private key the agent can use but need not be able to read."""

    @property
    def name(self) -> str: ...

    def public_key(self) -> PublicKey: ...

    def sign_csr(
        self, builder: x509.CertificateSigningRequestBuilder
    ) -> x509.CertificateSigningRequest: ...

    def load_into(self, context: ssl.SSLContext, cert_file: Path) -> None:
        """Make ``context`` authenticate as ``cert_file`` with this key (TLS client auth)."""
        ...


class KeyStore(Protocol):
    def generate(self, name: str) -> KeyHandle:
        """A new key, durably stored under ``name`` (replacing any key of that name)."""
        ...

    def load(self, name: str) -> KeyHandle:
        """The key stored under ``name``; KeyStoreError if missing or corrupted."""
        ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> None: ...


class FileKey:
    """A private key in a PEM file (PKCS#8, unencrypted: the directory is 0700)."""

    def __init__(self, name: str, path: Path, key: PrivateKey) -> None:
        self._name = name
        self.path = path
        self._key = key

    @property
    def name(self) -> str:
        return self._name

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign_csr(
        self, builder: x509.CertificateSigningRequestBuilder
    ) -> x509.CertificateSigningRequest:
        algorithm = None if isinstance(self._key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return builder.sign(self._key, algorithm)

    def load_into(self, context: ssl.SSLContext, cert_file: Path) -> None:
        context.load_cert_chain(cert_file, self.path)

    @classmethod
    def open(cls, path: Path, name: str | None = None) -> FileKey:
        """A key file outside any store (the factory bootstrap key)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyStoreError(f"cannot read the key {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(
                f"{path} is not an unencrypted PEM private key (corrupted or truncated?)"
            ) from exc
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        ):
            raise KeyStoreError(f"{path}: unsupported key type {type(key).__name__}")
        return cls(name or path.stem, path, key)


def require_private(path: Path, what: str) -> None:
    """Refuse a secret file (bootstrap key, enrollment token) that others may read.

    The agent does not repair it: the file is not its own, and whoever left it
    readable should know that it may have been copied.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyStoreError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the {what} {path} is readable by others (mode {stat.S_IMODE(mode):o})",
            hint=f"chmod 600 {path} (and consider it exposed if others could read it)",
        )


def generate_private_key(key_type: str) -> PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigError(f"unsupported key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")


class FileKeyStore:
    """Keys as ``<directory>/<name>.key`` files, mode 0600."""

    def __init__(self, directory: Path, *, key_type: str = "ec-p256") -> None:
        if key_type not in KEY_TYPES:
            raise ConfigError(f"unsupported key type {key_type!r}; choose one of {KEY_TYPES}")
        self.directory = directory
        self.key_type = key_type

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def generate(self, name: str) -> FileKey:
        key = generate_private_key(self.key_type)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self.path(name)
        write_atomic(path, pem, mode=SECRET_MODE)
        return FileKey(name, path, key)

    def load(self, name: str) -> FileKey:
        path = self.path(name)
        if not path.exists():
            raise KeyStoreError(f"no key {name!r} in {self.directory}")
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, SECRET_MODE)  # repair, rather than leave a key readable
        return FileKey.open(path, name)

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def delete(self, name: str) -> None:
        remove_durably(self.path(name))
