"""A real Apache httpd 2.4 on a free loopback port, from the config shipped in docs/."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.support.binaries import need_binary
from tests.support.ports import free_port, wait_listening
from tests.support.process import stop_process

MODULES = Path("/usr/lib/apache2/modules")  # Debian's apache2 package


class Apache:
    def __init__(self, rundir: Path, template: Path, values: Mapping[str, str]) -> None:
        self.rundir = rundir
        self.template = template
        self.values = dict(values)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Apache:
        exe = need_binary("apache2")
        self.port = free_port()
        self.rundir.mkdir(parents=True, exist_ok=True)
        text = self.template.read_text()
        values = {
            "RUNDIR": str(self.rundir),
            "LISTEN": f"127.0.0.1:{self.port}",
            "MODULES": str(MODULES),
            **self.values,
        }
        for name, value in values.items():
            text = text.replace(f"@{name}@", value)
        unfilled = re.search(r"^[^#\n]*(@[A-Z_]+@)", text, re.MULTILINE)
        assert unfilled is None, f"unfilled placeholder {unfilled.group(1)} in apache config"
        if os.geteuid() == 0:
            # As root the children switch to an unprivileged user; they read no
            # file after start, but the run directory must be theirs to use.
            user = pwd.getpwnam("www-data") if _has_user("www-data") else pwd.getpwnam("nobody")
            text = f"User {user.pw_name}\nGroup #{user.pw_gid}\n" + text
            os.chown(self.rundir, user.pw_uid, user.pw_gid)
        conf = self.rundir / "apache2.conf"
        conf.write_text(text)
        self._proc = subprocess.Popen(
            [exe, "-f", str(conf), "-D", "FOREGROUND"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"},
        )
        wait_listening(
            self._proc, self.port, "apache2", timeout=15, stop=self.stop, diagnose=self.error_log
        )
        return self

    def error_log(self) -> str:
        log = self.rundir / "error.log"
        return log.read_text() if log.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)  # the apache2 parent; it stops its children


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
