"""A real `fleet serve` for the device agent tests (one per package); 202s retried fast."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.est.conftest import Device, Fleet, running_fleet
from tests.support.agent import AgentRun, fleet_agent, root_fingerprint

# The server tells held devices to come back after 1 s instead of 60.
FAST_SERVER_ENV = {"FLEET_POLICY_RETRY_AFTER_SECONDS": "1"}


@dataclasses.dataclass
class AgentWorld:
    fleet: Fleet
    fingerprint: str

    @property
    def server(self) -> str:
        return self.fleet.server.base

    def enroll(
        self,
        device: Device,
        state_dir: Path,
        *extra: str,
        server: str | None = None,
        env: dict[str, str] | None = None,
    ) -> AgentRun:
        return fleet_agent(
            "enroll",
            "--server", server or self.server,
            "--ca-fingerprint", self.fingerprint,
            "--bootstrap-cert", device.cert,
            "--bootstrap-key", device.key,
            "--state-dir", state_dir,
            *extra,
            env=env,
        )  # fmt: skip


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentWorld]:
    with running_fleet(tmp_path_factory.mktemp("agent"), env=FAST_SERVER_ENV) as fleet:
        yield AgentWorld(fleet, root_fingerprint(fleet.server.root_pem))
