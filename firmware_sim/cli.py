"""`fleet-sim`: the factory, the one-command demo and fleet scenarios."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from firmware_sim.factory import DEFAULT_MANUFACTURER, DEFAULT_MODEL, DEFAULT_PREFIX, run_factory
from fleet.kernel.errors import FleetError

EXIT_FAILED = 1


@click.group(name="fleet-sim", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fleet-enroll", prog_name="fleet-sim")
def cli() -> None:
    """Stand in for hardware: a factory, simulated devices, scenarios and the demo.

    Exit codes: 0 ok (every step verified), 1 failed, 2 bad usage, 3 not available.
    """


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write the manufacturer CA, the devices and manifest.csv to.",
)
@click.option("--count", type=click.IntRange(1, 100_000), required=True, help="Devices to make.")
@click.option("--manufacturer", default=DEFAULT_MANUFACTURER, show_default=True)
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@click.option("--batch", default=None, help="Batch label [default: the ISO week, e.g. 2026-W22].")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Device id prefix.")
@click.option("--start", type=click.IntRange(0), default=1, show_default=True, help="First number.")
def factory(
    out_dir: Path,
    count: int,
    manufacturer: str,
    model: str,
    batch: str | None,
    prefix: str,
    start: int,
) -> None:
    """Make a manufacturer CA, bootstrap identities and manifest.csv.

    \b
    OUT/manufacturer/ca.pem        fleet trust add-manufacturer OUT/manufacturer/ca.pem
    OUT/devices/ID/bootstrap.pem   the device's factory certificate (and .key, 0600)
    OUT/manifest.csv               fleet manifest import OUT/manifest.csv
    """
    try:
        result = run_factory(
            out_dir,
            count,
            now=dt.datetime.now(dt.UTC),
            manufacturer=manufacturer,
            model=model,
            batch=batch,
            prefix=prefix,
            start=start,
        )
    except FleetError as exc:
        click.echo(exc.diagnostics(), err=True)
        sys.exit(EXIT_FAILED)
    except (ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    devices = result.devices
    click.echo(f"manufacturer CA: {result.ca_cert}")
    click.echo(
        f"{len(devices)} device(s) {devices[0].device_id} … {devices[-1].device_id} "
        f"in {result.out_dir / 'devices'}"
    )
    click.echo(f"manifest: {result.manifest}")


@cli.command()
@click.option("--devices", type=click.IntRange(3, 500), default=20, show_default=True)
@click.option(
    "--broker", type=click.Choice(["amqtt", "mosquitto"]), default="amqtt", show_default=True
)
@click.option("--keep", is_flag=True, help="Keep the work directory (logs, certificates).")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Use this (new or empty) directory instead of a temporary one.",
)
def demo(devices: int, broker: str, keep: bool, work_dir: Path | None) -> None:
    """The whole system in one command, every step verified (exit 0 only then)."""
    from firmware_sim.demo import DemoOptions, run_demo

    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        if any(work_dir.iterdir()):
            raise click.UsageError(f"--work-dir {work_dir} is not empty")
    code = run_demo(
        DemoOptions(devices=devices, broker=broker, keep=keep or work_dir is not None,
                    work_dir=work_dir)
    )  # fmt: skip
    sys.exit(code)


@cli.command(name="run")
@click.option(
    "--scenario",
    "names",
    multiple=True,
    required=True,
    help="Scenario to run (repeatable; 'all' for every one but fifteen-years): "
    "first-boot-storm, revoke-while-connected, cloned-bootstrap, power-loss-during-renewal, "
    "server-outage-and-recovery, broker-outage-and-recovery, manual-approval-queue, renewal-wave, "
    "fifteen-years (at least 200 devices; needs `fleet ca`, or --no-rotation).",
)
@click.option("--devices", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report(s) as JSON to this file.",
)  # fmt: skip
@click.option(
    "--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
    help="Write PNG plots here (needs matplotlib; skipped with a note otherwise).",
)  # fmt: skip
@click.option("--keep", is_flag=True, help="Keep the work directory (logs, state directories).")
@click.option(
    "--mqtt", type=click.Choice(["auto", "session", "light"]), default="auto", show_default=True,
    help="Device MQTT for first-boot-storm: the agent's MqttSession (a thread each), or a light "
    "asyncio client (thousands on one loop); auto: light above 200 devices.",
)  # fmt: skip
@click.option(
    "--latency-ms", type=click.IntRange(0, 10_000), default=0, show_default=True,
    help="Network fault: devices reach the EST server through a loopback proxy that delays "
    "every byte this many ms in each direction (a round trip costs twice that).",
)  # fmt: skip
@click.option(
    "--clock-skew", type=click.FloatRange(-10 * 365 * 86400, 10 * 365 * 86400), default=0.0,
    show_default=True, metavar="SECONDS",
    help="Fault: every simulated device's clock is this many seconds ahead (negative: behind); "
    "the server's clock is not moved.",
)  # fmt: skip
@click.option(
    "--years", type=click.IntRange(1, 30), default=None,
    help="fifteen-years only: simulated years [default: 15; 3 with --no-rotation].",
)  # fmt: skip
@click.option(
    "--no-rotation", is_flag=True,
    help="fifteen-years only: no CA events (one issuing CA and root for the whole run; "
    "they must outlive it) and --devices as given.",
)  # fmt: skip
def run(
    names: tuple[str, ...], devices: int, json_path: Path | None, plots_dir: Path | None,
    keep: bool, mqtt: str, latency_ms: int, clock_skew: float, years: int | None,
    no_rotation: bool,
) -> None:  # fmt: skip
    """Run fleet scenarios against a fresh local server and broker; a report at the end."""
    import json
    import logging
    import shutil
    import tempfile

    from firmware_sim.bench import Progress
    from firmware_sim.report import plots_unavailable, write_plots
    from firmware_sim.runner import SCENARIOS, LifetimeOptions, run_scenario

    # 'all': the short ones; fifteen-years (minutes, 200 devices) runs only when named.
    short = [n for n, s in SCENARIOS.items() if s.own_bench is None]
    wanted = short if "all" in names else list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in SCENARIOS]
    if unknown:
        raise click.UsageError(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    reports = []
    for name in wanted:
        work = Path(tempfile.mkdtemp(prefix=f"fleet-sim-{name}-"))
        logging.basicConfig(
            filename=work / "sim.log", level=logging.INFO, force=True,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )  # fmt: skip
        click.echo(f"running {name} with {devices} device(s) in {work}", err=True)
        report = run_scenario(
            name, devices, work, Progress(), mqtt=mqtt, latency_ms=latency_ms,
            clock_skew=clock_skew, lifetime=LifetimeOptions(years, not no_rotation),
        )  # fmt: skip
        logging.shutdown()
        reports.append(report)
        click.echo(report.render())
        click.echo()
        if plots_dir is not None:
            why_not = plots_unavailable()
            written = [] if why_not else write_plots(report, plots_dir)
            if why_not:
                click.echo(f"plots skipped: {why_not}")
            elif written:
                click.echo(f"plots: {', '.join(str(p) for p in written)}")
            else:
                click.echo(f"plots: none ({name} records no series to plot)")
        if keep:
            click.echo(f"kept: {work}", err=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if json_path is not None:
        data = [r.to_json() for r in reports]
        json_path.write_text(json.dumps(data[0] if len(data) == 1 else data, indent=2) + "\n")
    sys.exit(0 if all(r.ok for r in reports) else EXIT_FAILED)


def main() -> None:
    cli(prog_name="fleet-sim")
