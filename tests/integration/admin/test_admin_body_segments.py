"""A body that arrives in several TCP segments is read whole, by every body the admin API reads.

Found from outside: the admin API read its bodies with one ``read(n)``, which
returns the first segment only, so a JSON body sent in two writes was refused
as invalid JSON and a manifest import silently kept its first lines. Every
endpoint that reads its own body (JSON, CSV, PEM) is sent the same body whole
and cut at generated points; the answers must be the same.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.admin.conftest import Admin, make_admin
from tests.integration.est.conftest import running_fleet
from tests.support.factory import make_manufacturer
from tests.support.raw_http import connect, read_response, request_bytes, tls_client_context

MANIFEST = "device_id,bootstrap_sha256,model,batch\n" + "".join(
    f"seg-{i:04d},{hashlib.sha256(str(i).encode()).hexdigest()},model-a,batch-a\n"
    for i in range(300)
)
PEM = make_manufacturer("Segments").certificate.public_bytes(serialization.Encoding.PEM).decode()
DRY_RUN = {"batch": "batch-a", "reason": "keyCompromise", "dry_run": True, "note": "n" * 200}

# (path, content type, body): one per body reader of the admin API.
BODIES = [
    ("/api/v1/revocations/bulk", "application/json", json.dumps(DRY_RUN).encode()),
    ("/api/v1/manifest", "text/csv", MANIFEST.encode()),
    ("/api/v1/manufacturers", "application/x-pem-file", PEM.encode()),
]


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    with running_fleet(tmp_path_factory.mktemp("segments")) as fleet:
        yield make_admin(fleet)


def send(
    admin: Admin, path: str, content_type: str, body: bytes, cuts: list[int]
) -> tuple[int, bytes]:
    """POST ``body`` written in pieces at ``cuts``, each piece its own TCP segment."""
    request = request_bytes(
        "POST", path, body=body,
        headers={"Authorization": f"Bearer {admin.tokens['admin']}", "Content-Type": content_type},
    )  # fmt: skip
    start = len(request) - len(body)
    context = tls_client_context(admin.fleet.server.root_pem)
    with connect(admin.fleet.server.port, context) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        offset = 0
        for cut in sorted(set(cuts)):
            sock.sendall(request[offset : start + cut])
            offset = start + cut
            # A slow network, not a wait for the server: it must not answer before the end.
            time.sleep(0.02)
        sock.sendall(request[offset:])
        status, _, reply = read_response(sock)
    return status, reply


def same_answer(reply: bytes) -> object:
    # A trust answer dates an already trusted CA at the request, not at its trust.
    body = json.loads(reply)
    for item in body.get("items", []):
        item.pop("added_at", None)
    return body


@given(data=st.data())
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_body_in_segments_gets_the_answer_of_the_whole_body(
    admin: Admin, data: st.DataObject
) -> None:
    path, content_type, body = data.draw(st.sampled_from(BODIES))
    cuts = data.draw(st.lists(st.integers(1, len(body) - 1), min_size=1, max_size=3))
    send(admin, path, content_type, body, [])  # the first import creates; later ones update
    whole = send(admin, path, content_type, body, [])
    assert whole[0] == 200, whole
    split = send(admin, path, content_type, body, cuts)
    assert split[0] == 200, split
    assert same_answer(split[1]) == same_answer(whole[1])
