"""The factory manifest: what was shipped, as CSV (pure).

::

    device_id,bootstrap_sha256,model,batch
    # comment lines and blank lines are skipped
    sensor-0001,3f9c...64 hex...,TH-200,2026-W22

The header is required. A fifth column, ``manufacturer_sha256``, may name the
manufacturer CA the device's bootstrap certificate chains to (the device then
shows it before its first enrollment; the import refuses a CA that is not
trusted). ``model``, ``batch`` and ``manufacturer_sha256`` may be empty or left out;
cells are trimmed; a UTF-8 byte order mark (Excel) is tolerated; fingerprints
may be written the way openssl prints them (``AB:CD:...``). Any wrong line
refuses the whole file, naming the line: a manifest is imported all or nothing.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Sequence

from fleet.kernel.device_id import validate_device_id
from fleet.kernel.errors import ConfigError, DeviceIdInvalid, ManifestInvalid
from fleet.kernel.fingerprint import normalize_fingerprint
from fleet.records import ManifestEntry, Manufacturer

HEADER = ("device_id", "bootstrap_sha256", "model", "batch")
HEADER_WITH_MANUFACTURER = (*HEADER, "manufacturer_sha256")
MAX_LINES = 100_000
# 100k lines of two ids, a fingerprint and two short texts fit several times over;
# the API reads no more, and the CLI refuses a bigger file before reading it whole.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_TEXT_LENGTH = 128  # model and batch
# Five quoted cells at their longest (openssl's "sha256 Fingerprint=AB:..." twice), with room.
MAX_LINE_LENGTH = 1024

_NEWLINE = re.compile(r"\r\n|\r|\n")


def parse_manifest(text: str) -> list[ManifestEntry]:
    """Every entry of the manifest ``text``; ManifestInvalid (with the line) otherwise."""
    # Counted before anything is split: 32 MiB of line breaks would otherwise become a
    # list of 33 million strings (300 MB, seconds of CPU) only to be refused.
    breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
    count = breaks + (0 if text.endswith(("\n", "\r")) else 1)
    if count > MAX_LINES:
        raise ManifestInvalid(
            f"the manifest has {count} lines; at most {MAX_LINES} are imported at once",
            hint=f"Split it into files of at most {MAX_LINES} lines, each with the header; "
            "nothing was imported.",
        )
    lines = _NEWLINE.split(text.removeprefix("\ufeff"))
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    entries: list[ManifestEntry] = []
    line_of_device: dict[str, int] = {}
    device_of_pin: dict[str, tuple[str, int]] = {}
    header_seen = False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        cells = _cells(line, number)
        if not header_seen:
            columns = _check_header(cells, number)
            header_seen = True
            continue
        entry = _entry(cells, number, columns)
        if entry.device_id in line_of_device:
            raise ManifestInvalid(
                f"device {entry.device_id!r} is listed twice (first on line "
                f"{line_of_device[entry.device_id]})",
                line=number,
            )
        if entry.bootstrap_sha256 in device_of_pin:
            other, other_line = device_of_pin[entry.bootstrap_sha256]
            raise ManifestInvalid(
                f"device {entry.device_id!r} has the same bootstrap certificate as device "
                f"{other!r} (line {other_line}): one factory identity on two devices is a clone",
                line=number,
                hint="Ask the factory which device really holds that certificate; "
                "fix the manifest and import it again; nothing was imported.",
            )
        line_of_device[entry.device_id] = number
        device_of_pin[entry.bootstrap_sha256] = (entry.device_id, number)
        entries.append(entry)
    if not header_seen:
        raise ManifestInvalid(
            f"the manifest is empty; its first line must be the header {','.join(HEADER)}"
        )
    return entries


def _cells(line: str, number: int) -> list[str]:
    if len(line) > MAX_LINE_LENGTH:
        # Before the CSV reader: a line of 30 million commas is as many cells.
        raise ManifestInvalid(
            f"the line is {len(line)} characters long; a manifest line has at most "
            f"{MAX_LINE_LENGTH}",
            line=number,
        )
    try:
        row = next(csv.reader([line], strict=True))
    except csv.Error as exc:
        raise ManifestInvalid(f"not a CSV line: {exc}", line=number) from None
    return [cell.strip() for cell in row]


def _check_header(cells: Sequence[str], number: int) -> tuple[str, ...]:
    """The columns the header names: HEADER, or HEADER_WITH_MANUFACTURER."""
    named = tuple(cell.lower() for cell in cells)
    if named in (HEADER, HEADER_WITH_MANUFACTURER):
        return named
    found = ",".join(cells)
    if len(found) > 80:
        found = found[:77] + "..."
    raise ManifestInvalid(
        f"missing or wrong header: expected {','.join(HEADER)}, found {found!r}",
        line=number,
        hint=f"Make the first line of the file exactly {','.join(HEADER)}; nothing was imported.",
    )


def _entry(cells: Sequence[str], number: int, columns: tuple[str, ...]) -> ManifestEntry:
    if len(cells) > len(columns):
        raise ManifestInvalid(
            f"{len(cells)} columns; at most {len(columns)} are allowed ({','.join(columns)}). "
            "Quote a model or batch that contains a comma",
            line=number,
        )
    if len(cells) < 2:
        raise ManifestInvalid(
            "a line needs at least a device_id and a bootstrap_sha256", line=number
        )
    device_id, pin, *rest = cells
    try:
        validate_device_id(device_id)
    except DeviceIdInvalid as exc:
        raise ManifestInvalid(
            exc.message,
            line=number,
            hint=f"{DeviceIdInvalid.hint} Fix the line; nothing was imported.",
        ) from None
    if not pin:
        raise ManifestInvalid(f"device {device_id!r} has an empty bootstrap_sha256", line=number)
    try:
        sha256 = normalize_fingerprint(pin)
    except ConfigError as exc:
        raise ManifestInvalid(
            f"bootstrap_sha256 of device {device_id!r}: {exc.message}", line=number
        ) from None
    model, batch, manufacturer = (*rest, "", "", "")[:3]
    maker = None
    if manufacturer:
        try:
            maker = Manufacturer(normalize_fingerprint(manufacturer))
        except ConfigError as exc:
            raise ManifestInvalid(
                f"manufacturer_sha256 of device {device_id!r}: {exc.message}", line=number
            ) from None
    return ManifestEntry(
        device_id=device_id,
        bootstrap_sha256=sha256,
        model=_text("model", model, number),
        batch=_text("batch", batch, number),
        manufacturer=maker,
    )


def _text(column: str, value: str, number: int) -> str:
    problem = label_problem(value)
    if problem is not None:
        raise ManifestInvalid(f"{column} {problem}", line=number)
    return value


def label_problem(value: str) -> str | None:
    """Why ``value`` cannot be a model or batch; None if it can.

    The one rule for both ends: the manifest accepts only what the admin API's
    and the console's filters accept, so every imported model and batch can be
    listed and bulk-revoked by name. ``str.isprintable`` refuses control and
    format characters (bidi overrides, zero-width: they disguise what an admin
    reads in a terminal or log), line and paragraph separators, and every
    space but U+0020 (a no-break space from a spreadsheet looks like a space
    and matches none)."""
    if len(value) > MAX_TEXT_LENGTH:
        return f"is {len(value)} characters long; the maximum is {MAX_TEXT_LENGTH}"
    for char in value:
        if not char.isprintable():
            return (
                f"contains U+{ord(char):04X} ({unicodedata.category(char)}), which is not printable"
            )
    return None
