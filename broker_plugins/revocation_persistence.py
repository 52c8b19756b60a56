"""The revocation cache on disk, so a restarted broker still
refuses what it refused before it stopped (broker_plugins.revocation_cache).

With ``CacheSettings.snapshot_file`` set, the cache loads the file (format in
broker_plugins/snapshot.py) before it asks the store anything, merges the
store's snapshot into it, and writes it back after every change, atomically
and durably (write_atomic: temp file, fsync, rename, fsync of the directory).
Writes are coalesced: a change is written at once when the writer is idle,
and changes that arrive while a write is in flight or during the
``snapshot_coalesce`` seconds after it go out together in the next write. So
a revocation is on disk at most ``snapshot_coalesce`` (0.2 s) plus two writes
after it was applied, and at once at a clean stop. A file that exists but is
damaged stops the start (ConfigError): dropping it could re-admit what it
lists. The file counts as knowledge, not as contact: until the store has
answered once, the cache stays unusable (every connect refused as stale) but
what the file lists is refused as revoked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter

from broker_plugins.snapshot import (
    RevocationState,
    SnapshotFileDamaged,
    load_snapshot_file,
    write_snapshot_file,
)
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import ensure_private_dir

log = logging.getLogger("fleet.broker.revocation")

_RETRY_SECONDS = 2.0  # after a failed write


class SnapshotPersistence:
    """Loads the snapshot file once, then writes the cache's state back, coalesced."""

    def __init__(
        self,
        path: Path,
        *,
        coalesce: float,
        state: Callable[[], RevocationState],
        write_errors: Counter,
    ) -> None:
        self.path = path
        self._coalesce = coalesce
        self._state = state  # the cache's state now; called on the loop
        self._write_errors = write_errors
        self._writer: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()  # wakes the writer
        self._changes = 0  # counts changes; the file holds those up to _changes_on_disk
        self._changes_on_disk = 0

    @property
    def pending(self) -> bool:
        """Changes applied that the file does not hold yet (a write in flight too)."""
        return self._changes_on_disk < self._changes

    def mark_changed(self) -> None:
        self._changes += 1
        self._dirty.set()

    async def load(self) -> RevocationState | None:
        """What the file holds (None: no file yet); ConfigError if it is damaged."""
        try:
            state = await asyncio.to_thread(load_snapshot_file, self.path)
        except SnapshotFileDamaged as exc:
            raise ConfigError(
                str(exc),
                hint="Restore the file from a backup. Remove it only if every revocation "
                "it held is still in the store: anything it lists alone would be admitted.",
            ) from exc
        if state is None:
            log.info("no revocation snapshot file at %s yet", self.path)
            return None
        log.info(
            "revocation snapshot file %s loaded: seq %d, %d serials, %d devices",
            self.path,
            state.seq,
            len(state.serials),
            len(state.devices),
        )
        return state

    async def start(self) -> None:
        """Write the state once (ConfigError if that fails), then keep writing changes."""
        self._dirty.clear()
        try:
            await self._write()
        except OSError as exc:
            raise ConfigError(
                f"cannot write the revocation snapshot file: {exc}",
                hint="Make its directory writable by the broker, or set "
                "[revocation] snapshot_file.",
            ) from exc
        self._writer = asyncio.create_task(self._write_loop(), name="revocation-snapshot")

    async def close(self) -> None:
        """Stop the writer and write what it had not written yet."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self.pending:
            try:
                await self._write()
            except OSError as exc:
                self._write_errors.inc()
                log.error("cannot write the revocation snapshot %s at close: %s", self.path, exc)

    async def _write(self) -> None:
        # Copied on the loop (no await between): the thread never sees a set change.
        changes = self._changes
        state = self._state()
        await asyncio.to_thread(_write_snapshot_file, self.path, state)
        self._changes_on_disk = max(self._changes_on_disk, changes)

    async def _write_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._write()
            except OSError as exc:
                self._dirty.set()
                self._write_errors.inc()
                log.error("cannot write the revocation snapshot %s: %s", self.path, exc)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            # Whatever arrives meanwhile goes out together in the next write.
            await asyncio.sleep(self._coalesce)


def _write_snapshot_file(path: Path, state: RevocationState) -> None:
    if not path.parent.exists():
        ensure_private_dir(path.parent)
    # 0600: only the broker reads it (the Mosquitto sidecar writes its own, 0644,
    # for the broker user).
    write_snapshot_file(path, state)
