"""Network faults for simulated devices: a loopback TCP proxy that adds latency.

``LatencyProxy`` listens on 127.0.0.1 and forwards every connection to a target
(the EST server) on its own asyncio loop in a thread. Each chunk of bytes is held
``delay`` seconds before it is passed on, in each direction, so a round trip costs
``2 x delay`` more (like ``tc qdisc … netem delay`` on both ends); bytes keep their
order and the link keeps its throughput (chunks are delayed, not serialised).
TLS passes through untouched: the devices still verify the server end to end.

The same proxy (with ``delay=0``) stands between the devices and the MQTT broker
for an outage: ``cut()`` drops every connection through it and makes it refuse new
ones (accepted, then closed at once, like a broker host that resets), ``restore()``
forwards again. ``connections`` counts every attempt that reached the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from firmware_sim.world import LOOPBACK

CHUNK = 65536


class LatencyProxy:
    """Forward 127.0.0.1:``port`` to ``target()`` (host, port), adding ``delay`` s each way."""

    def __init__(self, target: Callable[[], tuple[str, int]], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.port = 0
        self.connections = 0  # connection attempts that reached the proxy (refused ones too)
        self.refusing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self) -> LatencyProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, LOOPBACK, 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("latency proxy did not start")
        return self

    def cut(self) -> None:
        """Outage: refuse new connections and drop every connection open through the proxy."""
        self.refusing = True
        loop = self._loop
        if loop is None:
            return

        async def drop() -> None:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drop(), loop).result(10)

    def restore(self) -> None:
        """End of the outage: forward new connections again."""
        self.refusing = False

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            if self.refusing:
                return
            host, port = self.target()
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                return
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy reader to writer, each chunk ``delay`` s late; end-of-stream is delayed too."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    data = b""
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except OSError:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
