"""Seeded fuzz of what clients send, against live servers: no input gets a 5xx or a traceback.

Targets: CSRs (mutated, half re-signed so they pass the signature check),
client certificates presented in the TLS handshake and forwarded by a
trusted proxy (mutated, most re-signed by the manufacturer), and OCSP
requests by POST and GET. The seed is printed; ``FLEET_FUZZ_SEED`` replays a
run and ``FLEET_FUZZ_INPUTS`` changes the inputs per target (default 200).
``bench/fuzz_est.py`` runs the same targets with many more inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.est.conftest import Fleet, running_fleet, trust_manufacturer
from tests.support.fuzz_targets import Target, make_target, run

SEED = int(os.environ.get("FLEET_FUZZ_SEED", "7030"))
INPUTS = int(os.environ.get("FLEET_FUZZ_INPUTS", "200"))


@pytest.fixture(scope="module")
def target(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    env = {"FLEET_SERVER_MODE": "proxy", "FLEET_SERVER_TRUSTED_PROXIES": '["127.0.0.1"]'}
    base = tmp_path_factory.mktemp("fuzz-proxied")
    with running_fleet(base, env=env, scheme="http") as proxied:
        # One manufacturer for both servers, so forwarded certificates can chain.
        trust_manufacturer(proxied.server, fleet.manufacturer, "Acme-shared")
        yield make_target(fleet, proxied=proxied)
        assert_quiet(proxied)


def assert_quiet(fleet: Fleet) -> None:
    log = fleet.server.log()
    assert "Traceback" not in log
    assert '"level": "error"' not in log


# Statuses each target must produce (parse refusals) and, from ``deeper``, at least one
# (inputs that got past parsing to the policy), so the fuzz is known to reach both.
@pytest.mark.parametrize(
    ("name", "reached", "deeper"),
    [
        ("csr", {400}, {200, 202, 403}),
        ("client_cert_mtls", {400}, {403}),
        ("client_cert_proxy", {400}, {403}),
        ("ocsp_post", {200}, {200}),
        ("ocsp_get", {200}, {200}),
    ],
)
def test_no_client_input_gets_a_5xx(
    target: Target, fleet: Fleet, name: str, reached: set[int], deeper: set[int]
) -> None:
    print(f"fuzz {name}: seed {SEED}, {INPUTS} inputs (FLEET_FUZZ_SEED={SEED} replays)")
    results, failures = run(target, [name], INPUTS, SEED)
    counts = results[name]
    print(f"fuzz {name}: {dict(sorted(counts.items(), key=str))}")
    assert not failures, failures[:5]
    assert all(not isinstance(k, int) or k < 500 for k in counts)
    assert reached <= set(counts), counts
    assert deeper & set(counts), counts
    assert_quiet(fleet)
