"""`fleet ca`: the fleet's CAs over their lifetime — status, issuing-CA rotation, ceremony.

Root rollover (rotate-root, retire-root) lives in fleet.cli.ca_root and is
registered here.

Local commands: they act on the data directory of fleet.toml (and its store),
with the CLI's clock. Running servers follow the issuing-CA set by polling its
generation (``fleet.ca_registry``) or at once on SIGHUP.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.authority.issuer_counts import IssuerCounts, count_by_issuer
from fleet.ca_registry import (
    IssuerState,
    RegisteredIssuer,
    RotationRefused,
    begin_ceremony,
    generation,
    install_next,
    list_issuers,
    next_key_path,
    promote,
    remove_retiring,
    renew_before,
)
from fleet.cli._context import config_option, echo_json, json_option, load, now, table, when
from fleet.cli.ca_root import retire_root, rotate_root
from fleet.cli.common import FleetGroup, read_input_file, read_secret_file, secret_from_env
from fleet.config import FleetConfig
from fleet.kernel.errors import ConfigError, FleetError
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.keys import key_type_of
from fleet.kernel.reasons import Reason
from fleet.pki.ca import CertifiedKey, certificate_to_pem, load_certificates_pem
from fleet.pki.ceremony import (
    ISSUING_VALIDITY,
    check_issuing_certificate,
    create_issuing_csr,
    sign_issuing_csr,
)
from fleet.pki.csr import load_csr
from fleet.pki.expiry import days_left, expiry_warning
from fleet.pki.keys import (
    PrivateKey,
    generate_private_key,
    load_private_key_pem,
    private_key_to_pem,
)
from fleet.pki.keystore import KeyRole, key_locations, key_uri
from fleet.store.factory import open_store


def _new_issuer_name(key: PrivateKey, at: dt.datetime) -> str:
    """A name of its own for each issuing CA: same-named CAs make relying parties
    (OpenSSL's chain and CRL lookups, people reading logs) pick by key id alone."""
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()
    return f"fleet device issuing CA {at:%Y-%m-%d} {ski[:8]}"


@click.group(cls=FleetGroup)
@config_option
def ca() -> None:
    """The fleet's CAs over their lifetime (README "CA lifetime").

    \b
    Issuing-CA rotation, online root:   rotate-issuing, promote, (renew), retire
    With the root offline (ceremony):   rotate-issuing --csr-out FILE
                                        sign-issuing (offline machine)
                                        install-issuing --cert FILE, promote, retire
    Root rollover:                      rotate-root, then the issuing-CA rotation
                                        under the new root, then retire-root
    """


def _passphrase(config: FleetConfig) -> bytes | None:
    if config.ca.key_passphrase_file is not None:
        return read_secret_file(config.ca.key_passphrase_file)
    return secret_from_env("FLEET_CA_KEY_PASSPHRASE")


def _roots(config: FleetConfig) -> tuple[x509.Certificate, ...]:
    """ca/root.pem: the trusted fleet roots, the current signing root first."""
    try:
        return tuple(load_certificates_pem(config.ca.root_cert.read_bytes()))
    except OSError as exc:
        raise ConfigError(f"cannot read {config.ca.root_cert}: {exc.strerror}") from exc


def _load_root(
    root_cert: x509.Certificate, key_path: Path, passphrase: bytes | None
) -> CertifiedKey:
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no root key at {key_path}",
            reason=Reason.ROOT_KEY_MISSING,
            hint="The root is offline: run the ceremony (fleet ca rotate-issuing --csr-out FILE, "
            "then fleet ca sign-issuing on the offline machine), or give --root-dir DIR.",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {key_path}: {exc.strerror}") from exc
    key = load_private_key_pem(data, passphrase)
    if key.public_key() != root_cert.public_key():
        raise ConfigError(f"the key in {key_path} is not the key of the root certificate")
    return CertifiedKey(root_cert, key)


def _offline_root(root_dir: Path, passphrase: bytes | None) -> CertifiedKey:
    """The root as `fleet init --offline-root DIR` left it: DIR/root.pem and DIR/root.key."""
    try:
        cert = load_certificates_pem((root_dir / "root.pem").read_bytes())[0]
    except OSError as exc:
        raise ConfigError(
            f"cannot read {root_dir / 'root.pem'}: {exc.strerror}",
            hint="--root-dir is the directory `fleet init --offline-root` wrote.",
        ) from exc
    return _load_root(cert, root_dir / "root.key", passphrase)


def _days_option(function: Any) -> Any:
    return click.option(
        "--days",
        type=click.IntRange(1, 40 * 365),
        default=ISSUING_VALIDITY.days,
        show_default=True,
        help="Validity of the new issuing CA (never past its root's).",
    )(function)


@ca.command("rotate-issuing")
@config_option
@click.option(
    "--root-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Sign with the offline root in DIR (root.pem, root.key) mounted here.",
)
@click.option(
    "--csr-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Root offline elsewhere: keep the new key here and write its CSR to FILE for "
    "`fleet ca sign-issuing` on the offline machine; then `fleet ca install-issuing`.",
)
@_days_option
def rotate_issuing(root_dir: Path | None, csr_out: Path | None, days: int) -> None:
    """Make a new issuing CA and install it as NEXT: trusted and published, not signing.

    Devices, brokers and servers learn it now (/cacerts, cafile, trust kernel);
    `fleet ca promote` makes it sign.
    """
    if root_dir is not None and csr_out is not None:
        raise click.UsageError("--root-dir and --csr-out exclude each other")
    config = load()
    if key_uri(config, KeyRole.ISSUING) is not None:
        raise ConfigError(
            "the issuing CA key is in a PKCS#11 token ([ca] key_store); rotate-issuing "
            "makes file keys only, so it refuses rather than move the fleet's signing key "
            "out of the token",
            reason=Reason.CA_ROTATION_REFUSED,
            hint="Not supported yet for token fleets: see README, CA keys in an HSM.",
        )
    passphrase = _passphrase(config)
    roots = _roots(config)
    key = generate_private_key(key_type_of(roots[0].public_key()))
    key_pem = private_key_to_pem(key, passphrase)
    if csr_out is not None:
        begin_ceremony(config, key_pem)
        csr = create_issuing_csr(key, _new_issuer_name(key, now()))
        csr_out.write_bytes(csr.public_bytes(Encoding.PEM))
        click.echo(f"New issuing key kept in {next_key_path(config)}; request written to {csr_out}")
        click.echo("On the offline machine:")
        click.echo(f"  fleet ca sign-issuing --root-dir DIR --csr {csr_out.name} --out issuing.pem")
        click.echo("Then here: fleet ca install-issuing --cert issuing.pem")
        return
    if root_dir is not None:
        root = _offline_root(root_dir, passphrase)
    else:
        root = _load_root(roots[0], config.ca.root_cert.with_suffix(".key"), passphrase)
    csr = create_issuing_csr(key, _new_issuer_name(key, now()))
    cert = sign_issuing_csr(root, csr, now=now(), validity=dt.timedelta(days=days))
    _install(config, cert, key_pem, roots)


@ca.command("sign-issuing")
@click.option(
    "--root-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The offline root's directory (root.pem, root.key) from `fleet init --offline-root`.",
)
@click.option(
    "--csr", "csr_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True
)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_days_option
def sign_issuing(root_dir: Path, csr_file: Path, out_file: Path, days: int) -> None:
    """The signing ceremony, on the offline machine: certify a new issuing CA's CSR.

    Needs no fleet.toml and no store: only the root in --root-dir. The key's
    passphrase comes from FLEET_CA_KEY_PASSPHRASE if it was encrypted.
    """
    root = _offline_root(root_dir, secret_from_env("FLEET_CA_KEY_PASSPHRASE"))
    raw = read_input_file(csr_file, 64 * 1024, "CSR", Reason.CSR_INVALID)
    try:
        csr = load_csr(raw)
    except FleetError as exc:
        raise ConfigError(
            f"--csr {csr_file}: {exc.message}",
            reason=exc.reason,
            hint="Give the CSR that `fleet ca rotate-issuing --csr-out FILE` wrote on the server.",
        ) from None
    cert = sign_issuing_csr(root, csr, now=now(), validity=dt.timedelta(days=days))
    if out_file.exists():
        raise ConfigError(f"--out {out_file} exists", hint="Name a new file.")
    out_file.write_bytes(certificate_to_pem(cert))
    click.echo(f"Signed issuing CA {cert.subject.rfc4514_string()}")
    click.echo(f"  sha256    {sha256_fingerprint(cert)}")
    click.echo(f"  expires   {when(cert.not_valid_after_utc)}")
    click.echo(f"Carry {out_file} to the server: fleet ca install-issuing --cert {out_file.name}")


@ca.command("install-issuing")
@config_option
@click.option(
    "--cert", "cert_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True, help="The certificate `fleet ca sign-issuing` wrote.",
)  # fmt: skip
def install_issuing(cert_file: Path) -> None:
    """Install the ceremony's certificate as the NEXT issuing CA (checked against the key)."""
    config = load()
    raw = read_input_file(cert_file, 64 * 1024, "certificate", Reason.PEM_INVALID)
    try:
        cert = load_certificates_pem(raw)[0]
    except ConfigError as exc:
        # Not a setting in fleet.toml (the error's usual hint): the file given to --cert.
        raise ConfigError(
            f"--cert {cert_file}: {exc.message}",
            reason=Reason.PEM_INVALID,
            hint="Give the certificate that `fleet ca sign-issuing --out FILE` wrote.",
        ) from None
    try:
        key_pem = next_key_path(config).read_bytes()
    except FileNotFoundError:
        raise RotationRefused(
            "no issuing-CA key is waiting for a certificate",
            hint="Start with fleet ca rotate-issuing --csr-out FILE on this server.",
        ) from None
    key = load_private_key_pem(key_pem, _passphrase(config))
    check_issuing_certificate(cert, key=key, roots=_roots(config), now=now())
    _install(config, cert, None, _roots(config))


def _install(
    config: FleetConfig,
    cert: x509.Certificate,
    key_pem: bytes | None,
    roots: tuple[x509.Certificate, ...],
) -> None:
    generation = install_next(config, cert, key_pem)
    click.echo(f"Next issuing CA installed (generation {generation}):")
    click.echo(f"  sha256    {sha256_fingerprint(cert)}")
    click.echo(f"  expires   {when(cert.not_valid_after_utc)}")
    click.echo(f"It is trusted now; {_pickup(config)}")
    click.echo("New certificates come from it after: fleet ca promote")


def _pickup(config: FleetConfig) -> str:
    # Running servers poll the data directory: until they do, /cacerts and signing
    # are unchanged, so "now" would send the admin looking for a fault.
    return (
        f"running servers pick the change up within {config.ca.reload_seconds} s "
        "([ca] reload_seconds), or at once on SIGHUP."
    )


@ca.command("promote")
@config_option
def promote_cmd() -> None:
    """NEXT becomes CURRENT (signs from now on); the old current becomes RETIRING.

    Devices on the old CA keep connecting and move at their next renewal
    (sooner with `fleet device renew --all --before DATE`).
    """
    config = load()
    old, new = promote(config)
    click.echo(f"Issuing CA {new.short_id} is current; {old.short_id} is retiring.")
    pickup = _pickup(config)
    click.echo(pickup[0].upper() + pickup[1:])


@ca.command("retire")
@config_option
def retire() -> None:
    """Forget the RETIRING issuing CA(s); refused while a good certificate chains to one."""
    config = load()
    retiring = [i for i in list_issuers(config) if i.state is IssuerState.RETIRING]
    if not retiring:
        raise RotationRefused("there is no retiring issuing CA")
    counts = _counts(config, [i.certificate for i in retiring])
    still = [(i, c) for i, c in zip(retiring, counts, strict=True) if c.good]
    if still:
        detail = ", ".join(f"{i.short_id}: {c.good}" for i, c in still)
        total = sum(c.good for _, c in still)
        raise RotationRefused(
            f"{total} good certificate(s) still chain to the retiring issuer ({detail})",
            hint="Wait for those devices to renew (fleet ca status shows progress), or speed it "
            "up with fleet device renew --all --before DATE; revoke devices that never return.",
        )
    for issuer in retiring:
        remove_retiring(config, issuer)
        click.echo(f"Retired issuing CA {issuer.short_id}: no longer trusted or published.")


def _counts(config: FleetConfig, certs: list[x509.Certificate]) -> list[IssuerCounts]:
    from fleet.cli._context import run_async

    async def run() -> list[IssuerCounts]:
        store = await open_store(config.store_url, redis=config.store_redis)
        try:
            return await count_by_issuer(store, certs, now())
        finally:
            await store.close()

    return run_async(run())


@ca.command("status")
@config_option
@json_option
def status(as_json: bool) -> None:
    """Each CA: state, expiry, days left, warnings (180/90/30 days), certificates per
    issuer (good/expired/revoked) and where its key lives."""
    config = load()
    at = now()
    issuers = list_issuers(config)
    counts = _counts(config, [i.certificate for i in issuers])
    rows: list[dict[str, Any]] = []
    # Token keys by their URI (fleet.pki.keystore: never a PIN); file keys by path.
    token = {loc.name: loc.where for loc in key_locations(config) if loc.store == "pkcs11"}
    root_key = config.ca.root_cert.with_suffix(".key")
    for index, root in enumerate(_roots(config)):
        where = str(root_key) if index == 0 and root_key.exists() else "offline"
        where = token.get("root", where) if index == 0 else where
        rows.append(_row("root", "trusted", root, at, where, None))
    for issuer, count in zip(issuers, counts, strict=True):
        where = _key(issuer)
        if issuer.state is IssuerState.CURRENT:
            where = token.get("issuing", where)
        rows.append(_row("issuing", issuer.state.value, issuer.certificate, at, where, count))
    if config.admin.ca_cert.exists():
        admin = load_certificates_pem(config.admin.ca_cert.read_bytes())[0]
        where = token.get("admin", str(config.admin.ca_key))
        rows.append(_row("admin", "current", admin, at, where, None))
    deadline = renew_before(config)
    if as_json:
        echo_json(
            {
                "now": when(at),
                "generation": generation(config),
                "renew_before": when(deadline) if deadline else None,
                "cas": rows,
            }
        )
        return
    table(
        ("ROLE", "STATE", "SHA256", "EXPIRES", "DAYS", "GOOD", "EXPIRED", "REVOKED", "KEY"),
        [
            (
                r["role"], r["state"], r["sha256"][:16], r["not_after"], str(r["days_left"]),
                *(str(r[k]) if k in r else "-" for k in ("good", "expired", "revoked")),
                r["key"],
            )
            for r in rows
        ],
    )  # fmt: skip
    if deadline is not None and deadline > at:
        click.echo(f"renew-before: every device renews before {when(deadline)}")
    for r in rows:
        if r["warning"]:
            click.echo(f"warning: {r['role']} CA {r['sha256'][:16]} {r['warning']}")


def _key(issuer: RegisteredIssuer) -> str:
    return str(issuer.key_path) if issuer.key_path.exists() else "missing"


def _row(
    role: str,
    state: str,
    cert: x509.Certificate,
    at: dt.datetime,
    key: str,
    count: IssuerCounts | None,
) -> dict[str, Any]:
    warning = expiry_warning(cert, at)
    row: dict[str, Any] = {
        "role": role,
        "state": state,
        "subject": cert.subject.rfc4514_string(),
        "sha256": sha256_fingerprint(cert),
        "not_after": when(cert.not_valid_after_utc),
        "days_left": days_left(cert, at),
        "warning": str(warning) if warning else "",
        "key": key,
    }
    if count is not None:
        row |= {"good": count.good, "expired": count.expired, "revoked": count.revoked}
    return row


ca.add_command(rotate_root)
ca.add_command(retire_root)
