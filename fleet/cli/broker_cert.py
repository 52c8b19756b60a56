"""`fleet broker-cert sign`: sign a broker host's CSR with the fleet's CAs.

For a broker host without the CA keys: ``fleet-broker mosquitto init
--csr-only`` writes the keys and CSRs there; only the CSRs travel to the CA
host, and the certificates travel back. The profile (EKU, issuer, SANs,
lifetime) is fleet.kernel.broker_certs', not the CSR's: a server certificate
is signed by the fleet root with the CSR's DNS/IP names, a sidecar certificate
by the issuing CA with a CN no device can hold.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.cli._context import config_option, load, now
from fleet.config import FleetConfig
from fleet.kernel.broker_certs import KINDS, SigningKey, broker_certificate, request_contents
from fleet.kernel.errors import ConfigError, FleetError
from fleet.kernel.files import PUBLIC_MODE, write_atomic
from fleet.pki.keystore import CaKeySecrets, KeyRole, certificate_path, load_ca_key


@click.group(name="broker-cert")
def broker_cert() -> None:
    """Certificates of broker hosts (TLS server and sidecar), from their CSRs."""


@broker_cert.command()
@click.option(
    "--csr", "csr_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True, help="The CSR (PEM) `fleet-broker mosquitto init --csr-only` wrote.",
)  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--kind", type=click.Choice(KINDS), default="server", show_default=True,
    help="server: the broker's TLS certificate (fleet root, serverAuth, the CSR's SANs); "
    "sidecar: the sidecar's client certificate (issuing CA, clientAuth).",
)  # fmt: skip
@click.option("--days", type=click.IntRange(1, 825), default=365, show_default=True)
@config_option
def sign(csr_path: Path, out: Path, kind: str, days: int) -> None:
    """Sign a broker CSR; the key never leaves the broker host.

    An encrypted CA key reads its passphrase from [ca] key_passphrase_file or
    FLEET_CA_KEY_PASSPHRASE (never from the command line).
    """
    import datetime as dt

    from fleet.cli.serve import ca_key_passphrase, pkcs11_pin

    try:
        config = load()
        try:
            csr = x509.load_pem_x509_csr(csr_path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{csr_path} is not a PEM certificate request: {exc}") from exc
        public_key, common_name, names = request_contents(csr)
        role = KeyRole.ROOT if kind == "server" else KeyRole.ISSUING
        secrets = CaKeySecrets(ca_key_passphrase(config), pkcs11_pin(config))
        ca_cert, ca_key = _load_ca(config, role, secrets)
        cert = broker_certificate(
            "server" if kind == "server" else "sidecar",
            public_key=public_key, common_name=common_name, names=names,
            issuer_cert=ca_cert, issuer_key=ca_key, now=now(),
            validity=dt.timedelta(days=days),
        )  # fmt: skip
        write_atomic(out, cert.public_bytes(Encoding.PEM), mode=PUBLIC_MODE)
    except FleetError as exc:
        click.echo(exc.diagnostics(), err=True)
        sys.exit(1)
    click.echo(
        f"Wrote {out}: {kind} certificate CN={common_name}"
        + (f", SANs {', '.join(names)}" if names else "")
        + f", serial {cert.serial_number:x}, until {cert.not_valid_after_utc:%Y-%m-%d}"
    )


def _load_ca(
    config: FleetConfig, role: KeyRole, secrets: CaKeySecrets
) -> tuple[x509.Certificate, SigningKey]:
    cert_path = certificate_path(config, role)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the CA certificate {cert_path}: {exc}",
            hint="Run it on the CA host, with FLEET_CONFIG naming its fleet.toml.",
        ) from exc
    pair = load_ca_key(config, role, cert, secrets)  # a file or a PKCS#11 token key
    return pair.certificate, pair.private_key
