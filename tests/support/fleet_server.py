"""A real `fleet serve` process on a free loopback port, stopped by its own PID."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

from fleet.config import load_config
from fleet.datadir import init_data_dir
from fleet.store.factory import open_store
from fleet.store.protocol import Store
from tests.support.ports import free_port
from tests.support.process import stop_process

T = TypeVar("T")


def make_data_dir(path: Path) -> Path:
    """A fresh data directory with an empty SQLite store (like `fleet init`)."""
    result = init_data_dir(path, now=dt.datetime.now(dt.UTC))
    run_store(result.config_path, lambda store: store.feed_head())
    return result.config_path


def run_store(
    config_path: Path,
    action: Callable[[Store], Awaitable[T]],
    env: Mapping[str, str] | None = None,
) -> T:
    """Run ``action`` against the server's store from the test process."""
    config = load_config(config_path, environ={**os.environ, **(env or {})})

    async def body() -> T:
        store = await open_store(config.store_url, redis=config.store_redis)
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(body())


class FleetServer:
    def __init__(
        self,
        config_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        scheme: str = "https",
    ) -> None:
        self.config_path = config_path
        self.data_dir = config_path.parent
        self.env = {**os.environ, **(env or {})}
        self.workers = workers
        self.scheme = scheme
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"server-{id(self)}.log"

    @property
    def root_pem(self) -> Path:
        return self.data_dir / "ca/root.pem"

    @property
    def issuing_pem(self) -> Path:
        return self.data_dir / "ca/issuing.pem"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def est(self, operation: str, label: str | None = None) -> str:
        middle = f"/{label}" if label else ""
        return f"{self.base}/.well-known/est{middle}/{operation}"

    def start(self) -> FleetServer:
        self.port = free_port()
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "fleet", "serve",
                "--config", str(self.config_path),
                "--listen", f"127.0.0.1:{self.port}",
                "--workers", str(self.workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while not self._healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleet serve exited early:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fleet serve did not become healthy:\n{self.log()}")
            time.sleep(0.05)
        return self

    def _healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.root_pem))
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own https URL
                f"{self.base}/healthz",
                timeout=1,
                context=context if self.scheme == "https" else None,
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, grace=15)

    def store(self, action: Callable[[Store], Awaitable[T]]) -> T:
        return run_store(self.config_path, action, self.env)
