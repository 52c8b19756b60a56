"""A real fleet server on each store backend, and admin credentials of every role."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.authority.admins import certificate_pem, create_admin_certificate, create_admin_token
from fleet.pki.ca import CertifiedKey, load_certificates_pem
from fleet.pki.keys import load_private_key_pem
from fleet.records import AdminRole
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.redis_server import RedisServer


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or text when not JSON


@dataclasses.dataclass
class Admin:
    fleet: Fleet
    tokens: dict[str, str]  # role -> bearer token
    cert: Path  # an operator's admin client certificate
    key: Path

    def call(
        self,
        method: str,
        path: str,
        *,
        role: str | None = "admin",
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        token: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
    ) -> Reply:
        context = ssl.create_default_context(cafile=str(self.fleet.server.root_pem))
        if client_cert is not None:
            context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.fleet.server.port, context=context, timeout=30
        )
        headers = {}
        bearer = token if token is not None else (self.tokens[role] if role else None)
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if payload is not None:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(data)
        except ValueError:
            parsed = data.decode(errors="replace")
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, parsed)


def admin_ca(fleet: Fleet) -> CertifiedKey:
    data = fleet.server.data_dir
    return CertifiedKey(
        load_certificates_pem((data / "ca/admin.pem").read_bytes())[0],
        load_private_key_pem((data / "ca/admin.key").read_bytes()),
    )


def make_admin(fleet: Fleet) -> Admin:
    now = dt.datetime.now(dt.UTC)
    tokens = {
        role.value: fleet.server.store(
            lambda s, role=role: create_admin_token(
                s, f"{role.value}-bot", role, actor="test", now=now
            )
        )
        for role in AdminRole
    }
    pair = fleet.server.store(
        lambda s: create_admin_certificate(
            s, admin_ca(fleet), "olivia", AdminRole.OPERATOR, actor="test", now=now
        )
    )
    cert_pem, key_pem = certificate_pem(pair)
    cert = fleet.work / "olivia.pem"
    key = fleet.work / "olivia.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return Admin(fleet, tokens, cert, key)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def admin(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Admin]:
    base = tmp_path_factory.mktemp(f"admin-{request.param}")
    env: dict[str, str] = {"FLEET_ADMIN_BULK_CONFIRM_THRESHOLD": "3"}
    redis = RedisServer(base / "redis")
    if request.param == "redis":
        redis.start()  # a server of its own: nothing shared with other tests
        env["FLEET_STORE_URL"] = redis.url
    try:
        with running_fleet(base, env=env) as fleet:
            yield make_admin(fleet)
    finally:
        redis.stop()
