"""What a `fleet-sim run` scenario found: checks, figures, time series, and their PNG plots."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# -- report ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class Report:
    scenario: str
    devices: int
    checks: list[Check] = dataclasses.field(default_factory=list)
    figures: dict[str, float | int | str] = dataclasses.field(default_factory=dict)
    # name -> (x, y) points, for plots: e.g. enrollment latencies, connected devices over time
    series: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, passed, detail))
        return passed

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "devices": self.devices,
            "ok": self.ok,
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "figures": self.figures,
            "series": {k: [list(p) for p in v] for k, v in self.series.items()},
        }

    def render(self) -> str:
        lines = [f"scenario {self.scenario} — {self.devices} devices", ""]
        width = max([len(c.name) for c in self.checks] + [5])
        lines.append(f"  {'check':<{width}}  result  detail")
        lines.append(f"  {'-' * width}  ------  {'-' * 40}")
        for c in self.checks:
            lines.append(f"  {c.name:<{width}}  {'✓ ok' if c.passed else '✗ FAIL':<6}  {c.detail}")
        if self.figures:
            lines.append("")
            fwidth = max(len(k) for k in self.figures)
            lines.append(f"  {'figure':<{fwidth}}  value")
            lines.append(f"  {'-' * fwidth}  {'-' * 12}")
            for key, value in self.figures.items():
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                lines.append(f"  {key:<{fwidth}}  {shown}")
        lines.append("")
        passed = sum(c.passed for c in self.checks)
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{self.scenario}: {verdict} ({passed}/{len(self.checks)} checks passed)")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class PlotSpec:
    """How one series is drawn: its file name, title and axis labels (with units)."""

    stem: str
    title: str
    xlabel: str
    ylabel: str
    kind: str  # "histogram" (of y, in ms), "bars" (y per x, in ms) or "steps" (y over x)


PLOTS: dict[str, PlotSpec] = {
    "enroll_latency_s": PlotSpec(
        "enrollment-latency", "Enrollment latency (EST simpleenroll, first boot)",
        "enrollment latency (ms)", "devices", "histogram",
    ),
    "connected_over_time": PlotSpec(
        "connected-devices", "Devices connected to the broker over mTLS",
        "time since connecting began (s)", "connected devices", "steps",
    ),
    "revoke_to_disconnect_latency_s": PlotSpec(
        "revoke-to-disconnect", "Revoke → disconnect latency (live session kicked)",
        "revoked device (in revocation order)", "revoke → disconnect (ms)", "bars",
    ),
    "certificates_by_issuer": PlotSpec(
        "certificates-by-issuer", "Good (unexpired) device certificates held, by issuing CA",
        "simulated years", "devices holding one", "lines",
    ),
    "renew_latency_s": PlotSpec(
        "renewal-latency", "Renewal latency (EST simplereenroll)",
        "renewal latency (ms)", "devices", "histogram",
    ),
}  # fmt: skip


def plots_unavailable() -> str | None:
    """Why PNG plots cannot be drawn here (matplotlib missing), or None if they can."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        return (
            f"matplotlib is not installed ({exc}); "
            "pip install 'fleet-enroll[sim]' or pip install 'matplotlib>=3.7,<4'"
        )
    return None


def write_plots(report: Report, directory: Path) -> list[Path]:
    """PNG plots of the report's series (Agg backend, no display); [] without matplotlib."""
    if plots_unavailable() is not None:
        return []
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    integer_ticks = importlib.import_module("matplotlib.ticker").MaxNLocator
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, points in report.series.items():  # "GROUP|LINE": one figure, a line each
        group, sep, line = name.partition("|")
        if sep and points:
            groups.setdefault(group, {})[line] = points
    for group, lines in groups.items():
        written.append(_write_lines(pyplot, report, group, lines, directory))
    for name, points in report.series.items():
        if not points or "|" in name:
            continue
        spec = PLOTS.get(name) or PlotSpec(
            name.replace("_", "-"), name.replace("_", " "), "x", "y", "steps"
        )
        figure = pyplot.figure(figsize=(7, 4), dpi=100)
        axes = figure.add_subplot(1, 1, 1)
        xs = [float(x) for x, _ in points]
        ys = [float(y) for _, y in points]
        if spec.kind == "histogram":
            ms = [y * 1000 for y in ys]
            axes.hist(ms, bins=min(40, max(5, len(ms) // 3)), color="tab:blue", edgecolor="white")
            for fraction, style in ((0.5, "--"), (0.95, ":")):
                value = percentile(ms, fraction)
                label = f"p{round(fraction * 100)} {value:.0f} ms"
                axes.axvline(value, color="tab:red", linestyle=style, label=label)
            axes.legend()
        elif spec.kind == "bars":
            ms = [y * 1000 for y in ys]
            axes.bar([i + 1 for i in range(len(ms))], ms, color="tab:orange")
            axes.xaxis.set_major_locator(integer_ticks(integer=True))
            p50 = percentile(ms, 0.5)
            axes.axhline(p50, color="tab:red", linestyle="--", label=f"p50 {p50:.1f} ms")
            axes.legend()
        else:
            axes.step(xs, ys, where="post", color="tab:green")
            axes.set_ylim(bottom=0)
        if spec.ylabel in ("devices", "connected devices"):  # counts: whole numbers
            axes.yaxis.set_major_locator(integer_ticks(integer=True))
        axes.set_xlabel(spec.xlabel)
        axes.set_ylabel(spec.ylabel)
        axes.set_title(f"{spec.title}\n{report.scenario}, {report.devices} devices", fontsize=10)
        axes.grid(alpha=0.3)
        path = directory / f"{report.scenario}-{spec.stem}.png"
        figure.tight_layout()
        figure.savefig(path, format="png")
        pyplot.close(figure)
        written.append(path)
    return written


def _write_lines(
    pyplot: Any,
    report: Report,
    group: str,
    lines: dict[str, list[tuple[float, float]]],
    directory: Path,
) -> Path:
    """One figure with a step line per member of ``group`` (e.g. certificates per issuer)."""
    spec = PLOTS.get(group) or PlotSpec(group.replace("_", "-"), group, "x", "y", "lines")
    figure = pyplot.figure(figsize=(8, 4.5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    for label, points in sorted(lines.items()):
        axes.step([p[0] for p in points], [p[1] for p in points], where="post", label=label)
    axes.set_ylim(bottom=0)
    axes.set_xlabel(spec.xlabel)
    axes.set_ylabel(spec.ylabel)
    axes.set_title(f"{spec.title}\n{report.scenario}, {report.devices} devices", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    path = directory / f"{report.scenario}-{spec.stem}.png"
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)
    return path


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
