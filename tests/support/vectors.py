"""Shared by the trust-vector runners: the table, the generated files, a revocation view,
the case-count report and how a broker's answer is classified.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
from collections.abc import Iterable
from pathlib import Path

import pytest

from fleet.kernel.acl import TopicAcl
from fleet.kernel.admission import TrustPolicy
from tests.vectors.generate import Generated, generate
from tests.vectors.table import AclCase, AdmissionCase, BundleCase, Table, load_table

TABLE: Table = load_table()


def vector_seed() -> int:
    """FLEET_VECTOR_SEED, or a fresh one (always reported, so a run can be repeated)."""
    text = os.environ.get("FLEET_VECTOR_SEED")
    return int(text) if text else random.SystemRandom().randrange(2**32)


def generate_vectors(directory: Path, now: dt.datetime | None = None) -> Generated:
    return generate(directory, now=now, seed=vector_seed(), table=TABLE)


def trust_policy(generated: Generated) -> TrustPolicy:
    return TrustPolicy(
        issuers=tuple(generated.cas[n] for n in TABLE.issuers),
        anchors=tuple(generated.cas[n] for n in TABLE.anchors),
        skew=dt.timedelta(seconds=TABLE.skew_seconds),
    )


def topic_acl() -> TopicAcl:
    return TopicAcl(TABLE.acl_templates)


@dataclasses.dataclass
class RevocationSet:
    """The simplest RevocationView: sets, and whether the data is fresh enough."""

    serials: set[int] = dataclasses.field(default_factory=set)
    devices: set[str] = dataclasses.field(default_factory=set)
    fresh: bool = True

    def is_revoked(self, serial: int) -> bool:
        return serial in self.serials

    def is_device_revoked(self, device_id: str) -> bool:
        return device_id in self.devices

    def usable(self) -> bool:
        return self.fresh


def admission_params(cases: Iterable[AdmissionCase] = TABLE.admission) -> list[object]:
    return [pytest.param(c, id=c.id) for c in cases]


def acl_params(cases: Iterable[AclCase] = TABLE.acl) -> list[object]:
    return [pytest.param(c, id=c.id) for c in cases]


def bundle_params(cases: Iterable[BundleCase] = TABLE.ca_bundle) -> list[object]:
    return [pytest.param(c, id=c.id) for c in cases]


class CaseCounter:
    """Counts the cases a runner actually ran and reports them at the module's end."""

    def __init__(self, enforcer: str) -> None:
        self.enforcer = enforcer
        self.admission = 0
        self.acl = 0
        self.bundle = 0  # CA-bundle cases (the kernel runs them)
        self.skipped = 0
        self.details = ""
        self.tls_layer: list[str] = []  # cases accepted as refused by the TLS layer

    def line(self) -> str:
        total = len(TABLE.admission) + len(TABLE.acl) + len(TABLE.ca_bundle)
        return (
            f"trust vectors v{TABLE.version} [{self.enforcer}]: {self.admission} admission + "
            f"{self.acl} ACL + {self.bundle} CA-bundle cases run, {self.skipped} skipped by the "
            f"table, of {total} "
            f"{self.details}"
            + (
                f"; refused at the TLS layer (table exceptions): {', '.join(self.tls_layer)}"
                if self.tls_layer
                else ""
            )
        )


def report(request: pytest.FixtureRequest, counter: CaseCounter) -> None:
    """Print the count past output capture (it is part of the runner's result)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:  # pragma: no cover - plugins disabled
        print(counter.line())
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(counter.line())
