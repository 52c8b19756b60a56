"""Atomic durable writes: the one implementation the server, agent and sidecar use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.kernel.files import (
    PUBLIC_MODE,
    SECRET_MODE,
    remove_stale_temporaries,
    write_atomic,
    write_new_secret,
)


@pytest.fixture(params=[0o000, 0o077, 0o022])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_write_atomic_replaces_with_the_mode_asked_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"one")
    assert target.stat().st_mode & 0o777 == SECRET_MODE  # the safe default
    write_atomic(target, b"two", mode=PUBLIC_MODE)
    assert (target.read_bytes(), target.stat().st_mode & 0o777) == (b"two", PUBLIC_MODE)
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary left


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_new_secrets_never_replace_a_file(tmp_path: Path, umask: int) -> None:
    secret = tmp_path / "token"
    write_new_secret(secret, b"s3cret")
    assert secret.stat().st_mode & 0o777 == SECRET_MODE
    with pytest.raises(FileExistsError):
        write_new_secret(secret, b"other")
    assert secret.read_bytes() == b"s3cret"


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".f.abcd.tmp").write_bytes(b"cut off")
    (tmp_path / "f").write_bytes(b"kept")
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
