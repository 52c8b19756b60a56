"""`fleet-sim run --scenario fifteen-years`: a fleet through its whole life, CAs and all.

Every participant follows the simulator's clock (``fleet.kernel.clock.SimulatedClock``):
`fleet serve` and the `fleet` CLI through ``FLEET_SIM_CLOCK_FILE``, the devices (the real
agent, in this process) and the embedded broker through the same file. Time advances one
simulated day per step. A device acts only when its own agent says so (its renewal policy,
on its own, possibly skewed, clock); the simulator decides only who is reachable and when
the CA operator acts. The CA operator uses the `fleet ca` commands of issue 13's contract,
through :class:`CaOperator` only.

Device certificates: the scenario sets ``[profile] validity_days`` (see
``LifetimePlan.device_validity``) long enough that a device switched off for the planned
time comes back with a certificate that still works — the agent renews at ~2/3 of the
lifetime, so a device can be away for at most ~1/3 of it; with 30-day certificates a device
off for 2 years must re-bootstrap, which today's policy holds for an admin. It also keeps
the run to a few minutes (~10 renewals per device in 15 years, not ~270).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from device_agent.errors import AgentError
from firmware_sim.bench import Bench, Progress, parallel
from firmware_sim.ca_operator import CaAction, CaOperator
from firmware_sim.device import SimDevice
from firmware_sim.report import Report
from firmware_sim.simclock import ClockDriver
from fleet.kernel.clock import ShiftedClock
from fleet.store.protocol import Store

YEAR_DAYS = 365
SEED = 15  # device skews and who is offline: the same fleet on every run (printed)
FULL_MIN_DEVICES = 200
# A device whose renewals have failed this long is stranded (the final checks say so); its
# agent would retry every few seconds for ever, which only makes a failing run slow.
GIVE_UP_DAYS = 60


@dataclasses.dataclass(frozen=True, slots=True)
class CaEvent:
    day: int
    action: CaAction
    args: tuple[str, ...] = ()  # options of the command, e.g. ("--days", "3650")


@dataclasses.dataclass(frozen=True, slots=True)
class Absence:
    """A share of the fleet unreachable from ``start`` (a day) for ``days`` days."""

    label: str
    fraction: float
    start: int
    days: int

    @property
    def end(self) -> int:
        return self.start + self.days


@dataclasses.dataclass(frozen=True, slots=True)
class LifetimePlan:
    """What happens when, in simulated days from the start (pure data)."""

    years: int
    device_validity: dt.timedelta
    ca_events: tuple[CaEvent, ...]
    outage: Absence  # e.g. a region's network: spans a promotion when there is one
    powered_off: Absence  # devices on a shelf
    skewed_fraction: float = 0.2
    skew_range: tuple[dt.timedelta, dt.timedelta] = (
        # Behind by at most 10 min: the server backdates 5 min and the agent allows 15.
        dt.timedelta(minutes=-10),
        dt.timedelta(days=3),
    )

    @property
    def days(self) -> int:
        return self.years * YEAR_DAYS

    def check(self) -> None:
        """Refuse a plan whose powered-off devices would come back expired.

        They enrolled on day 0, so their first certificate is good until the validity
        (or its issuer's end, later than the shelf in both plans); 30 days to spare.
        """
        if self.powered_off.end + 30 > self.device_validity.days:
            raise ValueError(
                f"devices off until day {self.powered_off.end} need certificates valid longer "
                f"than {self.device_validity.days} days"
            )


def full_plan() -> LifetimePlan:
    """15 years: two issuing-CA rotations and one root rollover (see the README).

    The server refuses a device certificate that would outlive its issuer (issue 13), so
    an issuing CA signs 800-day certificates only until 800 days before its end: the
    first one (5 years from `fleet init`) until day 1026, so its successor is created on
    day 900 and promoted on day 990. Successors live 10 years (``--days``), so one more
    rotation covers the rest. Each old issuing CA is retired once it has expired (no good
    certificate can chain to it then). The root is rolled over on day 2500, before the
    second rotation, whose issuing CA the new root signs; the old root is retired after
    the last issuing CA it signed.
    """
    y = YEAR_DAYS
    ten_years = ("--days", str(10 * y))
    events = [
        CaEvent(900, CaAction.ROTATE_ISSUING, ten_years),
        CaEvent(990, CaAction.PROMOTE),
        CaEvent(5 * y + 15, CaAction.RETIRE),
        CaEvent(2500, CaAction.ROTATE_ROOT),
        CaEvent(3500, CaAction.ROTATE_ISSUING, ten_years),
        CaEvent(3590, CaAction.PROMOTE),
        CaEvent(900 + 10 * y + 15, CaAction.RETIRE),
        CaEvent(900 + 10 * y + 45, CaAction.RETIRE_ROOT),
    ]
    return LifetimePlan(
        years=15,
        device_validity=dt.timedelta(days=800),
        ca_events=tuple(events),
        outage=Absence("outage", 0.3, 975, 30),  # spans the first promotion
        # Shipped, enrolled, then on a shelf for 2 years: back with 40 days of certificate.
        powered_off=Absence("powered off", 0.1, 30, 2 * y),
    )


def quiet_plan(years: int) -> LifetimePlan:
    """No CA events (one issuing CA must outlive the run): the structure, testable today."""
    return LifetimePlan(
        years=years,
        device_validity=dt.timedelta(days=400),
        ca_events=(),
        outage=Absence("outage", 0.3, 220, 30),  # across the first renewal wave
        powered_off=Absence("powered off", 0.1, 30, 300),
    )


# -- devices -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Life:
    """One device's life in the scenario."""

    device: SimDevice
    clock: ShiftedClock
    wake: dt.datetime  # on the device's own clock: when its agent wants to act next
    away: list[Absence] = dataclasses.field(default_factory=list)
    renewals: int = 0
    failures: int = 0
    last_error: str = ""
    failing_since: int | None = None  # the day its renewals began to fail, if they still do
    first_error: str = ""  # what failed on that day: the cause, where last_error is a symptom

    def reachable(self, day: int) -> bool:
        return not any(a.start <= day < a.end for a in self.away)

    def given_up(self, day: int) -> bool:
        """Failing for GIVE_UP_DAYS: stranded; the simulator stops stepping it (time only)."""
        return self.failing_since is not None and day - self.failing_since > GIVE_UP_DAYS


def issuer_label(cert: x509.Certificate) -> str:
    """An issuer's name for reports: its CN and the start of its key id (CNs may repeat)."""
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else cert.issuer.rfc4514_string()
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        key_id = (aki.key_identifier or b"").hex()[:8]
    except x509.ExtensionNotFound:
        key_id = "?"
    # Rotated issuing CAs carry the key id in their CN already (fleet ca rotate-issuing).
    return cn if cn.endswith(key_id) else f"{cn} {key_id}"


@dataclasses.dataclass
class Year:
    enrollments: int = 0
    renewals: int = 0
    failures: int = 0
    connected: int = 0
    reachable: int = 0
    per_issuer: Counter[str] = dataclasses.field(default_factory=Counter)

    def row(self) -> str:
        issuers = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_issuer.items()))
        return (
            f"enrolled {self.enrollments}, renewed {self.renewals}, failed {self.failures}, "
            f"connected {self.connected}/{self.reachable}; good certificates by issuer: {issuers}"
        )


def assign_absences(
    ids: Sequence[str], plan: LifetimePlan, rng: random.Random
) -> dict[str, list[Absence]]:
    """Who is away when: disjoint shares of the fleet for the outage and the shelf (pure)."""
    shuffled = list(ids)
    rng.shuffle(shuffled)
    n_off = round(len(ids) * plan.powered_off.fraction)
    n_out = round(len(ids) * plan.outage.fraction)
    away: dict[str, list[Absence]] = {i: [] for i in ids}
    for i in shuffled[:n_off]:
        away[i].append(plan.powered_off)
    for i in shuffled[n_off : n_off + n_out]:
        away[i].append(plan.outage)
    return away


async def admin_actions_per_device(store: Store) -> Counter[str]:
    """Audit records an admin wrote about each device (the target is none at all)."""
    per_device: Counter[str] = Counter()
    after = 0
    while True:
        batch = await store.audit_records(after_seq=after, limit=1000)
        if not batch:
            return per_device
        for record in batch:
            event = record.event
            if event.device_id and event.actor.startswith("admin:"):
                per_device[event.device_id] += 1
        after = batch[-1].seq


# -- the run -----------------------------------------------------------------------------------


def run_lifetime(
    count: int,
    work_dir: Path,
    progress: Progress,
    *,
    years: int | None = None,
    ca_events: bool = True,
) -> Report:
    """Build the world on the simulator's clock, live the plan, check and report."""
    plan = full_plan() if ca_events else quiet_plan(years or 3)
    if years is not None and ca_events:
        plan = dataclasses.replace(plan, years=years)
    if ca_events and years is None:
        count = max(count, FULL_MIN_DEVICES)
    plan.check()
    report = Report("fifteen-years", count)
    report.figures["seed"] = SEED
    report.figures["years"] = plan.years
    report.figures["device_validity_days"] = plan.device_validity.days
    report.figures["ca_events"] = len(plan.ca_events)
    progress.note(f"seed {SEED}; {plan.years} years, {len(plan.ca_events)} CA events")
    work_dir.mkdir(parents=True, exist_ok=True)
    driver = ClockDriver(work_dir.resolve() / "sim-clock", dt.datetime.now(dt.UTC))
    bench = Bench(
        work_dir, count, progress,
        server_env={"FLEET_PROFILE_VALIDITY_DAYS": str(plan.device_validity.days)},
        sim_clock=driver.clock,
    )  # fmt: skip
    try:
        _live(bench, plan, driver, report)
    except Exception as exc:
        report.check("scenario ran to the end", False, f"{type(exc).__name__}: {exc}")
    finally:
        bench.teardown()
    return report


def _live(bench: Bench, plan: LifetimePlan, driver: ClockDriver, report: Report) -> None:
    rng = random.Random(SEED)  # noqa: S311 - a reproducible fleet, not secrets
    bench.setup()
    operator = CaOperator(bench)
    away = assign_absences([d.device_id for d in bench.devices], plan, rng)
    lives: list[Life] = []
    for device in bench.devices:
        skewed = rng.random() < plan.skewed_fraction
        low, high = plan.skew_range
        skew = low + (high - low) * rng.random() if skewed else dt.timedelta(0)
        clock = ShiftedClock(driver.clock, skew)
        device.agent.clock = clock
        lives.append(Life(device, clock, driver.at(0), away[device.device_id]))
    years = [Year() for _ in range(plan.years)]
    enrolled = bench.enroll_all(bench.devices)
    for life, (_, outcome, _) in zip(lives, enrolled, strict=True):
        if isinstance(outcome, BaseException):
            life.failures += 1
            life.last_error = str(outcome)
            years[0].failures += 1
        elif life.device.identity is not None:
            years[0].enrollments += 1
            life.wake = life.device.agent.next_wakeup(life.device.identity)
    issuer_series: dict[str, list[tuple[float, float]]] = {}
    events: dict[int, list[CaEvent]] = {}
    for event in plan.ca_events:
        events.setdefault(event.day, []).append(event)
    for day in range(1, plan.days + 1):
        year = years[min((day - 1) // YEAR_DAYS, plan.years - 1)]
        for event in events.pop(day, []):
            driver.move_to(day)
            again = operator.apply(day, event.action, event.args)
            if again is not None:
                events.setdefault(again, []).append(event)
        if driver.at(day) >= operator.tls_due():
            driver.move_to(day)
            operator.renew_tls()
        # By each device's own clock; one that was unreachable acts on the day it returns.
        due = [
            life
            for life in lives
            if life.reachable(day)
            and not life.given_up(day)
            and driver.at(day) + life.clock.offset >= life.wake
        ]
        if due:
            driver.move_to(day)
            _renew(bench, due, year, day)
        if day % 30 == 0 or day == plan.days:
            _sample_issuers(lives, day, driver.at(day), issuer_series)
        if day % YEAR_DAYS == 0:
            driver.move_to(day)
            _year_end(bench, lives, day, driver.at(day), year)
            bench.progress.update("years", day // YEAR_DAYS, plan.years)
    for number, y in enumerate(years, start=1):
        report.figures[f"year {number:02d}"] = y.row()
    for label, points in issuer_series.items():
        report.series[f"certificates_by_issuer|{label}"] = points
    for day, action, said in operator.done:
        report.figures[f"ca day {day}"] = f"{action.value}: {said}"[:120]
    report.figures["ca_retirements_postponed"] = len(operator.postponed)
    _final_checks(bench, plan, operator, lives, report, years)


def _renew(bench: Bench, due: list[Life], year: Year, day: int) -> None:
    def act(life: Life) -> bool:
        return life.device.renew().renewed

    results = parallel(act, due, bench.progress, "renewing")
    for life, outcome, _ in results:
        if isinstance(outcome, BaseException):
            life.failures += 1
            year.failures += 1
            life.last_error = outcome.message if isinstance(outcome, AgentError) else f"{outcome!r}"
            if life.failing_since is None:
                life.failing_since = day
                life.first_error = f"day {day}: {life.last_error}"
        else:
            life.failing_since = None
            if outcome:
                life.renewals += 1
                year.renewals += 1
        identity = life.device.identity or life.device.agent.identity()
        if identity is not None:
            life.device.identity = identity
            life.wake = life.device.agent.next_wakeup(identity)


def good_by_issuer(lives: list[Life], now: dt.datetime) -> Counter[str]:
    """Unexpired device certificates held, by issuer (an expired one counts for nobody)."""
    return Counter(
        issuer_label(life.device.identity.certificate)
        for life in lives
        if life.device.identity is not None and life.device.identity.not_after > now
    )


def _sample_issuers(
    lives: list[Life], day: int, now: dt.datetime, series: dict[str, list[tuple[float, float]]]
) -> None:
    counts = good_by_issuer(lives, now)
    for label in set(series) | set(counts):
        series.setdefault(label, []).append((day / YEAR_DAYS, float(counts.get(label, 0))))


def _year_end(bench: Bench, lives: list[Life], day: int, now: dt.datetime, year: Year) -> None:
    """Every reachable device connects to the broker with what it holds; count and record."""
    reachable = [life for life in lives if life.reachable(day) and life.device.identity]
    scratch = Report("connect", len(reachable))
    missing = set(bench.connect_all_light([life.device for life in reachable], scratch))
    year.reachable = len(reachable)
    year.connected = len(reachable) - len(missing)
    year.failures += len(missing)
    year.per_issuer = good_by_issuer(lives, now)


def _final_checks(
    bench: Bench,
    plan: LifetimePlan,
    operator: CaOperator,
    lives: list[Life],
    report: Report,
    years: list[Year],
) -> None:
    newest = operator.newest_issuing()
    now = bench.world.now()
    holders = [life for life in lives if life.device.identity is not None]
    current = [
        life
        for life in holders
        if _issued_by(life.device.identity.certificate, newest)  # type: ignore[union-attr]
        and life.device.identity.not_after > now  # type: ignore[union-attr]
    ]
    report.check(
        "every device holds a certificate from the newest issuing CA",
        len(current) == len(lives),
        f"{len(current)}/{len(lives)} from {newest.subject.rfc4514_string()}",
    )
    missing = set(bench.connect_all_light([life.device for life in holders], Report("end", 0)))
    connected = [life for life in holders if life.device.device_id not in missing]
    report.check(
        "every device ends connected to the broker",
        len(connected) == len(lives),
        f"{len(connected)}/{len(lives)} admitted with the serial they were issued",
    )
    stranded = [life for life in lives if life not in current or life.device.device_id in missing]
    report.check(
        "0 devices stranded",
        not stranded,
        f"{len(stranded)}"
        + (
            f"; e.g. {stranded[0].device.device_id}: "
            f"{stranded[0].first_error or stranded[0].last_error}"
            if stranded
            else ""
        ),
    )
    admin = bench.store(admin_actions_per_device)
    report.check(
        "0 admin actions per device",
        not admin,
        f"max {max(admin.values(), default=0)} (audit records by admin actors, per device)",
    )
    report.check(
        "every year ran",
        all(y.reachable for y in years),
        f"{len(years)} years, {sum(y.renewals for y in years)} renewals, "
        f"{sum(y.failures for y in years)} failures",
    )
    rotations = sum(1 for _, a, _ in operator.done if a is CaAction.ROTATE_ISSUING)
    rollovers = sum(1 for _, a, _ in operator.done if a is CaAction.ROTATE_ROOT)
    expected = Counter(e.action for e in plan.ca_events)
    undone = [
        e.action.value for e in plan.ca_events if e.action not in {a for _, a, _ in operator.done}
    ]
    refused = f"; not done: {', '.join(undone)}" if undone else ""
    if undone and operator.postponed:
        day, action, why = operator.postponed[-1]
        refused += f" (last refusal, day {day}, {action.value}: {why.strip()[-240:]})"
    report.check(
        "CA events done",
        len(operator.done) == len(plan.ca_events),
        f"{rotations} issuing rotation(s), {rollovers} root rollover(s) "
        f"of {expected[CaAction.ROTATE_ISSUING]} and {expected[CaAction.ROTATE_ROOT]} planned"
        + refused,
    )
    report.figures["server_tls_renewals"] = operator.tls_renewals
    report.figures["renewals_per_device_max"] = max((x.renewals for x in lives), default=0)
    report.figures["skewed_devices"] = sum(1 for x in lives if x.clock.offset)
    report.figures["outage_devices"] = sum(1 for x in lives if plan.outage in x.away)
    report.figures["powered_off_devices"] = sum(1 for x in lives if plan.powered_off in x.away)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
