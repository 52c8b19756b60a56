"""The sidecar's trust for fetching /cacerts follows the roots it adopted (a real TLS handshake)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import pytest

from broker_plugins.mosquitto.config import settings_from_mapping
from broker_plugins.mosquitto.trust_files import cacerts_context
from fleet.pki.ca import (
    CertifiedKey,
    certificate_to_pem,
    create_issuing_ca,
    create_root_ca,
    create_server_certificate,
)
from fleet.pki.keys import private_key_to_pem
from fleet.pki.rollover import roll_root

NOW = dt.datetime.now(dt.UTC)


def _handshake(client: ssl.SSLContext, server_identity: CertifiedKey, tmp_path: Path) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(certificate_to_pem(server_identity.certificate))
    key.write_bytes(private_key_to_pem(server_identity.private_key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side, out, peer_in in (
            ("client", client_side, c_out, s_in),
            ("server", server_side, s_out, c_in),
        ):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("adopted", [True, False])
def test_after_retire_root_cacerts_is_fetched_with_the_adopted_root(
    tmp_path: Path, adopted: bool
) -> None:
    old_root = create_root_ca("fleet root", now=NOW)
    new_root = roll_root(old_root, now=NOW).new_root
    issuing = create_issuing_ca(new_root, "I2", now=NOW)
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca/root.pem").write_bytes(certificate_to_pem(old_root.certificate))  # set up
    settings = settings_from_mapping(
        {
            "store": {"url": "sqlite:///x.db"},
            "mosquitto": {
                "server_cert": "b.pem", "server_key": "b.key", "root_ca": "ca/root.pem",
                "issuing_ca": "ca/issuing.pem", "plugin": "p.so", "sidecar_cert": "s.pem",
                "sidecar_key": "s.key", "cacerts_url": "https://127.0.0.1:8443/cacerts",
            },
        },
        base_dir=tmp_path,
    )  # fmt: skip
    followed = [issuing.certificate, old_root.certificate]
    if adopted:
        followed.append(new_root.certificate)
    settings.issuing_set.parent.mkdir(parents=True, exist_ok=True)
    settings.issuing_set.write_bytes(b"".join(certificate_to_pem(c) for c in followed))
    # retire-root: the server's TLS certificate is re-issued by the new root.
    server = create_server_certificate(
        new_root, common_name="est", dns_names=[],
        ip_addresses=[ipaddress.IPv4Address("127.0.0.1")], now=NOW,
    )  # fmt: skip
    if adopted:
        _handshake(cacerts_context(settings), server, tmp_path)
    else:
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(cacerts_context(settings), server, tmp_path)
