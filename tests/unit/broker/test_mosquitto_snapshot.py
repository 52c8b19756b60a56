from __future__ import annotations

from pathlib import Path

from broker_plugins.snapshot import RevocationState, read_snapshot_file


def test_snapshot_file_round_trips(tmp_path: Path) -> None:
    state = RevocationState(seq=7, serials={0xABC, 1}, devices={"dev-1", "dev.2"})
    path = tmp_path / "revocations.txt"
    path.write_text(state.snapshot_text(1_700_000_000))
    assert read_snapshot_file(path) == state


def test_incomplete_or_missing_snapshot_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "revocations.txt"
    assert read_snapshot_file(path) is None
    text = RevocationState(seq=1, devices={"dev-1"}).snapshot_text(0)
    path.write_text(text.removesuffix("end\n"))
    assert read_snapshot_file(path) is None
