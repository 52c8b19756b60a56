"""The trust vectors (tests/vectors/trust_cases.toml) against the Python kernel itself.

Every admission case goes through ``admit_client`` with the case's certificate,
client id and revocation state at the generator's "now"; every ACL case through
``TopicAcl`` (subscribe: may_subscribe; publish and will: may_publish); every
CA-bundle case through ``follow_cacerts`` (what a broker adopts from /cacerts).
The kernel sees no TLS layer, so the table's ``tls_layer`` exceptions do not apply.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from fleet.kernel.admission import Allow, Deny, admit_client
from fleet.kernel.ca_bundle import follow_cacerts
from fleet.kernel.certs import describe
from tests.support.vectors import (
    TABLE,
    CaseCounter,
    RevocationSet,
    acl_params,
    admission_params,
    bundle_params,
    generate_vectors,
    report,
    topic_acl,
    trust_policy,
)
from tests.vectors.generate import Generated
from tests.vectors.table import CANDIDATE, AclCase, AdmissionCase, BundleCase


@pytest.fixture(scope="module")
def counter(request: pytest.FixtureRequest) -> Iterator[CaseCounter]:
    counter = CaseCounter("kernel")
    yield counter
    report(request, counter)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory, counter: CaseCounter) -> Generated:
    generated = generate_vectors(Path(tmp_path_factory.mktemp("vectors")))
    counter.details = f"(seed={generated.seed}, now={generated.now.isoformat()})"
    return generated


def _revocations(case: AdmissionCase, leaf: x509.Certificate | None) -> RevocationSet:
    state = RevocationSet(fresh="stale" not in case.revocation)
    if "certificate" in case.revocation and leaf is not None:
        state.serials.add(leaf.serial_number)
    if "device" in case.revocation and case.device_id is not None:
        state.devices.add(case.device_id)
    return state


@pytest.mark.parametrize("case", admission_params())
def test_admission(case: AdmissionCase, vectors: Generated, counter: CaseCounter) -> None:
    leaf = vectors.leaves[case.id].cert if case.cert is not None else None
    decision = admit_client(
        leaf,
        case.client_id,
        revocations=_revocations(case, leaf),
        policy=trust_policy(vectors),
        now=vectors.now,
    )
    counter.admission += 1
    if case.expect == "allow":
        assert isinstance(decision, Allow), f"{case.description}: refused {decision}"
        assert decision.device_id == case.device_id
        assert leaf is not None
        assert decision.serial == leaf.serial_number
    else:
        assert isinstance(decision, Deny), f"{case.description}: admitted"
        assert decision.reason.value == case.expect, f"{case.description}: {decision.detail}"


@pytest.mark.parametrize("case", acl_params())
def test_acl(case: AclCase, counter: CaseCounter) -> None:
    acl = topic_acl()
    if case.op == "subscribe":
        allowed = acl.may_subscribe(TABLE.acl_self, case.topic)
    else:  # publish, and the will (a publish the broker makes for the device)
        allowed = acl.may_publish(TABLE.acl_self, case.topic)
    counter.acl += 1
    assert allowed == (case.expect == "allow"), case.description


@pytest.mark.parametrize("case", bundle_params())
def test_ca_bundle(case: BundleCase, vectors: Generated, counter: CaseCounter) -> None:
    def cert(name: str) -> x509.Certificate:
        return vectors.candidates[case.id] if name == CANDIDATE else vectors.cas[name]

    current = [cert(n) for n in TABLE.bundle_current]
    offered = [cert(n) for n in (*TABLE.bundle_answer, *case.offered)]
    subject = cert(case.subject)
    update = follow_cacerts(
        current, offered, now=vectors.now, skew=dt.timedelta(seconds=TABLE.skew_seconds)
    )
    counter.bundle += 1
    adopted = subject in update.issuing or subject in update.adopted_roots
    if case.expect == "adopt":
        assert adopted, f"{case.description}: dropped {update.dropped}"
        assert subject in update.bundle()
        return
    assert not adopted, f"{case.description}: adopted"
    assert subject not in update.bundle()  # the answer's own issuing CA keeps it usable
    why = [p for p in update.dropped if describe(subject) in p.detail]
    assert [p.reason.value for p in why] == [case.expect], f"{case.description}: {why}"


def test_table_covers_every_outside_refusal() -> None:
    """Each broker refusal a client can cause has at least one case."""
    from tests.vectors.table import ADMISSION_OUTCOMES, BUNDLE_OUTCOMES, NOT_FROM_OUTSIDE

    expected = {c.expect for c in TABLE.admission}
    assert expected == ADMISSION_OUTCOMES - NOT_FROM_OUTSIDE
    assert len(TABLE.admission) + len(TABLE.acl) >= 60
    assert {c.expect for c in TABLE.ca_bundle} == BUNDLE_OUTCOMES
    # The boundary cases are what their names say.
    assert len(TABLE.case("allow-id-64-chars").client_id) == 64
    assert len(TABLE.case("id-65-chars").client_id) == 65


def test_reason_codes_are_kernel_codes() -> None:
    from fleet.kernel.reasons import BROKER_REFUSALS

    codes = {r.value for r in BROKER_REFUSALS}
    assert {c.expect for c in TABLE.admission} - {"allow"} <= codes
