"""`fleet-agent`: enroll, renew and report status of this device's certificate.

Exit codes (also in ``device_agent.errors``):
  0 ok · 1 unexpected failure · 2 configuration error (bad arguments or state)
  · 3 refused by policy (401/403) · 4 transient failure, retry later · 5 pending approval
  · 6 revoked (certificate_revoked / device_revoked): stop, do not restart

Test hooks (environment): FLEET_AGENT_CLOCK_OFFSET, FLEET_AGENT_CRASH_AT (see
``device_agent.testhooks``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from device_agent.agent import Agent
from device_agent.errors import EXIT_OK, AgentError, ConfigError, Pending
from device_agent.est_client import Auth, ClientCertificate, TokenAuth
from device_agent.health import STATUS_EXIT, DeviceState
from device_agent.keystore import FileKey, FileKeyStore, require_private
from device_agent.lock import exclusive
from device_agent.renewal import RenewalPolicy
from device_agent.state import AgentConfig, StateDir, entries, undo_enrollment
from device_agent.testhooks import clock_from_env
from fleet.kernel.errors import FleetError
from fleet.kernel.fingerprint import normalize_fingerprint

log = logging.getLogger("device_agent")

STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FLEET_AGENT_STATE_DIR",
    required=True,
    help="Where keys, certificates and state live (created 0700).",
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="fleet-agent %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def make_agent(state_dir: Path, **kwargs: Any) -> Agent:
    try:
        clock = clock_from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    policy = policy_from_env()
    return Agent(StateDir(state_dir, FileKeyStore(state_dir)), clock=clock, policy=policy, **kwargs)


def _read_token(path: Path) -> str:
    require_private(path, "token file")
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def _fail(exc: AgentError) -> None:
    click.echo(f"fleet-agent: {exc.diagnostics()}", err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fleet-enroll", prog_name="fleet-agent")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """The fleet device agent: EST enrollment and certificate renewal.

    Exit codes: 0 ok, 1 unexpected, 2 config error, 3 refused by policy,
    4 transient failure (retry later), 5 pending approval, 6 revoked (stop,
    do not restart).
    """
    _setup_logging(verbose)


@main.command()
@click.option("--server", required=True, help="EST server, https://HOST:PORT")
@click.option("--ca-fingerprint", required=True, help="SHA-256 of the fleet root CA (pinned).")
@click.option(
    "--bootstrap-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Factory (bootstrap) certificate PEM; kept as a path to re-enroll if the "
    "operational certificate expires.",
)
@click.option(
    "--bootstrap-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Key of --bootstrap-cert (PEM, unencrypted, mode 0600: refused if others can read it).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="One-time enrollment token (file mode 0600); never on the command line.",
)
@STATE_DIR
@click.option("--device-id", help="Device id (required with --token-file).")
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Seconds to keep retrying (approval pending, server down) before giving up.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Enroll even if this state directory has an identity (the old one is replaced).",
)
def enroll(
    server: str,
    ca_fingerprint: str,
    bootstrap_cert: Path | None,
    bootstrap_key: Path | None,
    token_file: Path | None,
    state_dir: Path,
    device_id: str | None,
    max_wait: float,
    force: bool,
) -> None:
    """First enrollment: pin the fleet root, generate a key here, get a certificate.

    A failed first enrollment leaves no state behind (the directory is removed
    if it did not exist). Held for approval (exit 5), the key and settings are
    kept so that running the same command again resumes.
    """
    try:
        try:
            fingerprint = normalize_fingerprint(ca_fingerprint)
        except FleetError as exc:
            raise ConfigError(f"--ca-fingerprint: {exc.message}") from exc
        auth: Auth
        if token_file is not None:
            if bootstrap_cert or bootstrap_key:
                raise ConfigError("give either --token-file or --bootstrap-cert/--bootstrap-key")
            if not device_id:
                raise ConfigError("--token-file needs --device-id")
            auth = TokenAuth(device_id, _read_token(token_file))
        elif bootstrap_cert and bootstrap_key:
            require_private(bootstrap_key, "bootstrap key")
            auth = ClientCertificate(bootstrap_cert.resolve(), FileKey.open(bootstrap_key))
        else:
            raise ConfigError(
                "no credential: give --bootstrap-cert and --bootstrap-key, or --token-file"
            )
        config = AgentConfig(
            server=server,
            ca_fingerprint=fingerprint,
            device_id=device_id,
            bootstrap_cert=str(bootstrap_cert.resolve()) if bootstrap_cert else None,
            bootstrap_key=str(bootstrap_key.resolve()) if bootstrap_key else None,
        )
        before = entries(state_dir)
        with exclusive(state_dir, create=True):
            agent = make_agent(state_dir)
            if not force and agent.state.exists():
                existing = agent.identity()
                if existing is not None:
                    click.echo(
                        f"already enrolled as {existing.device_id} (serial {existing.serial:x}); "
                        "use `fleet-agent renew`, or `enroll --force` to enroll again"
                    )
                    return
            try:
                identity = agent.enroll(config, auth, max_wait=max_wait)
            except Pending:
                raise  # held for approval: keep the key and config to ask again with
            except BaseException:
                # Nothing half-made stays behind: the next attempt starts clean.
                undo_enrollment(state_dir, before)
                raise
    except AgentError as exc:
        _fail(exc)
        return
    click.echo(
        f"enrolled as {identity.device_id}: serial {identity.serial:x}, "
        f"valid until {identity.not_after.isoformat()}"
    )


@main.command()
@STATE_DIR
@click.option("--force", is_flag=True, help="Renew now even if not due (and ignore backoff).")
def renew(state_dir: Path, force: bool) -> None:
    """Renew the operational certificate with a new key (simplereenroll) when due."""
    try:
        with exclusive(state_dir):
            result = make_agent(state_dir).renew(force=force)
    except AgentError as exc:
        _fail(exc)
        return
    click.echo(result.message)


@main.command()
@STATE_DIR
def status(state_dir: Path) -> None:
    """JSON: state, reason, certificate, renewal, last error, broker connection.

    \b
    state: ok, renewal_due, expired, no_identity, pending_approval,
      suspended, revoked, broker_refused, broker_unreachable
    broker: what `fleet-agent run` last saw (connected / refused with a
      reason / unreachable, backing off until retry_at / stopped)

    Exit 0 while the device holds a certificate it can use; otherwise 2
    no_identity, 3 expired or suspended, 5 pending_approval, 6 revoked.
    """
    try:
        report = make_agent(state_dir).status()
    except AgentError as exc:
        _fail(exc)
        return
    click.echo(json.dumps(report, indent=2))
    code = STATUS_EXIT.get(DeviceState(report["state"]), EXIT_OK)
    if code:
        sys.exit(code)


_POLICY_ENV = {
    "FLEET_AGENT_RENEW_FRACTION": "fraction",
    "FLEET_AGENT_RENEW_JITTER": "jitter",
    "FLEET_AGENT_BACKOFF_FLOOR": "backoff_floor",
    "FLEET_AGENT_BACKOFF_BASE": "backoff_base",
    "FLEET_AGENT_BACKOFF_CAP": "backoff_cap",
    "FLEET_AGENT_MAX_RETRY_AFTER": "max_retry_after",
}


def policy_from_env(environ: Mapping[str, str] | None = None) -> RenewalPolicy:
    """Renewal timing from FLEET_AGENT_RENEW_FRACTION/_JITTER, FLEET_AGENT_BACKOFF_FLOOR/_BASE/_CAP
    and FLEET_AGENT_MAX_RETRY_AFTER (seconds); FLEET_AGENT_SKEW_SECONDS for the clock allowance."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    try:
        for name, field in _POLICY_ENV.items():
            if env.get(name):
                values[field] = float(env[name])
        if env.get("FLEET_AGENT_SKEW_SECONDS"):
            values["skew"] = dt.timedelta(seconds=float(env["FLEET_AGENT_SKEW_SECONDS"]))
        return RenewalPolicy(**values)
    except ValueError as exc:
        raise ConfigError(f"renewal settings from the environment: {exc}") from exc


@main.command()
@STATE_DIR
@click.option("--mqtt", "mqtt", required=True, metavar="HOST:PORT", help="MQTT broker (mTLS).")
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds between heartbeats to devices/<id>/status.",
)
@click.option(
    "--reconnect-max",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Longest wait between broker reconnect attempts (exponential backoff with jitter).",
)
def run(state_dir: Path, mqtt: str, heartbeat: float, reconnect_max: float) -> None:
    """Long-running: keep the certificate renewed and an MQTT session over mTLS.

    SIGTERM/SIGINT: flush, disconnect, exit 0. SIGUSR1: renew now. SIGHUP:
    re-read the identity from the state directory. The broker connection
    state is written to STATE_DIR/broker.json for `fleet-agent status`.
    Revoked (the EST server says certificate_revoked or device_revoked,
    asked when the broker's refusal looks like a revocation): disconnect and
    exit 6.
    """
    from device_agent.runner import RunSettings, parse_host_port
    from device_agent.runner import run as run_agent

    try:
        host, port = parse_host_port(mqtt)
        settings = RunSettings(host, port, heartbeat=heartbeat, reconnect_max=reconnect_max)
        with exclusive(state_dir):
            code = run_agent(make_agent(state_dir), settings)
    except AgentError as exc:
        _fail(exc)
        return
    sys.exit(code)
