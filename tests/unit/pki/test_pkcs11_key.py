"""CA keys in a real SoftHSM2 token: what they sign, openssl accepts; what they hold, stays in.

The certificates, CRL and OCSP response are built by fleet's ordinary PKI code
with token-backed keys and checked by the openssl command line, a verifier
that is not ours.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from pkcs11 import Attribute, ObjectClass

from fleet.config import parse_config
from fleet.kernel.errors import ConfigError, ServerUnavailable
from fleet.kernel.keys import KeyType
from fleet.kernel.reasons import Reason
from fleet.pki.ca import CertifiedKey, certificate_to_pem, create_issuing_ca, create_root_ca
from fleet.pki.crl import RevokedEntry, build_crl, crl_to_pem
from fleet.pki.issuance import issue_device_certificate
from fleet.pki.keys import PrivateKey, sign_data
from fleet.pki.keystore import CaKeySecrets, KeyRole, TokenKeyMaker, load_ca_key
from fleet.pki.ocsp import Good, build_ocsp_response
from fleet.pki.pkcs11_key import TokenPrivateKey, load_token_key
from fleet.pki.pkcs11_session import open_token
from fleet.pki.pkcs11_uri import Pkcs11Uri, parse_pkcs11_uri
from fleet.pki.profile import DeviceProfile
from tests.support.openssl import openssl
from tests.support.softhsm import SoftHsm, shared_softhsm
from tests.unit.pki.helpers import attime, make_csr, openssl_verify, write_pem

pytestmark = [pytest.mark.needs_binary("softhsm2-util"), pytest.mark.needs_binary("openssl")]

KeyOf = Callable[[KeyType], PrivateKey]


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    return shared_softhsm(tmp_path_factory)


@pytest.fixture(scope="module")
def maker(hsm: SoftHsm) -> TokenKeyMaker:
    token = parse_pkcs11_uri(hsm.uri, setting="test", key_required=False)
    return TokenKeyMaker(hsm.module, token, hsm.pin)


@pytest.fixture(scope="module")
def token_cas(maker: TokenKeyMaker) -> tuple[CertifiedKey, CertifiedKey]:
    """A root and an issuing CA whose keys are both in the token (P-256 and P-384)."""
    now = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
    root = create_root_ca("Token Root", now=now, key=maker.make(KeyRole.ROOT, KeyType.EC_P384))
    issuing = create_issuing_ca(
        root, "Token Issuing", now=now, key=maker.make(KeyRole.ISSUING, KeyType.EC_P256)
    )
    return root, issuing


def _token_key(pair: CertifiedKey) -> TokenPrivateKey:
    key = pair.private_key
    assert isinstance(key, pkcs11_key_types())
    return key


def pkcs11_key_types() -> tuple[type, ...]:
    from fleet.pki.pkcs11_key import TokenEcPrivateKey, TokenRsaPrivateKey

    return (TokenEcPrivateKey, TokenRsaPrivateKey)


def test_device_certificate_from_a_token_ca_passes_openssl_verify(
    token_cas: tuple[CertifiedKey, CertifiedKey], key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    root, issuing = token_cas
    _token_key(root), _token_key(issuing)  # both signatures below come from the token
    cert = issue_device_certificate(
        make_csr(key_of(KeyType.EC_P256)),
        device_id="dev-hsm-1",
        issuer=issuing,
        profile=DeviceProfile(),
        now=now,
    )
    output = openssl_verify(
        tmp_path, roots=[root.certificate], untrusted=[issuing.certificate], leaf=cert, now=now
    )
    assert "leaf.pem: OK" in output


def test_rsa_token_key_signs_a_verifiable_ca(
    maker: TokenKeyMaker, token_cas: tuple[CertifiedKey, CertifiedKey], now: dt.datetime,
    tmp_path: Path,
) -> None:  # fmt: skip
    root, _ = token_cas
    rsa_ca = create_issuing_ca(
        root, "Token RSA CA", now=now, key=maker.make(KeyRole.ADMIN, KeyType.RSA_2048)
    )
    child = create_issuing_ca(rsa_ca, "below RSA", now=now)  # signed by the RSA token key
    assert "leaf.pem: OK" in openssl_verify(
        tmp_path,
        roots=[root.certificate],
        untrusted=[rsa_ca.certificate],
        leaf=child.certificate,
        now=now,
        extra=["-partial_chain"],
    )


def test_crl_signed_by_the_token_passes_openssl_crl_verify(
    token_cas: tuple[CertifiedKey, CertifiedKey], now: dt.datetime, tmp_path: Path
) -> None:
    _, issuing = token_cas
    crl = build_crl(
        issuing,
        [RevokedEntry(0x1234, now - dt.timedelta(hours=1), x509.ReasonFlags.key_compromise)],
        now=now,
        next_update_in=dt.timedelta(hours=48),
        crl_number=7,
    )
    path = tmp_path / "token.crl"
    path.write_bytes(crl_to_pem(crl))
    ca = write_pem(tmp_path, "issuing.pem", issuing.certificate)
    proc = openssl("crl", "-in", path, "-CAfile", ca, "-verify", "-noout", "-text")
    output = (proc.stdout + proc.stderr).decode()
    assert "verify OK" in output
    assert "1234" in output


def test_ocsp_response_signed_by_the_token_passes_openssl_ocsp(
    token_cas: tuple[CertifiedKey, CertifiedKey], key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    root, issuing = token_cas
    cert = issue_device_certificate(
        make_csr(key_of(KeyType.EC_P256)),
        device_id="dev-hsm-ocsp",
        issuer=issuing,
        profile=DeviceProfile(),
        now=now,
    )
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuing.certificate, hashes.SHA1())  # noqa: S303 - openssl ocsp's CertID
        .build()
    )
    der = build_ocsp_response(
        request,
        status=Good(),
        issuer=issuing,
        now=now,
        next_update_in=dt.timedelta(hours=1),
        include_signer=True,
    )
    (tmp_path / "req.der").write_bytes(request.public_bytes(serialization.Encoding.DER))
    (tmp_path / "resp.der").write_bytes(der)
    chain = write_pem(tmp_path, "chain.pem", root.certificate, issuing.certificate)
    proc = openssl(
        "ocsp", "-reqin", tmp_path / "req.der", "-respin", tmp_path / "resp.der",
        "-CAfile", chain, "-issuer", write_pem(tmp_path, "issuing.pem", issuing.certificate),
        "-cert", write_pem(tmp_path, "leaf.pem", cert), "-attime", attime(now),
        # The response is for the suite's fixed instant; openssl checks its times
        # against the real clock, -attime covers only the signer's chain.
        "-validity_period", str(10 * 365 * 86400),
    )  # fmt: skip
    output = (proc.stdout + proc.stderr).decode()
    assert "Response verify OK" in output
    assert "leaf.pem: good" in output


def test_the_key_never_leaves_the_token(
    hsm: SoftHsm, token_cas: tuple[CertifiedKey, CertifiedKey]
) -> None:
    _, issuing = token_cas
    key = _token_key(issuing)
    with pytest.raises(ConfigError, match="cannot be exported"):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    lib = pkcs11.lib(str(hsm.module.resolve()))  # the path fleet loaded it by
    # This process is logged in already (PKCS#11 logins are per process).
    with lib.get_token(token_label=hsm.token).open() as session:
        (private,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key.uri.id}
        )
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[Attribute.VALUE]


def test_a_forked_child_signs_after_logging_in_again(
    hsm: SoftHsm, token_cas: tuple[CertifiedKey, CertifiedKey]
) -> None:
    _, issuing = token_cas
    key = _token_key(issuing)
    session = open_token(hsm.module, key.uri, hsm.pin)
    public = issuing.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(sign_data(key, b"parent"), b"parent", ec.ECDSA(hashes.SHA256()))
    pid = os.fork()
    if pid == 0:  # the child: the parent's session handle is meaningless here
        code = 1
        try:
            before = session.generation
            public.verify(sign_data(key, b"child"), b"child", ec.ECDSA(hashes.SHA256()))
            # SoftHSM2 happens to survive a fork; real HSM modules do not, so the
            # child must have logged in anew rather than reused the parent's session.
            code = 0 if session.generation == before + 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    public.verify(sign_data(key, b"again"), b"again", ec.ECDSA(hashes.SHA256()))


def _config(hsm: SoftHsm, tmp_path: Path, uri: Pkcs11Uri | str) -> object:
    return parse_config(
        {"ca": {"key_store": str(uri), "pkcs11_module": str(hsm.module)}}, base_dir=tmp_path
    )


def test_load_refuses_a_missing_key_a_wrong_pin_and_a_foreign_certificate(
    hsm: SoftHsm, token_cas: tuple[CertifiedKey, CertifiedKey], tmp_path: Path
) -> None:
    root, issuing = token_cas
    uri = _token_key(issuing).uri
    good = CaKeySecrets(pkcs11_pin=hsm.pin)
    config = _config(hsm, tmp_path, uri)
    loaded = load_ca_key(config, KeyRole.ISSUING, issuing.certificate, good)  # type: ignore[arg-type]
    assert loaded.private_key.public_key() == issuing.certificate.public_key()

    cases = [
        (_config(hsm, tmp_path, f"{hsm.uri};object=no-such-key"), good, Reason.CA_KEY_MISSING),
        (_config(hsm, tmp_path, "pkcs11:token=no-such-token;object=k"), good,
         Reason.PKCS11_TOKEN_NOT_FOUND),
        (config, CaKeySecrets(pkcs11_pin=b"wrong-pin"), Reason.PKCS11_PIN_INCORRECT),
        (config, CaKeySecrets(), Reason.PKCS11_PIN_MISSING),
    ]  # fmt: skip
    for settings, secrets, reason in cases:
        with pytest.raises(ConfigError) as caught:
            load_ca_key(settings, KeyRole.ISSUING, issuing.certificate, secrets)  # type: ignore[arg-type]
        assert caught.value.reason == reason, caught.value.diagnostics()
        assert hsm.pin.decode() not in caught.value.diagnostics()
    with pytest.raises(ConfigError) as caught:
        load_ca_key(config, KeyRole.ISSUING, root.certificate, good)  # type: ignore[arg-type]
    assert caught.value.reason == Reason.CA_KEY_MISMATCH


def test_a_key_named_by_label_alone_is_found_again(
    hsm: SoftHsm, maker: TokenKeyMaker, now: dt.datetime
) -> None:
    key = maker.make(KeyRole.ROOT, KeyType.EC_P256)
    maker.make(KeyRole.ROOT, KeyType.EC_P256)  # a second key labelled fleet-root
    assert isinstance(key, pkcs11_key_types())
    session = open_token(hsm.module, key.uri, hsm.pin)
    # The label alone is ambiguous now, label + id is not.
    again = load_token_key(session, key.uri)
    assert again.public_key() == key.public_key()
    label_only = Pkcs11Uri(token=hsm.token, object="fleet-root")
    with pytest.raises(ConfigError) as caught:
        load_token_key(session, label_only)
    assert caught.value.reason == Reason.CA_KEY_AMBIGUOUS
    root = create_root_ca("by label", now=now, key=again)
    assert certificate_to_pem(root.certificate).startswith(b"-----BEGIN CERTIFICATE-----")


def test_a_key_that_vanishes_while_serving_makes_signing_unavailable_not_a_500(
    hsm: SoftHsm, maker: TokenKeyMaker
) -> None:
    key = maker.make(KeyRole.ISSUING, KeyType.EC_P256)
    assert isinstance(key, pkcs11_key_types())
    sign_data(key, b"before")
    session = open_token(hsm.module, key.uri, hsm.pin)

    def destroy(s: Any) -> None:
        for kind in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            (found,) = s.get_objects({Attribute.CLASS: kind, Attribute.ID: key.uri.id})
            found.destroy()

    session.run("destroy", destroy)
    with pytest.raises(ServerUnavailable) as caught:  # the HTTP layer's 503
        sign_data(key, b"after")
    assert caught.value.reason in (Reason.CA_KEY_MISSING, Reason.PKCS11_FAILED)
