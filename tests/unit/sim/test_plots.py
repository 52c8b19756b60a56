"""`write_plots`: the report's series as PNG files (Agg backend), or a reason they were skipped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from firmware_sim.report import Report, plots_unavailable, write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _report() -> Report:
    report = Report("revoke-while-connected", 30)
    report.series["enroll_latency_s"] = [(i, 0.2 + i / 100) for i in range(30)]
    report.series["connected_over_time"] = [(0.0, 0.0), (0.1, 12.0), (0.2, 30.0), (0.5, 27.0)]
    report.series["revoke_to_disconnect_latency_s"] = [(0, 0.026), (1, 0.031), (2, 0.024)]
    report.series["empty_series"] = []
    return report


def test_each_series_becomes_a_valid_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert plots_unavailable() is None
    written = write_plots(_report(), tmp_path / "plots")
    assert sorted(p.name for p in written) == [
        "revoke-while-connected-connected-devices.png",
        "revoke-while-connected-enrollment-latency.png",
        "revoke-while-connected-revoke-to-disconnect.png",
    ]  # the empty series draws nothing
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), path
        assert data[12:16] == b"IHDR"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (700, 400)
        assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_without_matplotlib_nothing_is_written_and_the_reason_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    reason = plots_unavailable()
    assert reason is not None
    assert "matplotlib is not installed" in reason
    assert "pip install" in reason
    assert write_plots(_report(), tmp_path / "plots") == []
    assert not (tmp_path / "plots").exists()
