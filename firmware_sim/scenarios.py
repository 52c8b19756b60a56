"""The situations `fleet-sim run --scenario NAME` puts a fleet through, with faults.

Each is a function of a :class:`~firmware_sim.bench.Bench` (a fresh world with
a factory's devices: real ``SimDevice``s running the agent's own EST and MQTT
code) and a :class:`~firmware_sim.report.Report` it fills with checks (each
passed or not, with what was seen), figures (latencies, counts) and time
series for plots. firmware_sim.runner names them and runs one.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from device_agent.agent import RenewResult
from device_agent.errors import Pending, Refused, Transient
from device_agent.mqtt import MqttSession
from device_agent.renewal import Phase, assess
from device_agent.testhooks import CLOCK_OFFSET_ENV, CRASH_AT_ENV, CRASH_STEPS
from firmware_sim.bench import (
    ADMIN,
    MQTT_RECONNECT_MAX,
    MQTT_RECONNECT_MIN,
    Bench,
    describe,
    failures_in,
    parallel,
    wait_until,
)
from firmware_sim.device import SimDevice
from firmware_sim.report import Report, percentile
from firmware_sim.world import BrokerThread
from fleet.authority.admin import approve_device
from fleet.authority.lifecycle import revoke_device
from fleet.records import DeviceState, RevocationReason
from fleet.store.protocol import Store

BROKER_OUTAGE_S = 3.0  # how long the broker stays unreachable in broker-outage-and-recovery


# -- scenarios ---------------------------------------------------------------------------------


def first_boot_storm(bench: Bench, report: Report) -> None:
    """Every device boots at once: concurrent enrollments, then every session connects."""
    started = time.monotonic()
    results = bench.enroll_all(bench.devices, "first boot (EST)")
    failures = failures_in(results)
    latencies = [s for _, out, s in results if not isinstance(out, BaseException)]
    report.check(
        "all enrolled",
        not failures,
        f"{len(latencies)}/{bench.count} enrolled"
        + (f"; e.g. {failures[0][0].device_id}: {describe(failures[0][1])}" if failures else ""),
    )
    report.figures["enroll_p50_s"] = percentile(latencies, 0.5)
    report.figures["enroll_p95_s"] = percentile(latencies, 0.95)
    report.figures["enroll_max_s"] = max(latencies, default=0.0)
    report.figures["enroll_wall_s"] = time.monotonic() - started
    report.series["enroll_latency_s"] = [(i, s) for i, s in enumerate(sorted(latencies))]
    enrolled = [d for d in bench.devices if d.identity is not None]
    connect_started = time.monotonic()
    if bench.light:
        # Light sessions: the broker's view of each wave is checked while it is held open.
        missing = bench.connect_all_light(enrolled, report)
        wrong = missing
        at_once = report.figures["connected_at_once"]
        waves = report.figures["connect_waves"]
        how = f" (light sessions; {at_once} held open at once, {waves} wave(s))"
    else:
        missing = bench.connect_all(enrolled)
        how = ""
    report.figures["connect_wall_s"] = time.monotonic() - connect_started
    report.check(
        "all connected over mTLS",
        not missing and len(enrolled) == bench.count,
        f"{len(enrolled) - len(missing)}/{bench.count} connected{how}",
    )
    if not bench.light:
        wrong = bench.broker_sees_issued_serials(enrolled)
    report.check("broker sees issued serials", not wrong, f"{len(wrong)} mismatches")
    states = bench.store(lambda s: _states(s, [d.device_id for d in bench.devices]))
    active = sum(1 for st in states.values() if st is DeviceState.ACTIVE)
    report.check("server lists all active", active == bench.count, f"{active} active")


def revoke_while_connected(bench: Bench, report: Report) -> None:
    """Revoke some connected devices: each is kicked live and cannot come back; others stay."""
    _enroll_and_connect(bench, report)
    broker = bench.world.broker
    assert broker is not None
    victims = bench.devices[: max(1, bench.count // 10)]
    survivors = bench.devices[len(victims) :]
    lags = []
    for index, device in enumerate(victims, start=1):
        session = device.session
        assert session is not None
        started = time.monotonic()
        bench.store(functools.partial(_revoke, device_id=device.device_id))
        if wait_until(
            functools.partial(_kicked, broker, device.device_id, session),
            10,
        ):
            lags.append(time.monotonic() - started)
        bench.sample_connected()
        bench.progress.update("revoking", index, len(victims))
    report.check(
        "revoked devices kicked live", len(lags) == len(victims), f"{len(lags)}/{len(victims)}"
    )
    report.figures["revoke_to_disconnect_p50_ms"] = percentile(lags, 0.5) * 1000
    report.figures["revoke_to_disconnect_max_ms"] = max(lags, default=0.0) * 1000
    report.series["revoke_to_disconnect_latency_s"] = list(enumerate(lags))
    # Their own MQTT code keeps trying with the revoked certificate: all refused.
    refused_before = broker.refused_revoked()
    report.check(
        "reconnects refused",
        wait_until(lambda: broker.refused_revoked() >= refused_before + len(victims), 15)
        and all(d.session is not None and d.session.connections == 1 for d in victims),
        f"{broker.refused_revoked() - refused_before:.0f} refusals (revoked)",
    )
    renewals = [_outcome(functools.partial(d.renew, force=True)) for d in victims]
    report.check(
        "revoked devices cannot renew",
        all(isinstance(r, Refused) for r in renewals),
        ", ".join(sorted({type(r).__name__ for r in renewals})),
    )
    still = [d.device_id for d in survivors if d.session is None or not d.session.connected]
    report.check("other devices unaffected", not still, f"{len(survivors) - len(still)} connected")


def cloned_bootstrap(bench: Bench, report: Report) -> None:
    """Clones of enrolled devices (same bootstrap cert and key, new key) are held and flagged."""
    _enroll_and_connect(bench, report)
    originals = bench.devices[: max(1, bench.count // 5)]
    assert bench.factory is not None
    factory = {d.device_id: d for d in bench.factory.devices}

    def attempt(original: SimDevice) -> object:
        made = factory[original.device_id]
        clone = SimDevice(
            original.device_id,
            bench.work_dir / "clones" / original.device_id,
            server=bench.world.server.base,
            ca_fingerprint=bench.world.root_fingerprint,
            bootstrap_cert=made.cert,
            bootstrap_key=made.key,
        )
        return _outcome(lambda: clone.enroll(max_wait=0.0))

    outcomes = [attempt(d) for d in originals]
    stopped = [o for o in outcomes if isinstance(o, Pending | Refused)]
    report.check(
        "clones get no certificate",
        len(stopped) == len(originals),
        f"{len(stopped)}/{len(originals)} held or refused "
        f"({', '.join(sorted({type(o).__name__ for o in outcomes}))})",
    )
    flagged = bench.store(lambda s: _flagged(s, [d.device_id for d in originals]))
    report.check(
        "audit flags possible_clone",
        flagged == len(originals),
        f"{flagged}/{len(originals)} flagged",
    )


def manual_approval_queue(bench: Bench, report: Report) -> None:
    """Half the devices are not in the manifest: held (202) until an admin approves each."""
    known = bench.devices[: bench.registered]
    unknown = bench.devices[bench.registered :]
    results = bench.enroll_all(known, "manifest devices")
    report.check("manifest devices enroll", not failures_in(results), f"{len(known)} enrolled")
    first = [_outcome(functools.partial(d.enroll, max_wait=0.0)) for d in unknown]
    report.check(
        "unknown devices held (202)",
        all(isinstance(o, Pending) for o in first),
        f"{sum(isinstance(o, Pending) for o in first)}/{len(unknown)} pending",
    )
    states = bench.store(lambda s: _states(s, [d.device_id for d in unknown]))
    queued = sum(1 for st in states.values() if st is DeviceState.PENDING)
    report.check("approval queue lists them", queued == len(unknown), f"{queued} pending")
    approved_at: dict[str, float] = {}

    def admin() -> None:  # approves one every 50 ms while the devices keep asking
        for device in unknown:
            time.sleep(0.05)
            bench.store(functools.partial(_approve, device_id=device.device_id))
            approved_at[device.device_id] = time.monotonic()

    thread = threading.Thread(target=admin, daemon=True)
    thread.start()
    results = bench.enroll_all(unknown, "waiting for approval", max_wait=30.0)
    thread.join(30)
    report.check(
        "approved devices enroll by themselves",
        not failures_in(results),
        f"{len(unknown) - len(failures_in(results))}/{len(unknown)} enrolled after approval",
    )
    done_at = time.monotonic()
    waits = [done_at - approved_at.get(d.device_id, done_at) for d in unknown]
    report.figures["approval_to_enrolled_max_s"] = max(waits, default=0.0)


def server_outage_and_recovery(bench: Bench, report: Report) -> None:
    """The EST server goes down: connected devices stay connected, enrollments wait it out."""
    half = max(1, bench.count // 2)
    early, late = bench.devices[:half], bench.devices[half:]
    results = bench.enroll_all(early, "before the outage")
    report.check("enrolled before the outage", not failures_in(results), f"{len(early)}")
    missing = bench.connect_all(early)
    report.check("connected before the outage", not missing, f"{len(early) - len(missing)}")
    port = bench.world.server.port
    bench.world.server.stop()
    bench.progress.note(f"EST server stopped (port {port})")
    during = [_outcome(functools.partial(d.enroll, max_wait=0.0)) for d in late[:3]]
    report.check(
        "enrollment during the outage is transient",
        all(isinstance(o, Transient) for o in during),
        ", ".join(sorted({type(o).__name__ for o in during})) or "no device left to try",
    )
    renew = _outcome(lambda: early[0].renew(force=True))
    report.check("renewal during the outage is transient", isinstance(renew, Transient),
                 type(renew).__name__)  # fmt: skip
    still = [d.device_id for d in early if d.session is None or not d.session.connected]
    report.check(
        "MQTT sessions survive the outage", not still, f"{len(early) - len(still)} connected"
    )

    def restart() -> None:
        time.sleep(2.0)
        bench.world.server.start()
        bench.progress.note("EST server back")

    thread = threading.Thread(target=restart, daemon=True)
    outage_started = time.monotonic()
    thread.start()
    results = bench.enroll_all(late, "waiting out the outage", max_wait=60.0)
    thread.join(30)
    report.check(
        "everyone enrolled after recovery",
        not failures_in(results),
        f"{len(late) - len(failures_in(results))}/{len(late)}",
    )
    report.figures["outage_to_all_enrolled_s"] = time.monotonic() - outage_started
    renewed = _outcome(functools.partial(early[0].renew, force=True))
    report.check(
        "renewal works after recovery",
        isinstance(renewed, RenewResult) and renewed.renewed,
        renewed.message if isinstance(renewed, RenewResult) else describe(renewed),
    )


def max_reconnect_attempts(seconds: float, minimum: float, maximum: float) -> int:
    """The most connection attempts one session's backoff allows in ``seconds``.

    The first attempt is at once; the n-th delay after it is at least half of
    ``min(maximum, minimum * 2**n)`` (``device_agent.backoff.Backoff``).
    """
    attempts, elapsed, failures = 1, 0.0, 0
    while True:
        elapsed += min(maximum, minimum * 2.0**failures) / 2
        failures += 1
        if elapsed > seconds:
            return attempts
        attempts += 1


def broker_outage_and_recovery(bench: Bench, report: Report) -> None:
    """The broker is unreachable a while: sessions back off, then all return with their certs."""
    proxy = bench.broker_proxy
    assert proxy is not None
    _enroll_and_connect(bench, report)
    before = {d.device_id: d.session.connections for d in bench.devices if d.session}
    attempts_before = proxy.connections
    outage_started = time.monotonic()
    proxy.cut()
    bench.progress.note(f"broker unreachable for {BROKER_OUTAGE_S:.0f} s (connections dropped)")
    lost = wait_until(
        lambda: all(d.session is not None and not d.session.connected for d in bench.devices),
        10,
    )
    bench.sample_connected()
    report.check("every session lost the broker", lost, f"{bench.count} dropped")
    while time.monotonic() - outage_started < BROKER_OUTAGE_S:
        bench.sample_connected()
        time.sleep(0.1)
    outage = time.monotonic() - outage_started
    attempts = proxy.connections - attempts_before
    per_device = max_reconnect_attempts(outage, MQTT_RECONNECT_MIN, MQTT_RECONNECT_MAX)
    bound = bench.count * per_device
    report.figures["broker_outage_s"] = round(outage, 3)
    report.figures["reconnect_attempts_during_outage"] = attempts
    report.check(
        "no reconnect tight loop",
        attempts <= bound,
        f"{attempts} attempts in {outage:.1f} s (backoff allows at most {bound}: "
        f"{per_device} per device)",
    )
    proxy.restore()
    bench.progress.note("broker reachable again")
    restored = time.monotonic()

    def back() -> bool:
        bench.sample_connected()
        return all(
            d.session is not None
            and d.session.connected
            and d.session.connections > before.get(d.device_id, 0)
            for d in bench.devices
        )

    # the next retry is at most one backoff delay away (the longest so far, doubled)
    returned = wait_until(back, MQTT_RECONNECT_MAX + 5, step=0.05)
    report.figures["restore_to_all_reconnected_s"] = time.monotonic() - restored
    up = sum(1 for d in bench.devices if d.session is not None and d.session.connected)
    report.check("every device reconnected after the outage", returned, f"{up}/{bench.count}")
    wrong = bench.broker_sees_issued_serials(bench.devices)
    report.check(
        "broker admits them with their certificates", not wrong, f"{len(wrong)} mismatches"
    )


def renewal_wave(bench: Bench, report: Report) -> None:
    """The fleet's clock jumps 21 days ahead (past 2/3 of 30 days): every device renews once."""
    _enroll_and_connect(bench, report)
    early = [_outcome(d.renew) for d in bench.devices[:3]]
    report.check(
        "not due at first",
        all(getattr(r, "renewed", True) is False for r in early),
        "renew() without --force did nothing",
    )
    offset = dt.timedelta(days=21)
    assert bench.clock is not None
    bench.clock.offset = offset + dt.timedelta(seconds=bench.clock_skew)
    due = [
        d
        for d in bench.devices
        if d.identity is not None
        and assess(
            d.identity.not_after, d.agent.next_renewal(d.identity), bench.clock.now(),
            d.agent.policy,
        ) is not Phase.FRESH
    ]  # fmt: skip
    report.check("all due 21 days later", len(due) == bench.count, f"{len(due)} due")
    old = {d.device_id: d.serial for d in bench.devices}
    results = parallel(lambda d: d.renew(), bench.devices, bench.progress, "renewal wave")
    renewed = [d for d, out, _ in results if not isinstance(out, BaseException) and out.renewed]
    latencies = [s for _, out, s in results if not isinstance(out, BaseException)]
    report.figures["renew_p50_s"] = percentile(latencies, 0.5)
    report.figures["renew_p95_s"] = percentile(latencies, 0.95)
    report.series["renew_latency_s"] = list(enumerate(sorted(latencies)))
    report.check("every device renewed", len(renewed) == bench.count, f"{len(renewed)}")
    report.check(
        "new serials",
        all(d.serial != old[d.device_id] for d in renewed),
        "each certificate replaced",
    )
    swapped = parallel(
        lambda d: d.reconnect_with_current_identity(10), renewed, bench.progress, "reconnecting"
    )
    ok = [d for d, out, _ in swapped if out is True]
    report.check("reconnected with the new certificate", len(ok) == len(renewed), f"{len(ok)}")
    wrong = bench.broker_sees_issued_serials(renewed)
    report.check("broker sees the new serials", not wrong, f"{len(wrong)} mismatches")


def power_loss_during_renewal(bench: Bench, report: Report) -> None:
    """Power is cut at every step of a renewal (the agent killed like SIGKILL); each recovers."""
    _enroll_and_connect(bench, report, connect=False)
    crashes: list[tuple[SimDevice, str, int]] = []
    for index, device in enumerate(bench.devices):
        step = CRASH_STEPS[index % len(CRASH_STEPS)]
        proc = subprocess.run(
            [sys.executable, "-m", "device_agent", "renew", "--force",
             "--state-dir", str(device.state.path)],
            capture_output=True, timeout=60, check=False,
            env={**os.environ, CRASH_AT_ENV: step, CLOCK_OFFSET_ENV: str(bench.clock_skew)},
        )  # fmt: skip
        crashes.append((device, step, proc.returncode))
        bench.progress.update("power cuts", index + 1, bench.count)
    killed = [c for c in crashes if c[2] == 137]
    report.check(
        "agent killed at the named step",
        len(killed) == bench.count,
        f"{len(killed)}/{bench.count} (steps: {', '.join(CRASH_STEPS)})",
    )
    usable = [d for d in bench.devices if d.agent.identity() is not None]
    report.check(
        "an identity survives every cut", len(usable) == bench.count, f"{len(usable)} usable"
    )
    results = parallel(lambda d: d.renew(force=True), bench.devices, bench.progress, "recovery")
    failures = failures_in(results)
    report.check(
        "next renewal recovers",
        not failures,
        f"{bench.count - len(failures)}/{bench.count}"
        + (f"; e.g. {describe(failures[0][1])}" if failures else ""),
    )
    missing = bench.connect_all(bench.devices)
    report.check(
        "everyone connects afterwards", not missing, f"{bench.count - len(missing)} connected"
    )
    wrong = bench.broker_sees_issued_serials(bench.devices)
    report.check("broker sees current serials", not wrong, f"{len(wrong)} mismatches")


def _enroll_and_connect(bench: Bench, report: Report, *, connect: bool = True) -> None:
    results = bench.enroll_all(bench.devices)
    failures = failures_in(results)
    latencies = [s for _, out, s in results if not isinstance(out, BaseException)]
    report.series.setdefault("enroll_latency_s", list(enumerate(sorted(latencies))))
    report.check("all enrolled", not failures, f"{bench.count - len(failures)}/{bench.count}")
    if connect:
        missing = bench.connect_all(bench.devices)
        report.check("all connected", not missing, f"{bench.count - len(missing)}/{bench.count}")


def _outcome(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as exc:
        return exc


async def _revoke(store: Store, device_id: str) -> object:
    now = dt.datetime.now(dt.UTC)
    return await revoke_device(
        store, device_id, RevocationReason.KEY_COMPROMISE, actor=ADMIN, now=now
    )


async def _approve(store: Store, device_id: str) -> object:
    return await approve_device(store, device_id, actor=ADMIN, now=dt.datetime.now(dt.UTC))


def _kicked(broker: BrokerThread, device_id: str, session: MqttSession) -> bool:
    return not broker.serials_of(device_id) and not session.connected


async def _states(store: Store, ids: list[str]) -> dict[str, DeviceState]:
    return {d: (await store.get_device(d)).state for d in ids}


async def _flagged(store: Store, ids: list[str]) -> int:
    count = 0
    for device_id in ids:
        records = await store.audit_records(device_id=device_id, after_seq=0, limit=1000)
        if any(r.event.detail.get("flag") == "possible_clone" for r in records):
            count += 1
    return count
