"""Several hosts on one machine: Linux network namespaces joined by a bridge.

Each host is a network namespace (``ip netns add``) with one veth interface,
``eth0``, holding one address of a private /24. The bridge that joins them
lives in a namespace of its own, the "switch", so nothing is ever added to or
changed on the machine's own interfaces: the veth pairs are created inside
the switch and one end is moved straight into the host. Names carry the
test run's PID (``fleet<pid>-<host>``), so parallel runs never collide, and
a run that was killed before its teardown is cleaned up by the next one.

Long-running programs start with ``ip netns exec`` and are stopped by their
own PID; ``Host.call`` runs a Python function in a thread that entered the
host's namespace (sockets and child processes it creates live there), which
is how test clients talk to the hosts' private addresses.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2: without them the
tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.binaries import need_binary
from tests.support.process import stop_process

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
_OURS = re.compile(r"^fleet(\d+)-")


def require_netns() -> str:
    """The `ip` program; skips the test with the reason when namespaces cannot be made here."""
    ip = need_binary("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add); run the multi-host tests as root")
    probe = f"fleet{os.getpid()}-probe"
    made = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    subprocess.run([ip, "netns", "delete", probe], capture_output=True, check=False)
    return ip


def remove_leftovers(ip: str) -> None:
    """Delete namespaces of earlier runs whose process is gone (a run killed mid-test)."""
    listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, check=False)
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _OURS.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _delete(ip, name)


def _delete(ip: str, namespace: str) -> None:
    """Kill what still runs in ``namespace`` (only programs our runs started there, e.g.
    the workers of a supervisor killed with -9), by PID, then delete it."""
    pids = subprocess.run([ip, "netns", "pids", namespace], capture_output=True, text=True)
    for pid in pids.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run([ip, "netns", "delete", namespace], capture_output=True, check=False)


def _enter(namespace: str) -> None:
    """Move the calling thread (only it) into ``namespace``."""
    setns = getattr(os, "setns", None)  # Python 3.12+
    fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
    try:
        if setns is not None:
            setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class Host:
    """One namespace with one address; the processes started in it are stopped by PID."""

    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network = network
        self.name = name
        self.address = address
        self.namespace = f"{network.prefix}-{name}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def command(self, args: Sequence[str | Path]) -> list[str]:
        return [self.network.ip, "netns", "exec", self.namespace, *map(str, args)]

    def popen(
        self,
        args: Sequence[str | Path],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running program in this host (stdout and stderr to ``log``)."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.command(args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
            )
        self.procs.append(proc)
        return proc

    def run(
        self,
        args: Sequence[str | Path],
        *,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a program to completion in this host; raises with its output if it fails."""
        result = subprocess.run(
            self.command(args),
            capture_output=True,
            input=input,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(map(str, args))} on {self.name} exited {result.returncode}:\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    def call(self, action: Callable[[], T], *, timeout: float = 120) -> T:
        """``action()`` in a thread inside this host's namespace; its result or its exception."""
        box: dict[str, object] = {}

        def body() -> None:
            try:
                _enter(self.namespace)
                box["result"] = action()
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc

        thread = threading.Thread(target=body, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{action!r} in {self.name} did not finish in {timeout} s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["result"]  # type: ignore[return-value]

    def listening(self, port: int) -> bool:
        """Whether something accepts TCP connections on this host's address and ``port``."""

        def probe() -> bool:
            try:
                with socket.create_connection((self.address, port), timeout=0.5):
                    return True
            except OSError:
                return False

        return self.call(probe)

    def wait_listening(
        self, port: int, proc: subprocess.Popen[bytes], log: Path, *, timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while not self.listening(port):
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name}: exited early:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: nothing listens on {port}:\n{_tail(log)}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        while self.procs:
            stop_process(self.procs.pop(), grace=5)


def _tail(log: Path, size: int = 4000) -> str:
    return log.read_bytes()[-size:].decode(errors="replace") if log.exists() else ""


class Network:
    """A switch namespace with a bridge, and the hosts plugged into it (one /24)."""

    def __init__(self, ip: str, subnet: str = "10.10.0") -> None:
        self.ip = ip
        self.subnet = subnet
        self.prefix = f"fleet{os.getpid()}"
        self.switch = f"{self.prefix}-switch"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._cleanups: list[Callable[[], None]] = []

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` at teardown, after every process has been stopped."""
        self._cleanups.append(cleanup)

    def start(self) -> None:
        self._add_namespace(self.switch)
        self._ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.switch, "link", "set", "br0", "up")

    def _ip(self, *args: str) -> None:
        result = subprocess.run([self.ip, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def _add_namespace(self, name: str) -> None:
        self._ip("netns", "add", name)
        self._namespaces.append(name)
        self._ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str, octet: int) -> Host:
        """A new host ``name`` at ``<subnet>.<octet>``, plugged into the bridge."""
        host = Host(self, name, f"{self.subnet}.{octet}")
        self._add_namespace(host.namespace)
        port = f"p{octet}"  # the switch side; interface names are at most 15 characters
        self._ip(
            "-n", self.switch, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", host.namespace,
        )  # fmt: skip
        self._ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        self._ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        self._ip("-n", host.namespace, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def cut(self, name: str) -> None:
        """Unplug ``name`` from the switch (a network partition); ``mend`` plugs it back."""
        octet = self.hosts[name].address.rsplit(".", 1)[1]
        self._ip("-n", self.switch, "link", "set", f"p{octet}", "down")

    def mend(self, name: str) -> None:
        octet = self.hosts[name].address.rsplit(".", 1)[1]
        self._ip("-n", self.switch, "link", "set", f"p{octet}", "up")

    def close(self) -> None:
        """Stop every process by PID, then delete every namespace (veths go with them)."""
        for host in self.hosts.values():
            host.stop_all()
        for name in reversed(self._namespaces):
            _delete(self.ip, name)
        self._namespaces.clear()
        while self._cleanups:
            self._cleanups.pop()()


@contextlib.contextmanager
def network(subnet: str = "10.10.0") -> Iterator[Network]:
    """A fresh switch for one test; everything is torn down on the way out, failure or not."""
    ip = require_netns()
    remove_leftovers(ip)
    net = Network(ip, subnet)
    try:
        net.start()
        yield net
    finally:
        net.close()
