"""The README's commands work verbatim.

The ```sh blocks of the walk-through sections are run as written, in README
order, by one ``bash`` (so ``export`` and shell variables carry over from
block to block), in an empty directory, with the venv's ``bin`` first on
PATH and no ``FLEET_*`` variable from outside. The factory's files come from
the README's own ``fleet-sim factory`` block.

The one convention (documented in "Run it for real"): a command whose
comment ends with ``runs until stopped`` is started in the background; when
the comment says ``listens on HOST:PORT`` the harness waits (bounded) for
that port before going on, and fails if the command dies first. Everything
the script started is stopped at the end (its process group).

Ports are the README's own (8443, 8883, 8884): a lock file serialises runs of this
test, and a port already taken by something else fails the test with its
name rather than substituting one the README does not document.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.binaries import need_binary

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SECTIONS = (
    "Run it for real",
    "Administer the fleet",
    "Run a device",
    "Enforce it on the broker",
    "CA lifetime",
)
DOCUMENTED_PORTS = (8443, 8883, 8884)
RUN_TIMEOUT = 300
_BACKGROUND = re.compile(r"^(?P<code>.*?)\s+#(?P<comment>[^#]*runs until stopped\.?)\s*$")
_LISTENS = re.compile(r"listens on (?P<host>[0-9.]+|localhost):(?P<port>\d+)")


@dataclasses.dataclass(frozen=True)
class Block:
    section: str
    first_line: int  # README line of the block's first command line
    lines: tuple[str, ...]


def sh_blocks(text: str, sections: tuple[str, ...] = SECTIONS) -> dict[str, list[Block]]:
    """The ```sh blocks of each `## ` section named in ``sections`` (subsections included)."""
    blocks: dict[str, list[Block]] = {name: [] for name in sections}
    section: str | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            title = line[3:].strip()
            section = title if title in blocks else None
        elif line.strip() == "```sh" and section is not None:
            start = i + 1
            i += 1
            while lines[i].strip() != "```":
                i += 1
            blocks[section].append(Block(section, start + 1, tuple(lines[start:i])))
        i += 1
    return blocks


_PRELUDE = r"""
set -eo pipefail
trap 'echo "__readme_failed ${LINENO} $?" >&2' ERR
__background() {  # pid [host port]: wait until the background command listens
  local pid=$1 host=${2:-} port=${3:-}
  echo "__readme_background $pid" >&2
  [[ -z $port ]] && return 0
  local deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "__readme_died $pid (never listened on $host:$port)" >&2; return 1
    fi
    if ((SECONDS > deadline)); then
      echo "__readme_timeout $pid ($host:$port)" >&2; return 1
    fi
    sleep 0.1
  done
}
"""


def build_script(blocks: dict[str, list[Block]]) -> tuple[str, dict[int, int]]:
    """The bash script, and script line -> README line (the command lines are copied 1:1)."""
    out = _PRELUDE.strip("\n").splitlines()
    where: dict[int, int] = {}
    n_background = 0
    for index, section in enumerate(SECTIONS):
        out.append(f"echo '__readme_section_start {index}' >&2")
        if not blocks[section]:
            out.append(f"echo '__readme_empty_section {index}' >&2; exit 1")
        for block in blocks[section]:
            for offset, line in enumerate(block.lines):
                background = _BACKGROUND.match(line)
                if background:
                    n_background += 1
                    listens = _LISTENS.search(background["comment"])
                    target = f" {listens['host']} {listens['port']}" if listens else ""
                    log = f".readme-background-{n_background}.log"
                    line = (
                        f"{background['code']} >{log} 2>&1 & __background $!{target}"
                        f"  #{background['comment']}"
                    )
                out.append(line)
                where[len(out)] = block.first_line + offset
        out.append(f"echo '__readme_section_ok {index}' >&2")
    return "\n".join(out) + "\n", where


@dataclasses.dataclass
class Walkthrough:
    returncode: int
    output: str
    workdir: Path
    where: dict[int, int]

    def section_ok(self, index: int) -> bool:
        return f"__readme_section_ok {index}\n" in self.output

    def explain(self, index: int) -> str:
        section = SECTIONS[index]
        if f"__readme_section_start {index}\n" not in self.output:
            return f"README section {section!r} did not run: an earlier section failed"
        if f"__readme_empty_section {index}\n" in self.output:
            return f"README section {section!r} has no ```sh block to run"
        failed = re.findall(r"__readme_failed (\d+) (\d+)", self.output)
        line = ""
        if failed:
            script_line, code = map(int, failed[0])
            readme_line = self.where.get(script_line)
            line = f"README.md:{readme_line} exited {code}. " if readme_line else ""
        logs = "".join(
            f"\n--- {log.name} (tail) ---\n" + "\n".join(log.read_text().splitlines()[-15:])
            for log in sorted(self.workdir.glob(".readme-background-*.log"))
        )
        return (
            f"README section {section!r} failed: {line}exit {self.returncode}\n"
            f"--- bash output (tail) ---\n" + "\n".join(self.output.splitlines()[-60:]) + logs
        )


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Walkthrough:
    for program in ("bash", "openssl", "curl"):
        need_binary(program)
    script, where = build_script(sh_blocks(README.read_text()))
    workdir = tmp_path_factory.mktemp("readme")
    (workdir / "home").mkdir()
    (workdir / ".readme.sh").write_text(script)
    bin_dir = Path(sys.executable).parent
    env = {
        "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(workdir / "home"),
        "LANG": "C.UTF-8",
        "TMPDIR": str(workdir),
    }
    # Output goes to a file, not a pipe: commands the README puts in the background
    # with `&` inherit it and would hold a pipe open after the script is done.
    transcript = workdir / ".readme.out"
    with _documented_ports(), transcript.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(workdir / ".readme.sh")],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: what we stop at the end
        )
        try:
            proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            _stop_group(proc.pid)
            proc.wait()
            out.write(b"\n__readme_timeout whole walk-through\n")
        finally:
            _stop_group(proc.pid)
    output = transcript.read_text(errors="replace")
    return Walkthrough(proc.returncode, output, workdir, where)


def _stop_group(pgid: int) -> None:
    """Stop what the README started (fleet serve, fleet-agent run, brokers): our group only."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


class _documented_ports:
    """Hold the lock for the README's ports; fail if something else has one of them."""

    def __enter__(self) -> None:
        self._lock = open("/tmp/fleet-readme-ports.lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        for port in DOCUMENTED_PORTS:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    self.__exit__()
                    pytest.fail(f"port {port}, which the README documents, is in use")

    def __exit__(self, *_: object) -> None:
        self._lock.close()


def test_the_harness_reads_the_sections_it_is_meant_to() -> None:
    blocks = sh_blocks(README.read_text())
    for section in SECTIONS:
        assert blocks[section], f"no ```sh block in README section {section!r}"
    script, _ = build_script(blocks)
    assert "fleet-sim factory" in script
    assert "fleet serve >" in script
    assert "__background $! 127.0.0.1 8443" in script


@pytest.mark.parametrize("index", range(len(SECTIONS)), ids=SECTIONS)
def test_readme_section_runs_as_written(walkthrough: Walkthrough, index: int) -> None:
    assert walkthrough.section_ok(index), walkthrough.explain(index)
