"""A fleet whose CA keys live in a SoftHSM2 token: `fleet init` into it, serve, and use it.

`fleet init --pkcs11-uri` generates the keys in the token; a real `fleet serve`
then enrolls (curl), renews, revokes, publishes a CRL and answers OCSP, all
checked by the openssl command line. The server refuses to start when the
token cannot give it the configured key, with the reason and no traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import select
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from pkcs11 import Attribute, ObjectClass

from fleet.pki.pkcs11_session import open_token
from fleet.pki.pkcs11_uri import parse_pkcs11_uri
from fleet.records import RevocationReason
from tests.integration.est.conftest import Fleet, trust_manufacturer
from tests.integration.test_readme import README, sh_blocks
from tests.support.factory import make_manufacturer
from tests.support.fleet_server import FleetServer, run_store
from tests.support.openssl import openssl
from tests.support.ports import free_port
from tests.support.softhsm import SoftHsm, shared_softhsm, softhsm_module

pytestmark = [
    pytest.mark.needs_binary("softhsm2-util"),
    pytest.mark.needs_binary("openssl"),
    pytest.mark.needs_binary("curl"),
]


def _fleet_cli(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    return shared_softhsm(tmp_path_factory)


@pytest.fixture(scope="module")
def config_path(hsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("pkcs11") / "data"
    init = _fleet_cli(
        "init", "--dir", data, "--pkcs11-uri", hsm.uri, "--pkcs11-module", hsm.module,
        "--pkcs11-pin-file", hsm.pin_file, env=hsm.env,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert f"CA keys:       in PKCS#11 token {hsm.uri}" in init.stdout
    assert hsm.pin.decode() not in init.stdout + init.stderr
    return data / "fleet.toml"


@pytest.fixture(scope="module")
def fleet(hsm: SoftHsm, config_path: Path) -> Iterator[Fleet]:
    urls = {
        "FLEET_PROFILE_CRL_URL": "http://pki.fleet.test/crl",
        "FLEET_PROFILE_OCSP_URL": "http://pki.fleet.test/ocsp",
    }
    server = FleetServer(config_path, env={**hsm.env, **urls}).start()
    try:
        manufacturer = make_manufacturer("Acme", now=dt.datetime.now(dt.UTC))
        trust_manufacturer(server, manufacturer, "Acme")
        work = config_path.parent.parent / "work"
        work.mkdir()
        yield Fleet(server, manufacturer, work)
    finally:
        server.stop()


def _settings(config_path: Path) -> dict[str, Any]:
    return tomllib.loads(config_path.read_text())


def test_init_keeps_the_ca_keys_in_the_token_not_extractable(
    hsm: SoftHsm, config_path: Path
) -> None:
    data = config_path.parent
    assert sorted(p.name for p in (data / "ca").iterdir()) == [
        "admin.pem",
        "issuing-set.pem",
        "issuing.pem",
        "root.pem",
    ]
    settings = _settings(config_path)
    uris = [
        settings["ca"]["key_store"],
        settings["ca"]["root_key_store"],
        settings["admin"]["key_store"],
    ]
    assert settings["ca"]["pkcs11_pin_file"] == str(hsm.pin_file)
    assert hsm.pin.decode() not in config_path.read_text()
    session = open_token(
        hsm.module, parse_pkcs11_uri(hsm.uri, setting="t", key_required=False), hsm.pin
    )
    for text in uris:
        uri = parse_pkcs11_uri(text, setting="t", key_required=True)
        assert uri.object is not None
        assert uri.object.startswith("fleet-")
        assert uri.id

        def check(s: Any, uri: Any = uri) -> None:
            (private,) = s.get_objects(
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: uri.id}
            )
            assert private[Attribute.LABEL] == uri.object
            assert private[Attribute.SENSITIVE] is True
            assert private[Attribute.EXTRACTABLE] is False
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                private[Attribute.VALUE]

        session.run("check", check)


def test_ca_status_names_the_token_keys_and_rotation_keeps_the_key_in_the_token(
    hsm: SoftHsm, config_path: Path
) -> None:
    status = _fleet_cli("ca", "status", "--json", "--config", config_path, env=hsm.env)
    assert status.returncode == 0, status.stderr
    keys = {(row["role"], row["state"]): row["key"] for row in json.loads(status.stdout)["cas"]}
    settings = _settings(config_path)

    def uri(text: str) -> str:
        return str(parse_pkcs11_uri(text, setting="t", key_required=True))

    assert keys[("root", "trusted")] == uri(settings["ca"]["root_key_store"])
    assert keys[("issuing", "current")] == uri(settings["ca"]["key_store"])
    assert keys[("admin", "current")] == uri(settings["admin"]["key_store"])
    assert hsm.pin.decode() not in status.stdout
    # rotate-issuing makes file keys: with the issuing key in a token it refuses
    # instead of moving the fleet's signing key out of the token.
    rotate = _fleet_cli("ca", "rotate-issuing", "--config", config_path, env=hsm.env)
    assert rotate.returncode == 1
    assert "PKCS#11 token" in rotate.stderr
    assert not (config_path.parent / "ca" / "issuing-next.pem").exists()


def test_enroll_renew_revoke_crl_and_ocsp_signed_in_the_token(fleet: Fleet) -> None:
    server = fleet.server
    chain = fleet.work / "chain.pem"
    chain.write_bytes(server.root_pem.read_bytes() + server.issuing_pem.read_bytes())

    device = fleet.new_device()
    key, csr = fleet.csr("hsm-device")
    cert = fleet.issued(fleet.enroll(device, csr), "hsm-device")
    assert "OK" in openssl("verify", "-CAfile", chain, cert).stdout.decode()

    _new_key, new_csr = fleet.csr("hsm-renewed")
    renewed = fleet.issued(fleet.reenroll(cert, key, new_csr), "hsm-renewed")
    assert "OK" in openssl("verify", "-CAfile", chain, renewed).stdout.decode()
    old = x509.load_pem_x509_certificate(cert.read_bytes())
    new = x509.load_pem_x509_certificate(renewed.read_bytes())
    assert new.serial_number != old.serial_number
    assert new.issuer == old.issuer

    server.store(
        lambda s: s.revoke_device(
            device.device_id, RevocationReason.KEY_COMPROMISE, dt.datetime.now(dt.UTC)
        )
    )
    crl_der = fleet.work / "fleet.crl"
    proc = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(server.root_pem), "-o", str(crl_der),
         f"{server.base}/crl"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    crl = openssl(
        "crl", "-inform", "DER", "-in", crl_der, "-CAfile", server.issuing_pem, "-verify",
        "-noout", "-text",
    )  # fmt: skip
    text = (crl.stdout + crl.stderr).decode()
    assert "verify OK" in text
    assert f"{new.serial_number:X}" in text.replace(":", "").upper()

    answer = openssl(
        "ocsp", "-issuer", server.issuing_pem, "-cert", renewed, "-url", f"{server.base}/ocsp",
        "-CAfile", chain, check=False,
    )  # fmt: skip
    output = (answer.stdout + answer.stderr).decode()
    assert "Response verify OK" in output
    assert f"{renewed}: revoked" in output

    # The server's own TLS certificate: answered for and signed by the root, in the token.
    tls_cert = server.data_dir / "tls/server.pem"
    answer = openssl(
        "ocsp", "-issuer", server.root_pem, "-cert", tls_cert, "-url", f"{server.base}/ocsp",
        "-CAfile", server.root_pem, check=False,
    )  # fmt: skip
    output = (answer.stdout + answer.stderr).decode()
    assert "Response verify OK" in output
    assert f"{tls_cert}: good" in output


def test_admin_crl_and_broker_commands_sign_with_the_token(
    hsm: SoftHsm, config_path: Path, tmp_path: Path
) -> None:
    data = config_path.parent
    env = {**hsm.env, "FLEET_CONFIG": str(config_path)}
    created = _fleet_cli("admin", "create", "ops", "--role", "admin", "--out", tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    openssl("verify", "-CAfile", data / "ca/root.pem", "-untrusted", data / "ca/admin.pem",
            tmp_path / "ops.pem")  # fmt: skip

    crl = _fleet_cli("crl", "--out", tmp_path / "broker.crl", env=env)
    assert crl.returncode == 0, crl.stderr
    openssl("crl", "-in", tmp_path / "broker.crl", "-CAfile", data / "ca/issuing.pem", "-noout")

    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", tmp_path / "broker.key", "-subj", "/CN=broker.example",
        "-addext", "subjectAltName=DNS:broker.example", "-out", tmp_path / "broker.csr",
    )  # fmt: skip
    signed = _fleet_cli(
        "broker-cert", "sign", "--csr", tmp_path / "broker.csr", "--out", tmp_path / "broker.pem",
        env=env,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    # The broker's server certificate is signed by the root, whose key is in the token too.
    openssl("verify", "-CAfile", data / "ca/root.pem", tmp_path / "broker.pem")


def test_every_worker_logs_in_to_the_token(fleet: Fleet, hsm: SoftHsm) -> None:
    server = FleetServer(fleet.server.config_path, env=hsm.env, workers=2).start()
    try:
        chain = fleet.work / "chain-workers.pem"
        chain.write_bytes(server.root_pem.read_bytes() + server.issuing_pem.read_bytes())
        workers = Fleet(server, fleet.manufacturer, fleet.work)
        for n in range(4):  # spread over both workers by SO_REUSEPORT
            device = workers.new_device()
            _key, csr = workers.csr(f"worker-{n}")
            cert = workers.issued(workers.enroll(device, csr), f"worker-{n}")
            openssl("verify", "-CAfile", chain, cert)
    finally:
        server.stop()


def _serve_refused(config_path: Path, env: dict[str, str]) -> str:
    """Run `fleet serve` expecting a refusal: exit code 1, the reason, no traceback."""
    proc = _fleet_cli(
        "serve", "--config", config_path, "--listen", f"127.0.0.1:{free_port()}", env=env
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    return output


def test_serve_refuses_a_wrong_pin_a_missing_key_and_an_open_pin_file(
    hsm: SoftHsm, config_path: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin\n")
    wrong.chmod(0o600)
    output = _serve_refused(config_path, {**hsm.env, "FLEET_CA_PKCS11_PIN_FILE": str(wrong)})
    assert "reason: pkcs11_pin_incorrect" in output
    assert "not-the-pin" not in output
    # The right PIN in FLEET_PKCS11_PIN too: the file wins, and serve says it ignored the variable.
    both = {**hsm.env, "FLEET_CA_PKCS11_PIN_FILE": str(wrong), "FLEET_PKCS11_PIN": hsm.pin.decode()}
    output = _serve_refused(config_path, both)
    assert "reason: pkcs11_pin_incorrect" in output
    assert "FLEET_PKCS11_PIN is ignored" in output
    assert hsm.pin.decode() not in output

    gone = f"{hsm.uri};object=fleet-issuing;id=%00%00"
    output = _serve_refused(config_path, {**hsm.env, "FLEET_CA_KEY_STORE": gone})
    assert "reason: ca_key_missing" in output
    assert "fleet-issuing" in output

    readable = tmp_path / "readable.pin"
    readable.write_bytes(hsm.pin_file.read_bytes())
    readable.chmod(0o644)
    output = _serve_refused(config_path, {**hsm.env, "FLEET_CA_PKCS11_PIN_FILE": str(readable)})
    assert "readable by other users" in output
    assert hsm.pin.decode() not in output


def test_serve_refuses_a_token_key_that_is_not_the_certificates(
    hsm: SoftHsm, config_path: Path
) -> None:
    # The admin CA's key is in the same token, but the issuing certificate is not its.
    admin_key = _settings(config_path)["admin"]["key_store"]
    output = _serve_refused(config_path, {**hsm.env, "FLEET_CA_KEY_STORE": admin_key})
    assert "reason: ca_key_mismatch" in output
    run_store(config_path, lambda store: store.feed_head())  # the store is untouched


README_SECTION = "CA keys in an HSM (PKCS#11)"


def _run_with_terminal(
    script: Path, cwd: Path, env: dict[str, str], answers: dict[bytes, bytes]
) -> tuple[int, str]:
    """Run ``bash script`` on a pseudo-terminal, answering each prompt that ends a chunk."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        ["bash", str(script)], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the script ended
                break
            if not chunk:
                break
            output += chunk
            last = chunk.rstrip().rsplit(b"\n", 1)[-1]
            for prompt, answer in answers.items():
                if prompt in last and last.endswith(b":"):
                    os.write(master, answer + b"\n")
                    break
    finally:
        os.close(master)
    return proc.wait(timeout=60), output.decode(errors="replace")


def test_the_readme_hsm_walkthrough_runs_as_written(tmp_path: Path) -> None:
    softhsm_module()
    (block,) = sh_blocks(README.read_text(), (README_SECTION,))[README_SECTION]
    serve_lines = [line for line in block.lines if line.startswith("fleet serve")]
    assert len(serve_lines) == 1
    # Everything up to `fleet serve`, exactly as written; the server is started
    # below on a free port instead of the documented one.
    script = tmp_path / "hsm.sh"
    script.write_text(
        "set -e\n" + "\n".join(line for line in block.lines if line not in serve_lines) + "\n"
    )
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    pin = b"readme-pin-4711"
    code, output = _run_with_terminal(
        script, tmp_path, env, {b"SO PIN": b"readme-so-pin", b"user PIN": pin}
    )
    assert code == 0, output
    assert pin.decode() not in output
    assert sorted(p.name for p in (tmp_path / "fleet-hsm/ca").iterdir()) == [
        "admin.pem", "issuing-set.pem", "issuing.pem", "root.pem",
    ]  # fmt: skip
    assert (tmp_path / "hsm/user.pin").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "hsm/user.pin").read_bytes() == pin + b"\n"

    documented = serve_lines[0].split("#")[0].split()
    assert documented[:4] == ["fleet", "serve", "--config", "fleet-hsm/fleet.toml"]
    server = FleetServer(
        tmp_path / "fleet-hsm/fleet.toml",
        env={"SOFTHSM2_CONF": str(tmp_path / "hsm/softhsm2.conf")},
    ).start()
    try:
        crl = subprocess.run(
            ["curl", "-sS", "--fail", "--cacert", str(server.root_pem), f"{server.base}/crl"],
            capture_output=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        verified = openssl(
            "crl", "-inform", "DER", "-CAfile", server.issuing_pem, "-noout", input=crl
        )
        assert "verify OK" in (verified.stdout + verified.stderr).decode()
    finally:
        server.stop()
