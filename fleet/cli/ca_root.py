"""`fleet ca rotate-root` and `fleet ca retire-root`: a root rollover (RFC 7030 section 4.1.3).

Order of operations (README, "Root rollover"):

1. ``fleet ca rotate-root``: a new root (same subject, new key) and the link
   certificates. ``ca/root.pem`` becomes [new, old]: the new root signs from
   now on (the next ``fleet ca rotate-issuing`` makes an issuing CA under it),
   the old one stays trusted. ``ca/links.pem`` holds OldWithNew and NewWithOld;
   ``/cacerts`` of a running server serves both roots and the links at once.
2. Devices move their pin at their next /cacerts fetch (every renewal).
3. ``fleet ca rotate-issuing`` / ``promote`` / ``retire`` move the devices to an
   issuing CA under the new root.
4. ``fleet ca retire-root``: refused while an issuing CA, or a good device
   certificate, chains only to the old root; otherwise re-certifies the admin CA
   (same key) and re-issues the server TLS certificate under the new root, and
   drops the old root and the links.

Files are written so that a crash leaves a state this command can finish:
the new key is stored under its fingerprint before ``root.pem`` names it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.authorities import load_fleet_authorities, load_root_links, root_links_path
from fleet.cli._context import config_option, load, now, with_store
from fleet.config import FleetConfig
from fleet.kernel.certs import describe, issued_by
from fleet.kernel.errors import ConfigError, PolicyError, StateConflict
from fleet.kernel.files import PUBLIC_MODE, SECRET_MODE, remove_durably, write_atomic
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.reasons import Reason
from fleet.pki.ca import CertifiedKey, certificate_to_pem, create_server_certificate
from fleet.pki.keys import PrivateKey, load_private_key_pem, private_key_to_pem
from fleet.pki.rollover import link_certificate, roll_root
from fleet.store.protocol import Store

ROOT_DIR_HELP = (
    "Directory holding root.key when the root is offline (removable media); "
    "default: beside [ca] root_cert in the data directory."
)


@click.command("rotate-root")
@click.option("--root-dir", type=click.Path(file_okay=False, path_type=Path), help=ROOT_DIR_HELP)
@click.option(
    "--overlap-days",
    type=click.IntRange(min=1),
    default=None,
    help="How long devices may cross from the old root to the new one (the link "
    "certificates' validity) [default: until the old root expires].",
)
@config_option
def rotate_root(root_dir: Path | None, overlap_days: int | None) -> None:
    """Create a new fleet root and the link certificates between it and the old one."""
    from fleet.cli.serve import ca_key_passphrase  # imports the server: only when used

    config = load()
    passphrase = ca_key_passphrase(config)
    roots = _roots(config)
    key_dir = root_dir if root_dir is not None else config.ca.root_cert.parent
    # First: this also finishes a rotate-root cut short between root.pem and root.key.
    old = CertifiedKey(roots[0], _root_key(key_dir, roots[0], passphrase))
    if load_root_links(config):
        raise StateConflict(
            "a root rollover is already in progress (ca/links.pem holds its link certificates)",
            hint="Finish it first: move devices to an issuing CA under the new root, then "
            "`fleet ca retire-root`.",
        )
    overlap = dt.timedelta(days=overlap_days) if overlap_days is not None else None
    rolled = roll_root(old, now=now(), overlap=overlap)
    new = rolled.new_root
    new_key_pem = private_key_to_pem(new.private_key, passphrase)
    # The new key first, under its own name: root.pem below is the commit point.
    write_atomic(key_dir / _key_name(new.certificate), new_key_pem, mode=SECRET_MODE)
    write_atomic(
        key_dir / _key_name(roots[0]),
        private_key_to_pem(old.private_key, passphrase),  # kept: it signed what is still out there
        mode=SECRET_MODE,
    )
    links = b"".join(certificate_to_pem(c) for c in rolled.links)
    write_atomic(root_links_path(config), links, mode=PUBLIC_MODE)
    bundle = b"".join(certificate_to_pem(c) for c in (new.certificate, *roots))
    write_atomic(config.ca.root_cert, bundle, mode=PUBLIC_MODE)
    write_atomic(key_dir / "root.key", new_key_pem, mode=SECRET_MODE)
    if root_dir is not None:
        write_atomic(root_dir / "root.pem", bundle, mode=PUBLIC_MODE)
    end = rolled.old_with_new.not_valid_after_utc
    click.echo(f"New fleet root (signs from now on): SHA-256 {sha256_fingerprint(new.certificate)}")
    click.echo(
        f"Old fleet root (trusted until retire-root): SHA-256 {sha256_fingerprint(roots[0])}"
    )
    click.echo(f"Link certificates (OldWithNew, NewWithOld) valid until {end.isoformat()}")
    click.echo(f"  written to {root_links_path(config)}; a running `fleet serve` publishes")
    click.echo("  them in /cacerts at once. Devices move their pin at their next renewal.")
    click.echo("Next: give the brokers the new ca/root.pem (README, Root rollover), then")
    click.echo("`fleet ca rotate-issuing` makes an issuing CA under the new root.")


@click.command("retire-root")
@click.option("--root-dir", type=click.Path(file_okay=False, path_type=Path), help=ROOT_DIR_HELP)
@config_option
def retire_root(root_dir: Path | None) -> None:
    """Drop the old fleet root once nothing good chains only to it."""
    from fleet.cli.serve import ca_key_passphrase

    config = load()
    roots = _roots(config)
    if len(roots) < 2:
        raise StateConflict(
            "there is no old fleet root to retire (ca/root.pem holds one root)",
            hint="`fleet ca rotate-root` starts a root rollover.",
        )
    signing, old = roots[0], tuple(roots[1:])
    moment = now()
    authorities = load_fleet_authorities(config)
    stuck = [
        f"issuing CA {describe(c)}"
        for c in authorities.issuing
        if issued_by(c, [signing]) is None and issued_by(c, old) is not None
    ]
    devices = with_store(
        config, lambda store: _good_under_old(store, authorities.issuing, signing, moment)
    )
    if stuck or devices:
        raise PolicyError(
            f"the old root still carries {len(stuck)} issuing CA(s) and {devices} good device "
            f"certificate(s): {'; '.join(stuck) or 'device certificates only'}",
            reason=Reason.ROOT_STILL_IN_USE,
            hint="Rotate the issuing CA under the new root (`fleet ca rotate-issuing`, "
            "`promote`, `retire`) and let devices renew (or `fleet device renew --all "
            "--before DATE`); then retry. Counted: device certificates not revoked and not "
            "expired whose issuing CA is not one signed by the new root.",
        )
    key_dir = root_dir if root_dir is not None else config.ca.root_cert.parent
    passphrase = ca_key_passphrase(config)
    root = CertifiedKey(signing, _root_key(key_dir, signing, passphrase))
    _move_admin_ca(config, root, old, moment)
    _move_server_certificate(config, root, old, moment)
    write_atomic(config.ca.root_cert, certificate_to_pem(signing), mode=PUBLIC_MODE)
    if root_dir is not None:
        write_atomic(root_dir / "root.pem", certificate_to_pem(signing), mode=PUBLIC_MODE)
    if root_links_path(config).exists():
        remove_durably(root_links_path(config))
    for cert in old:
        click.echo(f"Retired fleet root SHA-256 {sha256_fingerprint(cert)}")
    click.echo("Restart `fleet serve` (and an embedded broker presenting tls/server.pem).")
    # A device enrolled from now on pins the new root only: a broker certificate the
    # old root signed (`fleet-broker mosquitto init` made one) fails its handshake.
    click.echo("Each Mosquitto broker's TLS certificate must come from the new root: sign it")
    click.echo("again (fleet broker-cert sign --kind server; README, Root rollover), restart it.")


async def _good_under_old(
    store: Store,
    issuing: tuple[x509.Certificate, ...],
    signing: x509.Certificate,
    moment: dt.datetime,
) -> int:
    """Good (not revoked), unexpired device certificates that do not chain to the new root.

    Their issuer is an issuing CA the old root signed, or one no longer in
    ca/issuing.pem at all: either way, dropping the old root strands them.
    """
    under_new = [c for c in issuing if issued_by(c, [signing]) is not None]
    far = moment + dt.timedelta(days=365 * 100)
    count = 0
    for record in await store.list_expiring(far, limit=10**9):
        if record.not_after <= moment:
            continue
        cert = x509.load_pem_x509_certificate(record.pem.encode())
        count += issued_by(cert, under_new) is None
    return count


def _move_admin_ca(
    config: FleetConfig, root: CertifiedKey, old: tuple[x509.Certificate, ...], moment: dt.datetime
) -> None:
    """The same admin CA (name and key: admin credentials keep working), signed by the new root."""
    path = config.admin.ca_cert
    if not path.exists():
        return
    admin = x509.load_pem_x509_certificates(path.read_bytes())[0]
    if issued_by(admin, old) is None:
        return
    if admin.not_valid_after_utc <= moment:
        # Nothing to keep working: an expired admin CA admits no admin either way.
        click.echo(
            f"warning: the admin CA {path} expired at {admin.not_valid_after_utc:%Y-%m-%d}; "
            "left as it is (admin credentials under it were already refused)"
        )
        return
    moved = link_certificate(admin, root, now=moment, not_after=admin.not_valid_after_utc)
    write_atomic(path, certificate_to_pem(moved), mode=PUBLIC_MODE)
    click.echo(f"Admin CA re-certified by the new root (same key): {path}")


def _move_server_certificate(
    config: FleetConfig, root: CertifiedKey, old: tuple[x509.Certificate, ...], moment: dt.datetime
) -> None:
    """A new server TLS certificate (same names, new key) from the new root."""
    current = x509.load_pem_x509_certificates(config.server.tls_cert.read_bytes())[0]
    if issued_by(current, old) is None:
        return
    san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = current.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    server = create_server_certificate(
        root,
        common_name=str(names[0].value) if names else san.get_values_for_type(x509.DNSName)[0],
        dns_names=san.get_values_for_type(x509.DNSName),
        ip_addresses=[
            ip
            for ip in san.get_values_for_type(x509.IPAddress)
            if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ],
        now=moment,
    )
    write_atomic(config.server.tls_key, private_key_to_pem(server.private_key), mode=SECRET_MODE)
    write_atomic(config.server.tls_cert, certificate_to_pem(server.certificate), mode=PUBLIC_MODE)
    click.echo(f"Server TLS certificate re-issued by the new root: {config.server.tls_cert}")


def _roots(config: FleetConfig) -> list[x509.Certificate]:
    return list(load_fleet_authorities(config).roots)


def _root_key(key_dir: Path, root: x509.Certificate, passphrase: bytes | None) -> PrivateKey:
    """The signing root's key: root.key, or (after an interrupted rotate-root) its own file."""
    for path in (key_dir / "root.key", key_dir / _key_name(root)):
        try:
            key = load_private_key_pem(path.read_bytes(), passphrase)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read the root key {path}: {exc.strerror}") from exc
        if _spki(key) == root.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        ):
            if path.name != "root.key":  # finish what an interrupted rotate-root began
                write_atomic(
                    key_dir / "root.key", private_key_to_pem(key, passphrase), mode=SECRET_MODE
                )
            return key
    raise ConfigError(
        f"no key for the signing root (SHA-256 {sha256_fingerprint(root)[:16]}…) in {key_dir}",
        hint="Give --root-dir with the offline root's directory (removable media).",
    )


def _key_name(root: x509.Certificate) -> str:
    return f"root-{sha256_fingerprint(root)[:16]}.key"


def _spki(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
