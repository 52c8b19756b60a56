"""The demo's steps on the fleet's side, the same whichever broker runs.

Create the fleet, make a factory's devices, trust the manufacturer and import
its manifest, start the EST server, enroll every device, and try a clone.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

from device_agent.errors import AgentError, Pending, Refused
from firmware_sim.demo_context import (
    DemoContext,
    StepFailed,
    Verified,
    audit_of,
    device_states,
    short_serial,
)
from firmware_sim.factory import run_factory
from fleet.records import DeviceState

ENROLL_WORKERS = 8


class FleetSteps:
    def __init__(self, context: DemoContext) -> None:
        self.context = context

    def init(self) -> Verified:
        world = self.context.world
        world.init()
        if not world.config_path.is_file() or not world.root_pem.is_file():
            raise StepFailed("fleet init did not write fleet.toml and ca/root.pem")
        return Verified(
            f"root CA {world.root_fingerprint[:16]}…, data in {world.data_dir}",
            "CA hierarchy, server TLS cert, SQLite store",
        )

    def factory(self) -> Verified:
        context = self.context
        factory = run_factory(
            context.work_dir / "factory", context.device_count, now=context.world.now()
        )
        context.factory = factory
        lines = factory.manifest.read_text().strip().splitlines()
        if len(lines) != context.device_count + 1:
            raise StepFailed(f"manifest has {len(lines) - 1} devices")
        first, last = factory.devices[0].device_id, factory.devices[-1].device_id
        return Verified(
            f"{len(factory.devices)} devices {first} … {last}, manifest.csv written",
            f"{len(factory.devices)} bootstrap certificates + manifest.csv",
        )

    def trust(self) -> Verified:
        factory = self.context.require_factory()
        world = self.context.world
        world.fleet("trust", "add-manufacturer", factory.ca_cert)
        listed = json.loads(world.fleet("trust", "list", "--json"))
        text = json.dumps(listed)
        if "Acme Device CA" not in text:
            raise StepFailed(f"`fleet trust list` does not show the manufacturer: {text[:200]}")
        return Verified("trusted: Acme Device CA", "`fleet trust list` shows the manufacturer CA")

    def manifest(self) -> Verified:
        factory = self.context.require_factory()
        world = self.context.world
        result = json.loads(world.fleet("manifest", "import", factory.manifest, "--json"))
        if result.get("created") != self.context.device_count:
            raise StepFailed(f"import created {result.get('created')} devices: {result}")
        return Verified(
            f"{result['created']} devices registered",
            f"{result['created']} devices registered with their bootstrap pins",
        )

    def server(self) -> Verified:
        server = self.context.world.start_server()
        return Verified(
            f"healthy at {server.base} (pid {server.pid})", "/healthz answers 200 over TLS"
        )

    def enroll(self) -> Verified:
        context = self.context
        factory = context.require_factory()
        context.devices = [
            context.sim_device(d.device_id, bootstrap_cert=d.cert, bootstrap_key=d.key)
            for d in factory.devices
        ]
        devices = context.devices
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(ENROLL_WORKERS) as pool:
            futures = {pool.submit(d.enroll, max_wait=20.0): d for d in devices}
            errors = []
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                except AgentError as exc:
                    errors.append(f"{futures[future].device_id}: {exc.message}")
        elapsed = time.monotonic() - started
        if errors:
            raise StepFailed(f"{len(errors)} enrollment(s) failed: {'; '.join(errors[:3])}")
        states = context.world.store(lambda s: device_states(s, [d.device_id for d in devices]))
        inactive = [d for d, state in states.items() if state is not DeviceState.ACTIVE]
        if inactive:
            raise StepFailed(f"the server does not list as active: {', '.join(inactive[:5])}")
        example = devices[0]
        return Verified(
            f"{len(devices)}/{len(devices)} enrolled in {elapsed:.1f} s, all active "
            f"on the server (e.g. {example.device_id}: serial {short_serial(example.serial)})",
            f"{len(devices)}/{len(devices)} enrolled over EST, active on the server",
        )

    def clone(self) -> Verified:
        context = self.context
        factory = context.require_factory()
        victim = factory.devices[2 % len(factory.devices)]
        clone = context.sim_device(
            victim.device_id,
            bootstrap_cert=victim.cert,
            bootstrap_key=victim.key,
            state_name=f"clone-of-{victim.device_id}",
        )
        try:
            clone.enroll(max_wait=0.0)
        except Pending as exc:
            outcome = f"held (202, retry after {exc.retry_after:.0f} s) pending an admin"
        except Refused as exc:
            outcome = f"refused ({exc.status} {exc.reason})"
        else:
            raise StepFailed("the clone was issued a certificate")
        records = context.world.store(lambda s: audit_of(s, victim.device_id))
        flagged = [r for r in records if r.event.detail.get("flag") == "possible_clone"]
        if not flagged:
            raise StepFailed("the audit log has no possible_clone flag for the attempt")
        status = "held (202)" if outcome.startswith("held") else "refused (403)"
        return Verified(
            f"clone of {victim.device_id} {outcome}; audit #{flagged[-1].seq} "
            f"{flagged[-1].event.action}/{flagged[-1].event.reason} flagged possible_clone",
            f"clone {status}; audit flagged possible_clone",
        )
