"""The console's pages (GET): what an admin reads before acting."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from aiohttp import web

from fleet.authority import lifecycle
from fleet.authority.audit import verify_audit_log
from fleet.http import path_params
from fleet.http.path_params import parse_device_id
from fleet.kernel.device_id import is_device_id_prefix
from fleet.kernel.errors import RequestInvalid
from fleet.manifest import label_problem
from fleet.records import (
    AuditQuery,
    AuditRecord,
    DeviceFilter,
    DeviceState,
    ReplacementStatus,
)
from fleet.store.broker_positions import read_positions
from fleet.ui import stats
from fleet.ui.core import Console, Ctx, query_of

PAGE = 50
AUDIT_PAGE = 100


async def overview(console: Console, ctx: Ctx) -> web.Response:
    store, now = console.store, console.clock.now()
    activity = await stats.hourly_activity(store, now)
    by_state = await stats.devices_by_state(store)
    head = await store.feed_head()
    return console.render(
        "overview.html", ctx=ctx, nav="overview",
        by_state=by_state, total=sum(by_state.values()),
        activity=activity, rects=stats.chart_rects(activity),
        peak=max([max(b.enrolled, sum(b.refused.values())) for b in activity.bars] + [1]),
        expiring={d: await stats.devices_expiring(store, now, d) for d in (7, 30)},
        cas=[(ca, (ca.not_after - now).days) for ca in console.cas],
        feed_head=head,
        brokers=stats.broker_lags(await read_positions(store), head, now),
    )  # fmt: skip


def before_prefix(prefix: str) -> str:
    """A keyset cursor just below every id starting with ``prefix``: the ids are of the
    device-id alphabet, all below "~", so nothing sorts between this and ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) - 1) + "~"


async def devices(console: Console, ctx: Ctx) -> web.Response:
    query = ctx.request.query
    prefix = text(query, "q")
    if prefix is not None and not is_device_id_prefix(prefix):
        raise RequestInvalid("search by the beginning of a device id: letters, digits, . _ -")
    state = text(query, "state")
    if state is not None and state not in {s.value for s in DeviceState}:
        raise RequestInvalid("state must be one of " + ", ".join(s.value for s in DeviceState))
    model, batch, after = text(query, "model"), text(query, "batch"), text(query, "after")
    manufacturer = lifecycle.parse_manufacturer(text(query, "manufacturer"))
    device_filter = DeviceFilter(
        state=DeviceState(state) if state else None, model=model, batch=batch,
        manufacturer_sha256=manufacturer,
    )  # fmt: skip
    start = after or (before_prefix(prefix) if prefix else None)
    found = await console.store.list_devices(device_filter, after=start, limit=PAGE + 1)
    if prefix is not None:
        # Ordered by id: the first id past the prefix ends the search.
        found = [d for d in found if d.device_id.startswith(prefix)]
    more = len(found) > PAGE
    found = found[:PAGE]
    filters = {
        "q": prefix, "state": state, "model": model, "batch": batch, "manufacturer": manufacturer,
    }  # fmt: skip
    next_query = query_of({**filters, "after": found[-1].device_id}) if more else None
    return console.render(
        "devices.html", ctx=ctx, nav="devices", devices=found, filters=filters,
        states=[s.value for s in DeviceState], next_query=next_query,
        manufacturers=await console.store.list_manufacturer_cas(),
        first_query=query_of(filters) if after else None,
    )  # fmt: skip


async def device(console: Console, ctx: Ctx) -> web.Response:
    device_id = path_params.device_id(ctx.request)
    found, trace = await lifecycle.decision_trace(console.store, device_id)
    certificates = await console.store.list_certificates(device_id)
    replacement = await console.store.get_replacement_request(device_id)
    return console.render(
        "device.html", ctx=ctx, nav="devices", device=found, certificates=certificates,
        trace=trace, replacement=replacement,
        reasons=[r.value for r in lifecycle.ADMIN_REASONS],
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Evidence:
    """What a pending device showed when it asked, from its audit records."""

    attempts: int
    first: dt.datetime | None
    last: dt.datetime | None
    manufacturer: str
    source: str
    bootstrap_sha256: str


async def evidence_of(console: Console, device_id: str) -> Evidence:
    _, trace = await lifecycle.decision_trace(console.store, device_id)
    held = [r.event for r in trace if r.event.action == "enroll" and r.event.outcome == "held"]
    last = held[-1].detail if held else {}
    return Evidence(
        attempts=len(held),
        first=held[0].at if held else None,
        last=held[-1].at if held else None,
        manufacturer=last.get("manufacturer", ""),
        source=last.get("source", ""),
        bootstrap_sha256=last.get("bootstrap_sha256", ""),
    )


async def pending(console: Console, ctx: Ctx) -> web.Response:
    after = text(ctx.request.query, "after")
    waiting = await console.store.list_devices(
        DeviceFilter(state=DeviceState.PENDING), after=after, limit=PAGE + 1
    )
    more = len(waiting) > PAGE
    waiting = waiting[:PAGE]
    rows: list[tuple[Any, Evidence]] = [
        (d, await evidence_of(console, d.device_id)) for d in waiting
    ]
    replacements = await console.store.list_replacement_requests(
        ReplacementStatus.PENDING, limit=PAGE
    )
    return console.render(
        "pending.html", ctx=ctx, nav="pending", rows=rows, replacements=replacements,
        next_query=query_of({"after": waiting[-1].device_id}) if more else None,
    )  # fmt: skip


async def bulk(console: Console, ctx: Ctx) -> web.Response:
    return console.render(
        "bulk.html", ctx=ctx, nav="bulk", form=dict.fromkeys(BULK_FIELDS, ""), preview=None,
        result=None, manufacturers=await console.store.list_manufacturer_cas(),
        reasons=[r.value for r in lifecycle.ADMIN_REASONS],
    )  # fmt: skip


BULK_FIELDS = ("batch", "model", "manufacturer", "issued_before", "reason")
AUDIT_FILTERS = ("device_id", "actor", "action", "outcome", "reason")


async def audit(console: Console, ctx: Ctx) -> web.Response:
    """Newest first, AUDIT_PAGE at a time; ``before`` pages to older records. The store
    filters (AuditQuery): nothing beyond the page is read, however long the log."""
    query = ctx.request.query
    filters = {name: text(query, name) for name in AUDIT_FILTERS}
    device_id = filters["device_id"]
    if device_id is not None:
        parse_device_id(device_id)
    since, until = day(query, "since"), day_after(query, "until")
    store = console.store
    head = await stats.audit_head(store)
    # A time range is a sequence range (records are appended in time order).
    after = await stats.first_seq_since(store, since, head) - 1 if since else 0
    upper = head + 1
    if until is not None:
        upper = await stats.first_seq_since(store, until, head)
    before = min(integer(query, "before") or upper, upper)
    search = AuditQuery(
        actor=filters["actor"], action=filters["action"], outcome=filters["outcome"],
        reason=filters["reason"], device_id=device_id, after_seq=after, before_seq=before,
    )  # fmt: skip
    shown: list[AuditRecord] = []
    older: int | None = None  # the `before` of the next (older) page
    while True:
        page = await store.search_audit(search, limit=AUDIT_PAGE - len(shown))
        shown += page.records
        if not page.next_before or len(shown) == AUDIT_PAGE:
            older = page.next_before or None
            break
        search = dataclasses.replace(search, before_seq=page.next_before)
    dates = {
        "since": query.get("since") if since else None,
        "until": text(query, "until"),  # shown as typed, even when it bounds nothing
    }
    older_query = query_of({**filters, **dates, "before": str(older)}) if older else None
    return console.render(
        "audit.html", ctx=ctx, nav="audit", records=shown, filters={**filters, **dates},
        head=head, older_query=older_query, verify=None,
    )  # fmt: skip


def day(query: Any, name: str) -> dt.datetime | None:
    """A date of a query (YYYY-MM-DD) as the start of that day, UTC."""
    value = text(query, name)
    if value is None:
        return None
    try:
        return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
    except ValueError:
        raise RequestInvalid(f"{name} must be a date (YYYY-MM-DD)") from None


def day_after(query: Any, name: str) -> dt.datetime | None:
    """The end of a query's day (inclusive "until"): the start of the next day, UTC;
    None for the calendar's last day, after which nothing can have happened."""
    until = day(query, name)
    if until is None or until.date() == dt.date.max:
        return None
    return until + dt.timedelta(days=1)


async def audit_verify(console: Console, ctx: Ctx) -> web.Response:
    count, problems = await verify_audit_log(console.store)
    first = None
    if problems:
        page = await console.store.audit_records(after_seq=problems[0].seq - 1, limit=1)
        first = page[0] if page else None
    return console.render(
        "audit.html", ctx=ctx, nav="audit", records=[], filters={}, head=count,
        older_query=None, verify={"count": count, "problems": problems, "first": first},
    )  # fmt: skip


def text(query: Any, name: str) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    value = str(value).strip()
    problem = label_problem(value)  # the manifest's rule: every model and batch can be named
    if problem is not None:
        raise RequestInvalid(f"{name} {problem}")
    return value or None


def integer(query: Any, name: str) -> int | None:
    value = query.get(name)
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise RequestInvalid(f"{name} must be a whole number")
    return int(value)
