"""What every step of `fleet-sim demo` shares: the world, the factory's output, the devices.

The steps live in three modules (the fleet's own steps, and those of each
broker); each holds a ``DemoContext`` and reads and fills it in step order.
A step returns ``Verified`` or raises ``StepFailed``; ``firmware_sim.demo``
runs them and prints the table.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TextIO

from firmware_sim.device import BrokerAddress, SimDevice
from firmware_sim.factory import FactoryOutput
from firmware_sim.world import World
from fleet.authority.lifecycle import revoke_device
from fleet.records import AuditRecord, DeviceState, RevocationReason
from fleet.store.protocol import Store

ADMIN = "admin:fleet-sim-demo"


class StepFailed(Exception):
    """A step's outcome was not what it must be (the message says what was seen)."""


@dataclasses.dataclass(frozen=True)
class Verified:
    """What a step saw: ``detail`` is printed under it, ``short`` goes to the final table."""

    detail: str
    short: str


@dataclasses.dataclass
class DemoContext:
    work_dir: Path
    world: World
    out: TextIO
    device_count: int
    factory: FactoryOutput | None = None
    devices: list[SimDevice] = dataclasses.field(default_factory=list)
    # Simulated sensor readings, not secrets.
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def sim_device(
        self,
        device_id: str,
        *,
        bootstrap_cert: Path | None = None,
        bootstrap_key: Path | None = None,
        state_name: str | None = None,
    ) -> SimDevice:
        return SimDevice(
            device_id,
            self.work_dir / "devices" / (state_name or device_id),
            server=self.world.server.base,
            ca_fingerprint=self.world.root_fingerprint,
            bootstrap_cert=bootstrap_cert,
            bootstrap_key=bootstrap_key,
            rng=random.Random(device_id),  # noqa: S311 - jitter, not secrets
        )

    def require_factory(self) -> FactoryOutput:
        if self.factory is None:
            raise StepFailed("the factory step did not run")
        return self.factory

    def connect_all(self, address: BrokerAddress) -> None:
        """Start every device's MQTT session and wait until all are up."""
        for device in self.devices:
            device.connect(address)
        not_connected = [
            d.device_id
            for d in self.devices
            if d.session is None or not d.session.wait_connected(10)
        ]
        if not_connected:
            raise StepFailed(f"not connected after 10 s: {', '.join(not_connected[:5])}")

    def publish_telemetry(self) -> None:
        """Every device publishes one simulated reading."""
        for device in self.devices:
            device.publish_telemetry(
                temperature_c=round(self.rng.uniform(18.0, 26.0), 1),
                humidity_pct=round(self.rng.uniform(30.0, 60.0), 1),
            )

    def renew_first(self) -> tuple[SimDevice, str | None, str]:
        """The first device renews (a new key): the device, its old and its new serial."""
        device = self.devices[0]
        old = device.serial
        result = device.renew(force=True)
        new = device.serial
        if not result.renewed or new is None or new == old:
            raise StepFailed(f"renewal did not give a new certificate ({result.message})")
        return device, old, new

    def revoked_device(self) -> SimDevice:
        """The device the revoke step revokes: not the one that renewed, when there are two."""
        return self.devices[1] if len(self.devices) > 1 else self.devices[0]

    def revoke(self, device: SimDevice) -> None:
        """An admin revokes ``device`` (keyCompromise) in the store, as `fleet revoke` does."""
        revocation = self.world.store(
            lambda s: revoke_device(
                s, device.device_id, RevocationReason.KEY_COMPROMISE,
                actor=ADMIN, now=self.world.now(), note="fleet-sim demo",
            )
        )  # fmt: skip
        if revocation.event is None:
            raise StepFailed("the store reports the device as already revoked")


# -- store queries ------------------------------------------------------------------------


async def device_states(store: Store, ids: list[str]) -> dict[str, DeviceState]:
    return {d: (await store.get_device(d)).state for d in ids}


async def audit_of(store: Store, device_id: str) -> list[AuditRecord]:
    return await store.audit_records(device_id=device_id, after_seq=0, limit=1000)


# -- small helpers ------------------------------------------------------------------------


def short_serial(serial: str | None) -> str:
    return "none" if serial is None else serial[:10] + "…"
