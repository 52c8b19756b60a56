"""The agent's use-cases: enroll, renew, status. CLIs and the long-running loop call these.

Every path that gets a new certificate goes through the same crash-safe steps
(see ``testhooks.CRASH_STEPS``): the new key and certificate are written beside
the current pair, proven in a TLS handshake with the server (GET /cacerts with
the new pair as client certificate), and only then made current.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from device_agent.errors import AgentError, ConfigError, Pending, Refused, Revoked, Transient
from device_agent.est_client import Auth, ClientCertificate, EstClient, TokenAuth, fetch_cacerts
from device_agent.health import (
    PENDING_REASON,
    BrokerLink,
    certificate_state,
    device_state,
)
from device_agent.keystore import FileKey, KeyHandle, require_private
from device_agent.lock import is_running
from device_agent.renewal import (
    Phase,
    Random,
    RenewalPolicy,
    assess,
    backoff_delay,
    is_expiry_refusal,
    plan_after_expiry,
    renewal_time,
)
from device_agent.state import AgentConfig, Identity, PendingRenewal, StateDir
from device_agent.testhooks import crash_point
from device_agent.trust import CaCerts, CertificateUnusable, check_issued
from fleet.kernel.clock import Clock, SystemClock
from fleet.kernel.reasons import Reason

log = logging.getLogger("device_agent")


@dataclasses.dataclass(frozen=True)
class RenewResult:
    identity: Identity
    renewed: bool
    message: str


def build_csr(key: KeyHandle) -> x509.CertificateSigningRequest:
    # Empty subject: the server writes the subject from the authenticated
    # channel; the CSR only proves possession of the key.
    return key.sign_csr(x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])))


def bootstrap_auth(config: AgentConfig) -> ClientCertificate | None:
    if not (config.bootstrap_cert and config.bootstrap_key):
        return None
    key = Path(config.bootstrap_key)
    require_private(key, "bootstrap key")
    return ClientCertificate(Path(config.bootstrap_cert), FileKey.open(key))


class Agent:
    def __init__(
        self,
        state: StateDir,
        *,
        clock: Clock | None = None,
        policy: RenewalPolicy | None = None,
        rand: Random = random.random,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 30.0,
    ) -> None:
        self.state = state
        self.clock: Clock = clock or SystemClock()
        self.policy = policy or RenewalPolicy()
        self.rand = rand
        self.sleep = sleep
        self.timeout = timeout

    # -- reading -------------------------------------------------------------------
    def config(self) -> AgentConfig:
        return self.state.load_config()

    def cacerts(self, config: AgentConfig) -> CaCerts:
        """The stored chain, or fetched again (pinned) when missing or damaged."""
        cacerts = self.state.load_cacerts(config.ca_fingerprint)
        if cacerts is None:
            log.info("fetching /cacerts from %s (root pinned by fingerprint)", config.server)
            cacerts = self._fetch_cacerts(config)
        return cacerts

    def _fetch_cacerts(self, config: AgentConfig) -> CaCerts:
        fresh = fetch_cacerts(
            config.server, config.ca_fingerprint, timeout=self.timeout, now=self.clock.now(),
            skew=self.policy.skew, clock=self.clock,
        )  # fmt: skip
        return self._adopt(config, None, fresh)

    def _refresh_cacerts(self, client: EstClient, config: AgentConfig, cacerts: CaCerts) -> CaCerts:
        """/cacerts again, anonymously (RFC 7030 allows it), following a root rollover.

        Used when the server issued a certificate from a CA this device does not
        know yet: an issuing CA under a new root the device has not moved to
        (it slept through the rollover). A failure leaves the stored trust.
        """
        try:
            fresh = client.cacerts(
                config.ca_fingerprint, kept=cacerts.roots, now=self.clock.now(),
                skew=self.policy.skew,
            )  # fmt: skip
        except AgentError as exc:
            log.warning("could not refresh /cacerts: %s", exc.message)
            return cacerts
        return self._adopt(config, cacerts, fresh)

    def _adopt(self, config: AgentConfig, before: CaCerts | None, fresh: CaCerts) -> CaCerts:
        """Keep what /cacerts taught: new issuing CAs, and a new root only if a link certified it.

        The bundle (new root beside the old) is written atomically before the
        pin moves in agent.json, so a power cut in between leaves the old pin
        with both roots stored, and the next /cacerts finishes the move.
        """
        for why in fresh.refused:
            log.warning(
                "/cacerts offers a root this device does not trust (%s): %s; keeping the pin %s…",
                Reason.ROOT_NOT_CERTIFIED, why, fresh.pinned_sha256[:16],
            )  # fmt: skip
        if fresh != before:
            self.state.save_cacerts(fresh)
        if fresh.pinned_sha256 != config.ca_fingerprint:
            self.state.save_config(dataclasses.replace(config, ca_fingerprint=fresh.pinned_sha256))
            log.warning(
                "root rollover: pin moved from %s… to %s… (certified by a link certificate "
                "from the pinned root); the old root is kept while it is valid",
                config.ca_fingerprint[:16], fresh.pinned_sha256[:16],
            )  # fmt: skip
        return fresh

    def identity(self) -> Identity | None:
        config = self.config()
        cacerts = self.state.load_cacerts(config.ca_fingerprint)
        return self.state.load(cacerts)

    def next_renewal(self, identity: Identity) -> dt.datetime:
        status = self.state.load_status()
        scheduled = status.next_renewal
        if scheduled is None or not identity.not_before <= scheduled <= identity.not_after:
            scheduled = renewal_time(
                identity.not_before, identity.not_after, self.policy, self.rand
            )
        return scheduled

    def next_wakeup(self, identity: Identity) -> dt.datetime:
        """When the long-running loop should call ``renew`` next."""
        status = self.state.load_status()
        if status.failures and status.next_attempt is not None:
            return status.next_attempt
        return self.next_renewal(identity)

    def status(self) -> dict[str, Any]:
        """The report `fleet-agent status` prints (see README, "Run a device")."""
        config = self.config()
        identity = self.identity()
        status = self.state.load_status()
        now = self.clock.now()
        broker = self.state.load_broker()
        running = broker is not None and is_running(self.state.path, broker.pid)
        report: dict[str, Any] = {
            "device_id": config.device_id,
            "server": config.server,
            "state": None,
            "certificate_state": None,
            "reason": status.last_reason,
            "serial": None,
            "not_before": None,
            "not_after": None,
            "next_renewal": None,
            "renewal_pending": False,
            "last_error": status.last_error,
            "last_error_at": _iso(status.last_error_at),
            "failures": status.failures,
            "next_attempt": _iso(status.next_attempt),
            "agent_running": running,
            "broker": None,
        }
        phase = None
        if identity is not None:
            next_renewal = self.next_renewal(identity)
            phase = assess(identity.not_after, next_renewal, now, self.policy)
            report.update(
                device_id=identity.device_id,
                serial=f"{identity.serial:x}",
                not_before=_iso(identity.not_before),
                not_after=_iso(identity.not_after),
                next_renewal=_iso(next_renewal),
                renewal_pending=self.state.pending(identity) is not None,
                cert_file=str(identity.cert_path),
                cacerts_file=str(self.state.cacerts_path),
            )
        if broker is not None:
            report["broker"] = broker.to_json()
            if not running and broker.state is not BrokerLink.STOPPED:
                # The run that wrote it is gone (killed, crashed): say so, keep what it saw.
                report["broker"].update(state="not_running", last_state=broker.state.value)
                report["broker"]["summary"] = "fleet-agent run is not running; it last saw: " + (
                    broker.summary()
                )
        state = device_state(phase, status.last_reason, broker if running else None)
        report["state"] = state.value
        report["certificate_state"] = certificate_state(phase).value
        report["warnings"] = list(self.state.warnings)
        return report

    # -- enrollment ------------------------------------------------------------------------
    def enroll(self, config: AgentConfig, auth: Auth, *, max_wait: float = 0.0) -> Identity:
        """First enrollment; retries 202s and transient failures for up to ``max_wait`` s."""
        self.state.create()
        deadline = time.monotonic() + max_wait
        failures = 0
        while True:
            try:
                identity = self._enroll_once(config, auth)
            except (Pending, Transient) as exc:
                failures += 1
                if isinstance(exc, Pending):
                    delay = min(exc.retry_after, self.policy.max_retry_after)
                    delay = max(delay, self.policy.backoff_floor)
                else:
                    delay = backoff_delay(
                        failures, self.policy, self.rand, retry_after=exc.retry_after
                    )
                remaining = deadline - time.monotonic()
                self._record(exc, delay if remaining > 0 else None)
                if remaining <= 0 or delay > remaining:
                    log.error(
                        "enroll: %s; giving up after %d attempt(s) (--max-wait %.0f s)",
                        exc.message, failures, max_wait,
                    )  # fmt: skip
                    raise
                log.warning(
                    "enroll: %s; attempt %d, retrying in %.1f s", exc.message, failures, delay
                )
                self.sleep(delay)
                continue
            except AgentError as exc:
                self._record(exc, None)
                raise
            return identity

    def _enroll_once(self, config: AgentConfig, auth: Auth) -> Identity:
        self.state.save_config(config)
        cacerts = self.state.load_cacerts(config.ca_fingerprint)
        if cacerts is None:
            cacerts = self._fetch_cacerts(config)
            config = self.config()  # the pin may have moved
        client = EstClient(config.server, cacerts.roots, timeout=self.timeout, clock=self.clock)
        current = self.state.load(cacerts)
        pending = self.state.begin_renewal(current)
        expected = auth.device_id if isinstance(auth, TokenAuth) else config.device_id
        cert = client.simpleenroll(
            build_csr(pending.key), auth, on_sent=lambda: crash_point("csr_sent")
        )
        identity = self._install(client, config, cacerts, pending, cert, expected)
        if config.device_id != identity.device_id:
            self.state.save_config(dataclasses.replace(config, device_id=identity.device_id))
        log.info(
            "enrolled as %s: certificate serial %x valid until %s",
            identity.device_id, identity.serial, identity.not_after.isoformat(),
        )  # fmt: skip
        return identity

    # -- renewal -----------------------------------------------------------------------------
    def renew(self, *, force: bool = False) -> RenewResult:
        """Renew if due (always with ``force``); one attempt. Raises typed errors on failure.

        Without ``force`` a renewal that failed recently is not retried before
        its backoff expires (Transient, nothing recorded): calling this in a
        loop can never turn into a tight loop of requests.
        """
        if not force:
            status = self.state.load_status()
            now = self.clock.now()
            if status.failures and status.next_attempt and now < status.next_attempt:
                raise Transient(
                    f"backing off after {status.failures} failure(s): {status.last_error}",
                    retry_after=(status.next_attempt - now).total_seconds(),
                    hint=f"next attempt at {status.next_attempt.isoformat()} (or use --force)",
                )
        try:
            return self._renew(force=force)
        except (Pending, Transient) as exc:
            failures = self.state.load_status().failures + 1
            retry_after = exc.retry_after
            delay = backoff_delay(failures, self.policy, self.rand, retry_after=retry_after)
            self._record(exc, delay)
            log.warning("renew: %s; next attempt in %.0f s", exc.message, delay)
            raise
        except Refused as exc:
            # Expired with nothing else to try: a later `renew` (timer, cron) must not
            # hammer the server with a request that will be refused; keep to the slow pace.
            self._record(exc, exc.retry_after)
            raise
        except AgentError as exc:
            self._record(exc, None)
            raise

    def _renew(self, *, force: bool) -> RenewResult:
        config = self.config()
        cacerts = self.cacerts(config)
        config = self.config()  # the pin may have moved
        client = EstClient(config.server, cacerts.roots, timeout=self.timeout, clock=self.clock)
        identity = self.state.load(cacerts)
        now = self.clock.now()
        if identity is None:
            return self._recover_without_identity(config)
        pending = self.state.pending(identity)
        if pending is not None and pending.certificate is not None:
            finished = self._finish_interrupted(client, config, cacerts, pending, identity)
            if finished is not None:
                return RenewResult(finished, True, "finished an interrupted renewal")
        if not force:
            next_renewal = self.next_renewal(identity)
            if assess(identity.not_after, next_renewal, now, self.policy) is Phase.FRESH:
                self.state.record_success(next_renewal=next_renewal)
                return RenewResult(
                    identity, False, f"not due: renewal scheduled at {next_renewal.isoformat()}"
                )
        pending = self.state.begin_renewal(identity)
        current = ClientCertificate(identity.cert_path, identity.key)
        try:
            cert = client.simplereenroll(
                build_csr(pending.key), current, on_sent=lambda: crash_point("csr_sent")
            )
        except Refused as exc:
            if not is_expiry_refusal(exc.reason):
                self.state.abandon_renewal(pending)
                raise
            return self._after_expiry(config, exc)
        new = self._install(client, config, cacerts, pending, cert, identity.device_id)
        log.info(
            "renewed: serial %x -> %x, valid until %s",
            identity.serial, new.serial, new.not_after.isoformat(),
        )  # fmt: skip
        return RenewResult(new, True, f"renewed: new certificate serial {new.serial:x}")

    def _after_expiry(self, config: AgentConfig, refusal: Refused) -> RenewResult:
        """The server says the certificate expired (the device was offline too long)."""
        auth = bootstrap_auth(config)
        plan = plan_after_expiry(
            has_bootstrap=auth is not None, rebootstrap_refused=False, failures=0,
            policy=self.policy, rand=self.rand,
        )  # fmt: skip
        log.warning("%s", plan.explanation)
        if auth is None:
            raise Refused(
                f"{refusal.message}; {plan.explanation}",
                reason=refusal.reason, status=refusal.status, hint=plan.explanation,
                retry_after=plan.delay,
            )  # fmt: skip
        try:
            identity = self._enroll_once(config, auth)
        except Revoked:
            raise  # nothing to retry, slowly or not
        except Refused as exc:
            slow = plan_after_expiry(
                has_bootstrap=True, rebootstrap_refused=True, failures=1,
                policy=self.policy, rand=self.rand,
            )  # fmt: skip
            raise Refused(
                f"{exc.message}; {slow.explanation}",
                reason=exc.reason, status=exc.status, hint=slow.explanation,
                retry_after=slow.delay,
            ) from exc  # fmt: skip
        return RenewResult(identity, True, "re-enrolled with the bootstrap certificate")

    def _recover_without_identity(self, config: AgentConfig) -> RenewResult:
        auth = bootstrap_auth(config)
        if auth is None:
            raise ConfigError(
                f"no usable key and certificate in {self.state.path} "
                f"({'; '.join(self.state.warnings) or 'none enrolled'})",
                hint="enroll again: ask an admin for a token (`fleet device token ID`) and run "
                "fleet-agent enroll --token-file F",
            )
        log.warning("no usable identity: enrolling again with the bootstrap certificate")
        identity = self._enroll_once(config, auth)
        return RenewResult(identity, True, "re-enrolled with the bootstrap certificate")

    def _finish_interrupted(
        self,
        client: EstClient,
        config: AgentConfig,
        cacerts: CaCerts,
        pending: PendingRenewal,
        identity: Identity,
    ) -> Identity | None:
        assert pending.certificate is not None
        try:
            check_issued(
                pending.certificate, cacerts, expected_device_id=identity.device_id,
                key=pending.key.public_key(), now=self.clock.now(), skew=self.policy.skew,
            )  # fmt: skip
        except CertificateUnusable as exc:
            log.warning("interrupted renewal left an unusable certificate (%s); discarding", exc)
            self.state.abandon_renewal(pending)
            return None
        log.info("finishing the renewal interrupted after its certificate was written")
        return self._prove_and_commit(client, config, cacerts, pending)

    # -- the common tail: check, write, prove, switch ---------------------------------------------
    def _install(
        self,
        client: EstClient,
        config: AgentConfig,
        cacerts: CaCerts,
        pending: PendingRenewal,
        cert: x509.Certificate,
        expected_device_id: str | None,
    ) -> Identity:
        if cacerts.issuer_of(cert) is None:
            # Issued by a CA this device does not know: /cacerts may carry a root
            # rollover that certifies it (only through a link from a trusted root).
            cacerts = self._refresh_cacerts(client, config, cacerts)
        try:
            check_issued(
                cert, cacerts, expected_device_id=expected_device_id,
                key=pending.key.public_key(), now=self.clock.now(), skew=self.policy.skew,
            )  # fmt: skip
        except CertificateUnusable as exc:
            raise Transient(f"the server issued an unusable certificate: {exc}") from exc
        crash_point("cert_received")
        pending = self.state.store_certificate(pending, cert)
        return self._prove_and_commit(client, config, cacerts, pending)

    def _prove_and_commit(
        self, client: EstClient, config: AgentConfig, cacerts: CaCerts, pending: PendingRenewal
    ) -> Identity:
        assert pending.certificate is not None
        fresh = client.cacerts(
            config.ca_fingerprint, ClientCertificate(pending.cert_path, pending.key),
            kept=cacerts.roots, now=self.clock.now(), skew=self.policy.skew,
        )  # fmt: skip
        self._adopt(self.config(), cacerts, fresh)
        identity = self.state.commit_renewal(pending)
        self.state.record_success(
            next_renewal=renewal_time(
                identity.not_before, identity.not_after, self.policy, self.rand
            )
        )
        return identity

    def _record(self, exc: AgentError, delay: float | None) -> None:
        if not self.state.path.is_dir():
            return
        now = self.clock.now()
        next_attempt = now + dt.timedelta(seconds=delay) if delay is not None else None
        reason = None
        if isinstance(exc, Refused):
            reason = exc.reason
        elif isinstance(exc, Pending):
            reason = PENDING_REASON
        self.state.record_error(exc.message, now=now, next_attempt=next_attempt, reason=reason)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
