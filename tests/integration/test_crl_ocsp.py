"""CRL publishing, the OCSP responder and `fleet crl`, checked by the real openssl.

One real `fleet serve` (HTTPS) for the module. Revocations are written to the
store by this test process — another process than the server — so a CRL that
changes proves the server follows the store's revocation feed.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.pki.ca import CertifiedKey, certificate_to_pem, load_certificates_pem
from fleet.pki.crl import build_crl, crl_to_pem
from fleet.pki.issuance import issue_device_certificate
from fleet.pki.keys import load_private_key_pem
from fleet.pki.profile import DeviceProfile
from fleet.records import RevocationReason
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.openssl import openssl

pytestmark = [pytest.mark.needs_binary("openssl"), pytest.mark.needs_binary("curl")]

CRL_URL = "http://pki.fleet.test/crl"
OCSP_URL = "http://pki.fleet.test/ocsp"


@dataclasses.dataclass
class Enrolled:
    device_id: str
    cert: Path  # the issued device certificate (PEM)
    serial: int


@dataclasses.dataclass
class Env:
    fleet: Fleet
    chain: Path  # root + issuing CA, the trust anchors relying parties use
    good: Enrolled
    revoked: Enrolled

    @property
    def issuing(self) -> Path:
        return self.fleet.server.issuing_pem

    def url(self, path: str) -> str:
        return f"{self.fleet.server.base}{path}"


def _enroll(fleet: Fleet, name: str) -> Enrolled:
    device = fleet.new_device()
    _key, csr = fleet.csr(name)
    cert = fleet.issued(fleet.enroll(device, csr), name)
    serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    return Enrolled(device.device_id, cert, serial)


def _revoke(fleet: Fleet, device_id: str, reason: RevocationReason) -> None:
    event = fleet.server.store(
        lambda s: s.revoke_device(device_id, reason, dt.datetime.now(dt.UTC))
    )
    assert event is not None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    urls = {"FLEET_PROFILE_CRL_URL": CRL_URL, "FLEET_PROFILE_OCSP_URL": OCSP_URL}
    with running_fleet(tmp_path_factory.mktemp("revocation"), env=urls) as fleet:
        server = fleet.server
        chain = fleet.work / "chain.pem"
        chain.write_bytes(server.root_pem.read_bytes() + server.issuing_pem.read_bytes())
        good = _enroll(fleet, "good")
        revoked = _enroll(fleet, "revoked")
        _revoke(fleet, revoked.device_id, RevocationReason.KEY_COMPROMISE)
        yield Env(fleet, chain, good, revoked)


@dataclasses.dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes


def _fetch(
    env: Env,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Fetched:
    context = ssl.create_default_context(cafile=str(env.fleet.server.root_pem))
    request = urllib.request.Request(env.url(path), data=data, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            return Fetched(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as error:
        return Fetched(error.code, dict(error.headers.items()), error.read())


def _crl(env: Env) -> x509.CertificateRevocationList:
    fetched = _fetch(env, "/crl")
    assert fetched.status == 200, fetched
    return x509.load_der_x509_crl(fetched.body)


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _verify_with_crl(env: Env, crl_pem: Path, cert: Path) -> subprocess.CompletedProcess[bytes]:
    return openssl(
        "verify", "-crl_check", "-CRLfile", crl_pem, "-CAfile", env.chain, cert, check=False
    )


def _output(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


# -- issued certificates ---------------------------------------------------------


def test_issued_certificates_name_the_crl_and_the_ocsp_responder(env: Env) -> None:
    text = openssl("x509", "-in", env.good.cert, "-noout", "-text").stdout.decode()
    assert "X509v3 CRL Distribution Points" in text
    assert f"URI:{CRL_URL}" in text
    assert "Authority Information Access" in text
    assert f"OCSP - URI:{OCSP_URL}" in text


# -- GET /crl ----------------------------------------------------------------------


def test_crl_lists_the_revoked_serial_with_its_reason(env: Env) -> None:
    fetched = _fetch(env, "/crl")
    assert fetched.status == 200
    assert fetched.headers["Content-Type"] == "application/pkix-crl"
    der = env.fleet.work / "crl.der"
    der.write_bytes(fetched.body)
    text = openssl("crl", "-inform", "DER", "-in", der, "-noout", "-text").stdout.decode()
    assert f"{env.revoked.serial:X}" in text
    assert "Key Compromise" in text
    assert f"{env.good.serial:X}" not in text
    # The issuing CA signed it: openssl checks the signature against the chain.
    verified = openssl("crl", "-inform", "DER", "-in", der, "-CAfile", env.chain, "-noout")
    assert "verify OK" in _output(verified)


def test_openssl_verify_refuses_the_revoked_device_and_accepts_the_good_one(env: Env) -> None:
    fetched = _fetch(env, "/crl?format=pem")
    assert fetched.headers["Content-Type"] == "application/x-pem-file"
    crl_pem = env.fleet.work / "crl.pem"
    crl_pem.write_bytes(fetched.body)
    refused = _verify_with_crl(env, crl_pem, env.revoked.cert)
    assert refused.returncode != 0
    assert "certificate revoked" in _output(refused)
    accepted = _verify_with_crl(env, crl_pem, env.good.cert)
    assert accepted.returncode == 0, _output(accepted)
    assert ": OK" in _output(accepted)


def test_crl_pem_by_accept_header_and_cache_headers(env: Env) -> None:
    fetched = _fetch(env, "/crl", headers={"Accept": "application/x-pem-file"})
    assert fetched.status == 200
    assert fetched.body.startswith(b"-----BEGIN X509 CRL-----")
    cache = fetched.headers["Cache-Control"]
    max_age = int(cache.rpartition("max-age=")[2])
    assert 0 < max_age <= 300
    etag = fetched.headers["ETag"]
    crl = x509.load_pem_x509_crl(fetched.body)
    assert etag == f'"{_crl_number(crl)}"'
    assert _fetch(env, "/crl", headers={"If-None-Match": etag}).status == 304
    assert _fetch(env, "/crl?format=xml").status == 400


def test_the_first_crl_after_a_revocation_by_another_process_lists_it(env: Env) -> None:
    # The server's own feed follower learns of other processes' revocations only
    # about once a second; what it serves must not wait for that: each request
    # checks the feed position the CRL was signed at.
    before = _crl(env)
    victim = _enroll(env.fleet, "victim")
    _revoke(env.fleet, victim.device_id, RevocationReason.CESSATION_OF_OPERATION)
    after = _crl(env)  # the revocation is acknowledged: no waiting
    entry = after.get_revoked_certificate_by_serial_number(victim.serial)
    assert entry is not None, "the CRL served right after the revocation does not list it"
    assert _crl_number(after) > _crl_number(before)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.cessation_of_operation
    # Earlier revocations stay listed.
    assert after.get_revoked_certificate_by_serial_number(env.revoked.serial) is not None


# -- OCSP ------------------------------------------------------------------------


def _ocsp(env: Env, cert: Path, issuer: Path | None = None) -> str:
    proc = openssl(
        "ocsp",
        "-issuer", issuer or env.issuing,
        "-cert", cert,
        "-url", env.url("/ocsp"),
        "-CAfile", env.chain,
        check=False,
    )  # fmt: skip
    return _output(proc)


def _unrecorded_certificate(env: Env) -> Path:
    """A certificate the fleet CA signed but the store never recorded."""
    data = env.fleet.server.data_dir
    issuer = CertifiedKey(
        load_certificates_pem((data / "ca/issuing.pem").read_bytes())[0],
        load_private_key_pem((data / "ca/issuing.key").read_bytes(), None),
    )
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ghost")]))
        .sign(key, hashes.SHA256())
    )
    cert = issue_device_certificate(
        csr, device_id="ghost", issuer=issuer, profile=DeviceProfile(), now=dt.datetime.now(dt.UTC)
    )
    path = env.fleet.work / "ghost.pem"
    path.write_bytes(certificate_to_pem(cert))
    return path


def test_ocsp_post_good_revoked_and_unknown(env: Env) -> None:
    good = _ocsp(env, env.good.cert)
    assert "Response verify OK" in good
    assert f"{env.good.cert}: good" in good

    revoked = _ocsp(env, env.revoked.cert)
    assert "Response verify OK" in revoked
    assert f"{env.revoked.cert}: revoked" in revoked
    assert "Reason: keyCompromise" in revoked
    assert "Revocation Time:" in revoked

    ghost = _unrecorded_certificate(env)
    unknown = _ocsp(env, ghost)
    assert "Response verify OK" in unknown
    assert f"{ghost}: unknown" in unknown


def test_ocsp_for_another_issuer_is_unauthorized(env: Env) -> None:
    device = env.fleet.new_device()  # its bootstrap certificate comes from the manufacturer
    manufacturer = env.fleet.work / "manufacturer.pem"
    manufacturer.write_bytes(certificate_to_pem(env.fleet.manufacturer.certificate))
    assert "Responder Error: unauthorized" in _ocsp(env, device.cert, issuer=manufacturer)


def _request_with_slash(env: Env, cert: Path) -> tuple[Path, str]:
    """An OCSP request (with a random nonce) whose base64 contains '/'."""
    request = env.fleet.work / "request.der"
    for _ in range(50):
        openssl("ocsp", "-issuer", env.issuing, "-cert", cert, "-reqout", request)
        encoded = base64.b64encode(request.read_bytes()).decode()
        if "/" in encoded:
            return request, encoded
    raise AssertionError("no request with '/' in its base64 after 50 nonces")


@pytest.mark.parametrize("encoding", ["percent-encoded", "raw"])
def test_ocsp_get_form(env: Env, encoding: str) -> None:
    request, encoded = _request_with_slash(env, env.revoked.cert)
    path = urllib.parse.quote(encoded, safe="") if encoding == "percent-encoded" else encoded
    fetched = _fetch(env, f"/ocsp/{path}")
    assert fetched.status == 200
    assert fetched.headers["Content-Type"] == "application/ocsp-response"
    response = env.fleet.work / "response.der"
    response.write_bytes(fetched.body)
    # -reqin checks that the response echoes this request's nonce; responses
    # carry no certificates, so the signer (the issuing CA) is named here.
    checked = openssl(
        "ocsp", "-reqin", request, "-respin", response,
        "-CAfile", env.chain, "-verify_other", env.issuing, "-resp_text",
    )  # fmt: skip
    text = _output(checked)
    assert "Response verify OK" in text
    assert "Cert Status: revoked" in text
    assert "Revocation Reason: keyCompromise" in text


def test_ocsp_garbage_gets_malformed_request(env: Env) -> None:
    for fetched in (
        _fetch(env, "/ocsp/not%20base64!"),
        _fetch(env, "/ocsp/" + base64.b64encode(b"\x30\x03abc").decode()),
        _fetch(env, "/ocsp", data=b"garbage", headers={"Content-Type": "application/ocsp-request"}),
    ):
        assert fetched.status == 200
        assert fetched.headers["Content-Type"] == "application/ocsp-response"
        response = env.fleet.work / "malformed.der"
        response.write_bytes(fetched.body)
        proc = openssl("ocsp", "-respin", response, "-resp_text", "-noverify", check=False)
        assert "Responder Error: malformedrequest" in _output(proc)


def test_ocsp_post_refuses_other_content_types_and_large_bodies(env: Env) -> None:
    wrong = _fetch(env, "/ocsp", data=b"x", headers={"Content-Type": "text/plain"})
    assert wrong.status == 415
    large = _fetch(
        env, "/ocsp", data=b"x" * 20_000, headers={"Content-Type": "application/ocsp-request"}
    )
    assert large.status == 413


# -- fleet crl ---------------------------------------------------------------------


def _fleet_crl(env: Env, *args: str | Path, extra_env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "fleet", "crl", "--config", env.fleet.server.config_path, *args],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, **(extra_env or {})},
    )
    return f"{proc.returncode}\n{proc.stdout.decode()}{proc.stderr.decode()}"


def test_fleet_crl_writes_a_crl_openssl_accepts(env: Env) -> None:
    out = env.fleet.work / "broker-crl.pem"
    result = _fleet_crl(env, "--out", out)
    assert result.startswith("0\n"), result
    verified = openssl("crl", "-in", out, "-CAfile", env.chain, "-noout", "-text")
    assert "verify OK" in _output(verified)
    assert f"{env.revoked.serial:X}" in _output(verified)
    refused = _verify_with_crl(env, out, env.revoked.cert)
    assert "certificate revoked" in _output(refused)

    stdout = _fleet_crl(env)
    assert stdout.startswith("0\n-----BEGIN X509 CRL-----"), stdout

    der = env.fleet.work / "broker-crl.der"
    assert _fleet_crl(env, "--out", der, "--der").startswith("0\n")
    openssl("crl", "-inform", "DER", "-in", der, "-CAfile", env.chain, "-noout")


def test_fleet_crl_leaves_the_old_file_when_validation_fails(env: Env) -> None:
    out = env.fleet.work / "kept-crl.pem"
    assert _fleet_crl(env, "--out", out).startswith("0\n")
    good = out.read_bytes()

    # A key that does not belong to the issuing certificate signs a CRL no
    # relying party can verify: it must never replace the good one.
    wrong_key = env.fleet.work / "wrong.key"
    wrong_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = _fleet_crl(env, "--out", out, extra_env={"FLEET_CA_ISSUING_KEY": str(wrong_key)})
    assert result.startswith("1\n"), result
    # Refused before signing: the key store checks a CA key against its certificate
    # (validate_crl would refuse the unverifiable CRL after it, with crl_invalid).
    assert "ca_key_mismatch" in result
    assert out.read_bytes() == good
    assert not list(out.parent.glob(".kept-crl.pem.*"))  # no temporary file left behind


def test_fleet_crl_refuses_to_replace_a_newer_crl(env: Env) -> None:
    data = env.fleet.server.data_dir
    issuer = CertifiedKey(
        load_certificates_pem((data / "ca/issuing.pem").read_bytes())[0],
        load_private_key_pem((data / "ca/issuing.key").read_bytes(), None),
    )
    future = build_crl(
        issuer,
        [],
        now=dt.datetime.now(dt.UTC),
        next_update_in=dt.timedelta(hours=1),
        crl_number=2**100,
    )
    out = env.fleet.work / "newer-crl.pem"
    out.write_bytes(crl_to_pem(future))
    result = _fleet_crl(env, "--out", out)
    assert result.startswith("1\n"), result
    assert "crl_rollback" in result
    assert out.read_bytes() == crl_to_pem(future)
