"""A real nginx on a free loopback port, from the config shipped in docs/."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.support.binaries import need_binary
from tests.support.ports import free_port, wait_listening
from tests.support.process import stop_process

REPO = Path(__file__).resolve().parents[2]


class Nginx:
    def __init__(self, rundir: Path, template: Path, values: Mapping[str, str]) -> None:
        self.rundir = rundir
        self.template = template
        self.values = dict(values)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        exe = need_binary("nginx")
        self.port = free_port()
        self.rundir.mkdir(parents=True, exist_ok=True)
        text = self.template.read_text()
        values = {"RUNDIR": str(self.rundir), "LISTEN": f"127.0.0.1:{self.port}", **self.values}
        for name, value in values.items():
            text = text.replace(f"@{name}@", value)
        unfilled = re.search(r"^[^#\n]*(@[A-Z_]+@)", text, re.MULTILINE)
        assert unfilled is None, f"unfilled placeholder {unfilled.group(1)} in nginx config"
        if os.geteuid() == 0:
            # As root nginx would switch workers to `nobody`, who cannot read test keys.
            text = "user root;\n" + text
        conf = self.rundir / "nginx.conf"
        conf.write_text(text)
        self._proc = subprocess.Popen(
            [exe, "-p", str(self.rundir), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_listening(self._proc, self.port, "nginx", timeout=10, stop=self.stop)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)  # the nginx master; it stops its workers


@contextlib.contextmanager
def proxied_fleet(base: Path, proxy: str) -> Iterator[tuple[Any, Nginx]]:
    """A fleet server in proxy mode behind a real nginx running docs/nginx/fleet-est.conf."""
    from tests.integration.est.conftest import running_fleet

    env = {"FLEET_SERVER_MODE": "proxy", "FLEET_SERVER_TRUSTED_PROXIES": f'["{proxy}"]'}
    with running_fleet(base, env=env, scheme="http") as fleet:
        nginx = Nginx(
            base / "nginx",
            REPO / "docs/nginx/fleet-est.conf",
            {
                "FLEET": f"127.0.0.1:{fleet.server.port}",
                "CERT": str(fleet.server.data_dir / "tls/server.pem"),
                "KEY": str(fleet.server.data_dir / "tls/server.key"),
                "PROXY_BIND": proxy,
                "ROOT": str(fleet.server.root_pem),
            },
        ).start()
        try:
            yield fleet, nginx
        finally:
            nginx.stop()
