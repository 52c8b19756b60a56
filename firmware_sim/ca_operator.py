"""The CA operator of the simulated fleet: `fleet ca …` (issue 13's contract) as typed.

The one place the simulator acts on the fleet's CAs and on the server's TLS certificate.
"""

from __future__ import annotations

import datetime as dt
import enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from firmware_sim.bench import Bench
from firmware_sim.world import WorldError
from fleet.authorities import load_fleet_authorities
from fleet.config import load_config
from fleet.kernel.files import PUBLIC_MODE, write_atomic


class CaAction(enum.StrEnum):
    """The `fleet ca` commands of the issue-13 contract the operator runs."""

    ROTATE_ISSUING = "rotate-issuing"
    PROMOTE = "promote"
    RETIRE = "retire"
    ROTATE_ROOT = "rotate-root"
    RETIRE_ROOT = "retire-root"


class CaOperator:
    """The one place the scenario acts on the CAs: `fleet ca …` as an operator types it.

    The operator also renews the TLS certificate the server and the broker present
    (`fleet init` makes it for 397 days; devices judge its dates by their clock) with
    `fleet broker-cert sign --kind server`, from a CSR of the same key, when it has less
    than ``TLS_RENEW_BEFORE`` left. After each change the server and the broker are
    restarted, as an operator would (harmless if they also reload by themselves).
    """

    TLS_RENEW_BEFORE = dt.timedelta(days=60)
    TLS_DAYS = 365

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.done: list[tuple[int, CaAction, str]] = []
        self.postponed: list[tuple[int, CaAction, str]] = []
        self.tls_renewals = 0
        self._tls_due: dt.datetime | None = None

    # Refused while good certificates still chain to the CA (issue 13): the operator
    # looks again a month later instead of forcing it.
    RETRY_LATER = frozenset({CaAction.RETIRE, CaAction.RETIRE_ROOT})
    RETRY_DAYS = 30

    def apply(self, day: int, action: CaAction, args: tuple[str, ...] = ()) -> int | None:
        """Run ``fleet ca ACTION [ARGS]``; the day to try again when a retirement was refused."""
        try:
            output = self.bench.world.fleet("ca", action.value, *args)
        except WorldError as exc:
            if action not in self.RETRY_LATER:
                raise
            self.postponed.append((day, action, str(exc)))
            return day + self.RETRY_DAYS
        self.done.append((day, action, output.strip().splitlines()[-1] if output.strip() else ""))
        self._tls_due = None  # retire-root re-issues the server certificate
        self._restart()
        return None

    def tls_due(self) -> dt.datetime:
        """When the server's TLS certificate is due for renewal (read once per certificate)."""
        if self._tls_due is None:
            cert_path = self.bench.world.data_dir / "tls/server.pem"
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            self._tls_due = cert.not_valid_after_utc - self.TLS_RENEW_BEFORE
        return self._tls_due

    def renew_tls(self) -> None:
        """A new server certificate for the same key and names, from the fleet root, now."""
        world = self.bench.world
        cert_path = world.data_dir / "tls/server.pem"
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(
            (world.data_dir / "tls/server.key").read_bytes(), None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TypeError(f"unexpected server key type {type(key).__name__}")
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(cert.subject)
            .add_extension(names.value, critical=False)
            .sign(key, hashes.SHA256())
        )
        csr_path = world.work_dir / "server-tls.csr"
        write_atomic(csr_path, csr.public_bytes(serialization.Encoding.PEM))
        world.fleet(
            "broker-cert", "sign", "--kind", "server", "--csr", csr_path,
            "--out", cert_path, "--days", str(self.TLS_DAYS),
        )  # fmt: skip
        self._append_link(cert_path)
        self.tls_renewals += 1
        self._tls_due = None
        self._restart()

    def _append_link(self, cert_path: Path) -> None:
        """During a root rollover, serve the OldWithNew link after the new root's certificate.

        `fleet broker-cert sign` signs with the current (new) root; a device that has not
        moved its pin yet reaches that root only through the link (the new root's key
        signed by the old root, ca/links.pem), so the server presents it in its chain.
        """
        links_path = self.bench.world.data_dir / "ca/links.pem"
        if not links_path.exists():
            return
        signing_root = x509.load_pem_x509_certificate(
            (self.bench.world.data_dir / "ca/root.pem").read_bytes()
        )
        links = [
            link
            for link in x509.load_pem_x509_certificates(links_path.read_bytes())
            if link.public_key() == signing_root.public_key()
        ]
        chain = cert_path.read_bytes() + b"".join(
            link.public_bytes(serialization.Encoding.PEM) for link in links
        )
        write_atomic(cert_path, chain, mode=PUBLIC_MODE)

    def _restart(self) -> None:
        world = self.bench.world
        world.server.stop()
        world.server.start()
        if world.broker is not None:
            world.broker.stop()
            world.start_broker()

    def newest_issuing(self) -> x509.Certificate:
        """The issuing CA new certificates come from: the most recent of the trusted ones."""
        config = load_config(self.bench.world.config_path, environ={})
        issuing = load_fleet_authorities(config).issuing
        return max(issuing, key=lambda c: c.not_valid_before_utc)
