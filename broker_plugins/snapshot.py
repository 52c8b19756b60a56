"""The revocation snapshot file both brokers keep on disk (one format, one reader).

Revocation is permanent (DESIGN.md §2), and the store may lose what it knew (a
Redis without persistence restarted, a FLUSHALL). So a broker writes every
revoked serial and device it has learnt to a local file, and at start merges
that file into what the store says: union, never replace. The Mosquitto
sidecar writes it for the C plugin to load; the embedded amqtt broker writes
and reads its own.

Format (text, one entry a line; the C plugin parses the same lines)::

    fleet-revocations 1
    seq <feed sequence the state was taken at>
    written <unix time>
    serial <lowercase hex, no leading zeros>
    device <device id>
    end

A file without its header or its final ``end`` is incomplete. Files are
replaced atomically (fleet.kernel.files.write_atomic), so a complete old or
complete new file is all a reader can find, unless something else damaged it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from fleet.kernel.device_id import is_device_id
from fleet.kernel.files import SECRET_MODE, write_atomic
from fleet.records import RevocationEvent, RevocationKind, RevocationSnapshot

log = logging.getLogger("fleet.broker.revocation")

SNAPSHOT_HEADER = "fleet-revocations 1"


class SnapshotFileDamaged(ValueError):
    """The snapshot file exists but is not a complete snapshot we wrote."""


def serial_hex(serial: int) -> str:
    """The plugin's canonical serial form: lowercase hex without leading zeros."""
    return format(serial, "x")


@dataclasses.dataclass
class RevocationState:
    """Every revoked serial and device known, as of feed ``seq``."""

    seq: int = 0
    serials: set[int] = dataclasses.field(default_factory=set)
    devices: set[str] = dataclasses.field(default_factory=set)

    def merge(self, snapshot: RevocationSnapshot) -> None:
        """Add a snapshot; revocation is permanent, so nothing is removed."""
        self.serials |= snapshot.serials
        self.devices |= snapshot.device_ids
        self.seq = max(self.seq, snapshot.seq)

    def apply(self, event: RevocationEvent) -> None:
        self.serials.update(event.serials)
        if event.kind is RevocationKind.DEVICE:
            self.devices.add(event.device_id)
        self.seq = max(self.seq, event.seq)

    def snapshot_text(self, written: int) -> str:
        lines = [SNAPSHOT_HEADER, f"seq {self.seq}", f"written {written}"]
        lines += [f"serial {serial_hex(s)}" for s in sorted(self.serials) if s >= 0]
        lines += [f"device {d}" for d in sorted(self.devices) if is_device_id(d)]
        lines.append("end")
        return "\n".join(lines) + "\n"


def load_snapshot_file(path: Path) -> RevocationState | None:
    """The revocations in ``path``; None if there is no file; SnapshotFileDamaged if damaged."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotFileDamaged(f"cannot read the snapshot file {path}: {exc}") from exc
    if not lines or lines[0] != SNAPSHOT_HEADER or lines[-1] != "end":
        raise SnapshotFileDamaged(f"the snapshot file {path} is incomplete")
    state = RevocationState()
    for line in lines[1:-1]:
        key, _, value = line.partition(" ")
        try:
            if key == "seq":
                state.seq = int(value)
            elif key == "serial":
                state.serials.add(int(value, 16))
            elif key == "device" and is_device_id(value):
                state.devices.add(value)
        except ValueError:
            log.warning("ignoring a bad line in the snapshot file %s: %r", path, line[:80])
    return state


def read_snapshot_file(path: Path) -> RevocationState | None:
    """The revocations of a complete snapshot file we wrote earlier (None if none or damaged).

    Merged into the sidecar's state at start: a store that lost its data (a
    Redis without persistence restarted) must not shrink the file the plugin
    loads when the broker restarts - revocation is permanent.
    """
    try:
        return load_snapshot_file(path)
    except SnapshotFileDamaged as exc:
        log.warning("ignoring the snapshot file: %s", exc)
        return None


def write_snapshot_file(path: Path, state: RevocationState, *, mode: int = SECRET_MODE) -> None:
    """Replace ``path`` with ``state`` atomically and durably (fsync of file and directory)."""
    write_atomic(path, state.snapshot_text(int(time.time())).encode(), mode=mode)
