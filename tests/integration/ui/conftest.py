"""A real `fleet serve` with real enrolled devices, and Debian's Chromium to drive the console."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import Browser, Page, expect

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.records import ManifestEntry
from fleet.store.protocol import Store
from tests.integration.admin.conftest import Admin, make_admin
from tests.integration.est.conftest import Device, Fleet, running_fleet, trust_manufacturer
from tests.support.browser import chromium
from tests.support.factory import CertifiedKey, make_manufacturer

T = TypeVar("T")


@dataclasses.dataclass
class Console:
    admin: Admin
    active: list[str]  # enrolled devices of model m1, batch b1
    lot: list[str]  # enrolled devices of model m2, batch lot-7 (for bulk revocation)
    pending: str  # asked to enroll without being in the manifest
    globex: list[str]  # enrolled devices whose bootstrap chains to a second manufacturer
    globex_sha256: str  # that manufacturer CA's fingerprint
    shots: Path  # screenshots written here (test artifacts)

    @property
    def fleet(self) -> Fleet:
        return self.admin.fleet

    @property
    def base(self) -> str:
        return self.fleet.server.base

    def store(self, action: Callable[[Store], Awaitable[T]]) -> T:
        """Run ``action`` on the server's store in a thread of its own: Playwright's
        sync API keeps an event loop running in the test's thread."""
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self.fleet.server.store, action).result()


def enroll(fleet: Fleet, device: Device) -> None:
    _, csr = fleet.csr(device.device_id)
    fleet.issued(fleet.enroll(device, csr), device.device_id)


def enrolled_in(
    fleet: Fleet, device_id: str, model: str, batch: str, maker: CertifiedKey | None = None
) -> str:
    device = fleet.new_device(in_manifest=False, device_id=device_id, manufacturer=maker)
    entry = ManifestEntry(device_id, sha256_fingerprint(device.bootstrap.certificate), model, batch)
    fleet.server.store(lambda s: s.import_manifest([entry], dt.datetime.now(dt.UTC)))
    enroll(fleet, device)
    return device_id


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    base = tmp_path_factory.mktemp("console")
    env = {"FLEET_ADMIN_BULK_CONFIRM_THRESHOLD": "3"}
    with running_fleet(base, env=env) as fleet:
        admin = make_admin(fleet)
        # Trusted before the first enrollment reads (and caches) the manufacturer CAs.
        globex = make_manufacturer("Globex", now=dt.datetime.now(dt.UTC))
        trust_manufacturer(fleet.server, globex, "Globex")
        active = [enrolled_in(fleet, f"meter-{n:03d}", "m1", "b1") for n in range(1, 6)]
        lot = [enrolled_in(fleet, f"pump-{n:03d}", "m2", "lot-7") for n in range(1, 5)]
        gauges = [enrolled_in(fleet, f"gauge-{n:03d}", "m3", "g1", globex) for n in (1, 2)]
        stranger = fleet.new_device(in_manifest=False, device_id="stranger-001")
        _, csr = fleet.csr("stranger")
        assert fleet.enroll(stranger, csr).status == 202  # held for an admin
        # A refusal for the overview's chart: a bootstrap certificate that is not the pinned one.
        pinned = fleet.new_device(device_id="valve-001")
        fleet.new_device(device_id="valve-001")  # the manifest now pins another certificate
        _, csr = fleet.csr("valve")
        assert fleet.enroll(pinned, csr).status == 403
        shots = base / "screenshots"
        shots.mkdir()
        yield Console(
            admin, active, lot, "stranger-001", gauges,
            sha256_fingerprint(globex.certificate), shots,
        )  # fmt: skip


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Browser]:
    # After the server and its devices: Playwright's sync API runs an event loop
    # in this thread from here on (store actions then go through Console.store).
    with chromium() as running:
        yield running


def sign_in(
    browser: Browser, console: Console, role: str, *, phone: bool = False, token: str | None = None
) -> Page:
    """A new browser context signed in with the role's token, typed with the keyboard."""
    viewport = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 860}
    context = browser.new_context(ignore_https_errors=True, viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    page.goto(f"{console.base}/ui/")
    expect(page).to_have_url(f"{console.base}/ui/login")
    page.get_by_label("Admin token").focus()
    page.keyboard.type(token or console.admin.tokens[role])
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Overview")
    return page
