"""The issuing-CA registry on disk: states by file, every change bumps the generation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fleet.ca_registry import (
    IssuerState,
    RotationRefused,
    begin_ceremony,
    generation,
    install_next,
    list_issuers,
    load_signing_issuers,
    promote,
    remove_retiring,
    renew_before,
    set_renew_before,
)
from fleet.config import load_config
from fleet.datadir import init_data_dir
from fleet.kernel.errors import ConfigError
from fleet.pki.ca import CertifiedKey, create_issuing_ca, load_certificates_pem
from fleet.pki.keys import load_private_key_pem, private_key_to_pem

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _next_ca(data: Path) -> CertifiedKey:
    root = CertifiedKey(
        load_certificates_pem((data / "ca/root.pem").read_bytes())[0],
        load_private_key_pem((data / "ca/root.key").read_bytes()),
    )
    return create_issuing_ca(root, "I2", now=NOW)


def test_install_promote_retire(tmp_path: Path) -> None:
    result = init_data_dir(tmp_path / "data", now=NOW)
    config = load_config(result.config_path, environ={})
    first = list_issuers(config)
    assert [i.state for i in first] == [IssuerState.CURRENT]
    assert (result.data_dir / "ca/issuing-set.pem").read_bytes() == (
        result.data_dir / "ca/issuing.pem"
    ).read_bytes()
    assert generation(config) == 0
    with pytest.raises(RotationRefused, match="no next issuing CA"):
        promote(config)

    nxt = _next_ca(result.data_dir)
    assert install_next(config, nxt.certificate, private_key_to_pem(nxt.private_key)) == 1
    with pytest.raises(RotationRefused, match="already installed"):
        install_next(config, nxt.certificate, private_key_to_pem(nxt.private_key))
    assert [i.state for i in list_issuers(config)] == [IssuerState.CURRENT, IssuerState.NEXT]
    assert (result.data_dir / "ca/issuing-next.key").stat().st_mode & 0o777 == 0o600

    old, new = promote(config)
    assert new.certificate == nxt.certificate
    issuers = list_issuers(config)
    assert [(i.state, i.certificate) for i in issuers] == [
        (IssuerState.CURRENT, nxt.certificate),
        (IssuerState.RETIRING, old.certificate),
    ]
    assert issuers[1].key_path.stat().st_mode & 0o777 == 0o600
    assert generation(config) == 2
    bundle = load_certificates_pem((result.data_dir / "ca/issuing-set.pem").read_bytes())
    assert bundle == [nxt.certificate, old.certificate]
    # The server can load it all, each certificate with its own key.
    assert [ca.certificate for _, ca in load_signing_issuers(config, None)] == [
        nxt.certificate,
        old.certificate,
    ]
    with pytest.raises(RotationRefused, match="not retiring"):
        remove_retiring(config, issuers[0])
    remove_retiring(config, issuers[1])
    assert [i.state for i in list_issuers(config)] == [IssuerState.CURRENT]
    bundle = load_certificates_pem((result.data_dir / "ca/issuing-set.pem").read_bytes())
    assert bundle == [nxt.certificate]
    assert generation(config) == 3


def test_a_mismatched_key_is_refused_not_loaded(tmp_path: Path) -> None:
    result = init_data_dir(tmp_path / "data", now=NOW)
    config = load_config(result.config_path, environ={})
    # A promote caught half-way (or a hand edit): the key no longer fits the certificate.
    (result.data_dir / "ca/issuing.key").write_bytes(
        (result.data_dir / "ca/admin.key").read_bytes()
    )
    with pytest.raises(ConfigError, match="is not the key of"):
        load_signing_issuers(config, None)


def test_ceremony_key_waits_for_its_certificate(tmp_path: Path) -> None:
    result = init_data_dir(tmp_path / "data", now=NOW)
    config = load_config(result.config_path, environ={})
    nxt = _next_ca(result.data_dir)
    with pytest.raises(RotationRefused, match="no issuing-CA key is waiting"):
        install_next(config, nxt.certificate, None)
    begin_ceremony(config, private_key_to_pem(nxt.private_key))
    assert [i.state for i in list_issuers(config)] == [IssuerState.CURRENT]  # key alone: not yet
    # Neither a second ceremony nor an online rotation may overwrite the waiting key.
    with pytest.raises(RotationRefused, match="ceremony is under way"):
        begin_ceremony(config, private_key_to_pem(nxt.private_key))
    with pytest.raises(RotationRefused, match="ceremony is under way"):
        install_next(config, nxt.certificate, private_key_to_pem(nxt.private_key))
    install_next(config, nxt.certificate, None)
    assert list_issuers(config)[1].state is IssuerState.NEXT


def test_renew_before_round_trip(tmp_path: Path) -> None:
    result = init_data_dir(tmp_path / "data", now=NOW)
    config = load_config(result.config_path, environ={})
    assert renew_before(config) is None
    deadline = NOW + dt.timedelta(days=3)
    set_renew_before(config, deadline)
    assert renew_before(config) == deadline
    set_renew_before(config, None)
    assert renew_before(config) is None
    assert generation(config) == 2


class _Crash(BaseException):
    """fleet killed at this point (BaseException: nothing may catch it)."""


def test_a_promote_cut_short_at_any_step_is_finished_by_running_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 between any two file writes of promote, then `fleet ca promote` again:
    the old key survives and every CA loads with its own key. (Cut short after the
    key swap, the second run copied the new key over the only copy of the old one.)"""
    import fleet.ca_registry as registry

    real_write, real_unlink = registry.write_atomic, Path.unlink
    crash_at = 0
    while True:
        crash_at += 1
        data = tmp_path / f"data-{crash_at}"
        result = init_data_dir(data, now=NOW)
        config = load_config(result.config_path, environ={})
        old_pem = (data / "ca/issuing.pem").read_bytes()
        old_key = (data / "ca/issuing.key").read_bytes()
        nxt = _next_ca(data)
        install_next(config, nxt.certificate, private_key_to_pem(nxt.private_key))
        steps = 0

        def step() -> None:
            nonlocal steps
            steps += 1
            if steps == crash_at:  # noqa: B023 -- read at call time, on purpose
                raise _Crash

        def write(*args: object, **kwargs: object) -> None:
            step()
            real_write(*args, **kwargs)  # type: ignore[arg-type]

        def unlink(self: Path, missing_ok: bool = False) -> None:
            step()
            real_unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(registry, "write_atomic", write)
        monkeypatch.setattr(Path, "unlink", unlink)
        try:
            promote(config)
            finished = True
        except _Crash:
            finished = False
        finally:
            monkeypatch.setattr(registry, "write_atomic", real_write)
            monkeypatch.setattr(Path, "unlink", real_unlink)
        if not finished:
            old, new = promote(config)  # the operator runs it again
            assert old.certificate == load_certificates_pem(old_pem)[0], crash_at
            assert new.certificate == nxt.certificate, crash_at
        issuers = list_issuers(config)
        assert [(i.state, i.certificate) for i in issuers] == [
            (IssuerState.CURRENT, nxt.certificate),
            (IssuerState.RETIRING, load_certificates_pem(old_pem)[0]),
        ], crash_at
        assert issuers[1].key_path.read_bytes() == old_key, f"old key lost (crash at {crash_at})"
        loaded = [ca.certificate for _, ca in load_signing_issuers(config, None)]
        assert loaded == [nxt.certificate, load_certificates_pem(old_pem)[0]], crash_at
        assert not (data / "ca/issuing-next.key").exists(), crash_at
        if finished:
            break
    assert crash_at > 5  # every step of promote was a crash point
