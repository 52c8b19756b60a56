"""FileSyncer: fdatasync from the event loop, by native AIO or else a thread, on real files."""

from __future__ import annotations

import asyncio
import os
import platform
from pathlib import Path

import pytest

import fleet.store._fsync as fsync_module
from fleet.store._fsync import FileSyncer

native = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() not in fsync_module._SYSCALLS,
    reason="native AIO is used on Linux x86_64 and aarch64 only",
)


async def fdatasync(syncer: FileSyncer, path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        await syncer.start(fd)
    finally:
        os.close(fd)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 65536)
    return path


@native
async def test_native_aio_syncs_without_a_thread(data: Path) -> None:
    syncer = FileSyncer(asyncio.get_running_loop())
    try:
        with data.open("ab") as out:
            out.write(b"y" * 4096)  # dirty pages for the sync to write
        await fdatasync(syncer, data)
        assert not syncer.uses_threads
    finally:
        syncer.close()


@native
async def test_many_syncs_at_once_all_complete(data: Path) -> None:
    syncer = FileSyncer(asyncio.get_running_loop())
    try:
        # More than the AIO queue holds: the overflow goes to a thread.
        await asyncio.wait_for(asyncio.gather(*(fdatasync(syncer, data) for _ in range(150))), 30)
    finally:
        syncer.close()


async def test_without_native_aio_a_thread_syncs(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsync_module, "_SYSCALLS", {})
    syncer = FileSyncer(asyncio.get_running_loop())
    try:
        await fdatasync(syncer, data)
        assert syncer.uses_threads
    finally:
        syncer.close()


@native
async def test_a_file_that_cannot_be_synced_raises(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    keep_open = os.open(fifo, os.O_RDWR)  # a writer, so opening it to read does not block
    syncer = FileSyncer(asyncio.get_running_loop())
    try:
        with pytest.raises(OSError, match="Invalid argument"):
            await fdatasync(syncer, fifo)
    finally:
        syncer.close()
        os.close(keep_open)
