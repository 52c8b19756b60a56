"""Schema-driven fuzz of the admin API from its own OpenAPI document: no 500s.

Schemathesis generates requests from fleet/admin/openapi.json (valid and
invalid ones) and sends them, with an admin bearer token, to a real server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from fleet.admin.routes import openapi_document
from tests.integration.admin.conftest import Admin, make_admin
from tests.integration.est.conftest import running_fleet


@schemathesis.serializer("application/x-pem-file", "text/csv")
def _as_text(_ctx: object, value: object) -> bytes:
    # Both bodies are text; the generated value may be any JSON type.
    return value.encode() if isinstance(value, str) else repr(value).encode()


schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    env = {"FLEET_ADMIN_BULK_CONFIRM_THRESHOLD": "2"}
    with running_fleet(tmp_path_factory.mktemp("fuzz"), env=env) as fleet:
        admin = make_admin(fleet)
        for _ in range(3):  # something to list, approve, revoke
            fleet.new_device()
        yield admin


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_admin_api_never_answers_500(case: schemathesis.Case, fuzz_target: Admin) -> None:
    server = fuzz_target.fleet.server
    response = case.call(
        base_url=server.base,
        headers={"Authorization": f"Bearer {fuzz_target.tokens['admin']}"},
        verify=str(server.root_pem),
        timeout=30,
    )
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "message"}, body  # errors are JSON with a reason code
