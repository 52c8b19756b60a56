"""The servers bench/est_enroll.py measures, each started side by side and stopped (by PID).

Each context manager yields a :class:`Target`: the port to send requests to
and the process trees whose CPU is counted.
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import serialization
from est_load import Bench, Target, cpu_ticks

from fleet.pki.ca import CertifiedKey
from tests.support.fleet_server import FleetServer
from tests.support.nginx import Nginx
from tests.support.ports import free_port
from tests.support.process import stop_process

PROXY_BIND = "127.0.0.2"  # nginx's upstream source address, trusted by fleet

STATIC_NGINX_CONF = """\
# Baseline: the same TLS settings as docs/nginx/fleet-est.conf, a static 200.
pid @RUNDIR@/nginx.pid;
error_log @RUNDIR@/error.log warn;
worker_processes 1;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path @RUNDIR@/client_body;
    proxy_temp_path @RUNDIR@/proxy;
    fastcgi_temp_path @RUNDIR@/fastcgi;
    uwsgi_temp_path @RUNDIR@/uwsgi;
    scgi_temp_path @RUNDIR@/scgi;

    server {
        listen @LISTEN@ ssl;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;
        ssl_verify_client optional_no_ca;
        ssl_session_cache shared:est:10m;
        ssl_session_tickets off;
        client_max_body_size 64k;

        location / {
            return 200 "ok\\n";
        }
    }
}
"""


def nginx_values(config_dir: Path) -> dict[str, str]:
    return {
        "CERT": str(config_dir / "tls/server.pem"),
        "KEY": str(config_dir / "tls/server.key"),
        "ROOT": str(config_dir / "ca/root.pem"),  # the shipped config staples OCSP
    }


@contextmanager
def nginx_static(bench: Bench) -> Iterator[Target]:
    template = bench.tmp / "nginx-static.conf"
    template.write_text(STATIC_NGINX_CONF)
    nginx = Nginx(bench.tmp / "nginx-static", template, nginx_values(bench.config.parent))
    nginx.start()
    try:
        assert nginx._proc is not None
        yield Target("nginx-static", "1 nginx static 200", nginx.port, {"nginx": [nginx._proc.pid]})
    finally:
        nginx.stop()


@contextmanager
def fleet_direct(bench: Bench, workers: int) -> Iterator[Target]:
    server = FleetServer(bench.config, workers=workers)
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        deadline = time.monotonic() + 30
        while len(cpu_ticks([pid])) < 1 + (workers if workers > 1 else 0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"fleet serve did not start {workers} workers")
            time.sleep(0.1)
        key = "fleet-direct" if workers == 1 else f"fleet-direct-{workers}w"
        title = f"{'2' if workers == 1 else '4'} fleet direct, {workers} worker(s)"
        yield Target(key, title, server.port, {"fleet": [pid]})
    finally:
        server.stop()


@contextmanager
def naive_prototype(bench: Bench, manufacturer: CertifiedKey) -> Iterator[Target]:
    """bench/naive_est_server.py: the issue's "naive aiohttp prototype", run here."""
    ca_pem = bench.tmp / "manufacturer.pem"
    ca_pem.write_bytes(manufacturer.certificate.public_bytes(serialization.Encoding.PEM))
    port = free_port()
    command = [sys.executable, str(REPO / "bench/naive_est_server.py"), str(bench.config)]
    command += [str(port), str(ca_pem), str(bench.tmp / "naive.db")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the naive server did not start: {proc.stdout.read()!r}")
        yield Target("naive", "5 naive aiohttp prototype", port, {"naive": [proc.pid]})
    finally:
        stop_process(proc)


@contextmanager
def nginx_fleet_proxy(bench: Bench) -> Iterator[Target]:
    env = {"FLEET_SERVER_MODE": "proxy", "FLEET_SERVER_TRUSTED_PROXIES": f'["{PROXY_BIND}"]'}
    server = FleetServer(bench.config, env=env, scheme="http")
    shipped = (REPO / "docs/nginx/fleet-est.conf").read_text()
    if "worker_processes auto;" not in shipped:
        raise RuntimeError("docs/nginx/fleet-est.conf no longer says `worker_processes auto;`")
    template = bench.tmp / "fleet-est.conf"
    template.write_text(shipped.replace("worker_processes auto;", "worker_processes 1;"))
    server.start()
    try:
        assert server.proc is not None
        values = {
            **nginx_values(bench.config.parent),
            "FLEET": f"127.0.0.1:{server.port}",
            "PROXY_BIND": PROXY_BIND,
        }
        nginx = Nginx(bench.tmp / "nginx-proxy", template, values)
        nginx.start()
        try:
            assert nginx._proc is not None
            parts = {"nginx": [nginx._proc.pid], "fleet": [server.proc.pid]}
            yield Target("nginx+fleet-proxy", "3 nginx + fleet proxy", nginx.port, parts)
        finally:
            nginx.stop()
    finally:
        server.stop()
