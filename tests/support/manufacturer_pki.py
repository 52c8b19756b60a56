"""A manufacturer PKI made with the `openssl` command line (IEEE 802.1AR shape).

root → intermediate(s) → device (IDevID), each CA with its own key, made the
way a factory would, so that the server sees certificates it did not mint.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from cryptography import x509

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.records import ManifestEntry
from tests.support.openssl import openssl

_serials = itertools.count(1)

_CA_EXT = """\
basicConstraints = critical, CA:TRUE{pathlen}
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""
_DEVICE_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


@dataclasses.dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def chain_file(self, *above: Issued) -> Path:
        """This certificate followed by ``above`` (what a client sends in TLS)."""
        path = self.cert.with_name(self.cert.stem + f"-chain{len(above)}.pem")
        path.write_bytes(b"".join(c.cert.read_bytes() for c in (self, *above)))
        return path

    def manifest_entry(self, device_id: str) -> ManifestEntry:
        return ManifestEntry(device_id, sha256_fingerprint(self.certificate()), "m1", "b1")


def _key(path: Path) -> None:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)


def root_ca(directory: Path, name: str, *, pathlen: int | None = None) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / name.replace(" ", "_")
    key, cert, ext = stem.with_suffix(".key"), stem.with_suffix(".pem"), stem.with_suffix(".ext")
    _key(key)
    ext.write_text(_CA_EXT.format(pathlen="" if pathlen is None else f", pathlen:{pathlen}"))
    openssl(
        "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "3650",
        "-subj", f"/O=Initech/CN={name}", "-set_serial", str(1000 + next(_serials)),
        "-extensions", "v3", "-config", _req_config(directory, ext),
    )  # fmt: skip
    return Issued(cert, key)


def issue(
    directory: Path,
    issuer: Issued,
    subject: str,
    *,
    ca: bool,
    pathlen: int | None = None,
    days: int = 1825,
) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / subject.strip("/").replace("/", "_").replace("=", "-").replace(" ", "_")
    key, cert = stem.with_suffix(".key"), stem.with_suffix(".pem")
    csr, ext = stem.with_suffix(".csr"), stem.with_suffix(".ext")
    _key(key)
    openssl("req", "-new", "-key", key, "-out", csr, "-subj", subject)
    if ca:
        ext.write_text(_CA_EXT.format(pathlen="" if pathlen is None else f", pathlen:{pathlen}"))
    else:
        ext.write_text(_DEVICE_EXT)
    openssl(
        "x509", "-req", "-in", csr, "-CA", issuer.cert, "-CAkey", issuer.key,
        "-set_serial", str(1000 + next(_serials)), "-days", str(days),
        "-extfile", ext, "-out", cert,
    )  # fmt: skip
    return Issued(cert, key)


def _req_config(directory: Path, ext: Path) -> Path:
    config = directory / "req.cnf"
    config.write_text(
        "[req]\ndistinguished_name = dn\n[dn]\n[v3]\n" + ext.read_text(), encoding="ascii"
    )
    return config
