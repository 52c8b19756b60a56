"""`fleet manifest`: import what the factory shipped."""

from __future__ import annotations

from pathlib import Path

import click

from fleet.cli._context import echo_json, json_option
from fleet.cli.common import read_input_file
from fleet.cli.mode import admin_ops, admin_options
from fleet.kernel.errors import ManifestInvalid
from fleet.kernel.reasons import Reason
from fleet.manifest import MAX_MANIFEST_BYTES, parse_manifest


@click.group()
@admin_options
def manifest() -> None:
    """Import factory manifests (which devices exist, and their bootstrap pins)."""


@manifest.command("import")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check the file only; change nothing.")
@admin_options
@json_option
def import_(csv_file: Path, dry_run: bool, as_json: bool) -> None:
    """Import a factory manifest CSV, all or nothing.

    \b
    The first line is the header:
        device_id,bootstrap_sha256,model,batch
    then one device per line. model and batch may be empty; the fingerprint is
    the SHA-256 of the device's DER bootstrap certificate (hex, colons allowed);
    lines starting with # are comments.

    New devices are created as registered (they may enroll with exactly that
    bootstrap certificate); known devices get the new pin, model and batch and
    keep their state. Any wrong line refuses the whole file, naming the line.
    """
    text = _read_text(csv_file)
    entries = parse_manifest(text)
    if dry_run:
        if as_json:
            echo_json({"valid": True, "entries": len(entries), "dry_run": True})
        else:
            click.echo(
                f"{csv_file}: {len(entries)} device(s), all valid; nothing imported (dry run)"
            )
        return
    result = admin_ops().import_manifest(text, entries)
    if as_json:
        echo_json({"entries": len(entries), "created": result.created, "updated": result.updated})
        return
    click.echo(f"Imported {csv_file}: {result.created} device(s) created, {result.updated} updated")


def _read_text(path: Path) -> str:
    data = read_input_file(
        path, MAX_MANIFEST_BYTES, "manifest", Reason.MANIFEST_INVALID,
        path_hint="Check the path of the factory manifest (the CSV to import).",
    )  # fmt: skip
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestInvalid(
            f"not UTF-8 text (byte {exc.start} cannot be decoded)",
            line=line,
            hint="Save the manifest as UTF-8 CSV and import it again; nothing was imported.",
        ) from None
