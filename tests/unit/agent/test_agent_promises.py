"""The agent's promises outside its code: the systemd unit, and messages that do not contradict."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import device_agent
from device_agent import errors

AGENT_DIR = Path(device_agent.__file__).parent


# -- the systemd unit and the agent's messages -------------------------------------------------


def test_systemd_unit_does_not_restart_a_revoked_or_refused_agent() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(AGENT_DIR / "systemd" / "fleet-agent.service")
    prevented = {int(code) for code in unit["Service"]["RestartPreventExitStatus"].split()}
    revoked = getattr(errors, "EXIT_REVOKED", 6)  # 6: the documented "revoked" exit code
    assert {errors.EXIT_CONFIG, errors.EXIT_REFUSED, revoked} <= prevented
    assert unit["Service"]["Restart"] == "on-failure"


def _string_literals(source: str) -> list[str]:
    """Adjacent string literals joined, roughly: enough to read the agent's messages."""
    joined = re.sub(r'"\s*\n\s*f?"', "", source)
    return re.findall(r'f?"([^"\n]*)"', joined)


def test_no_message_says_retrying_will_not_help_and_that_it_is_trying_again() -> None:
    hopeless = re.compile(r"will not help|won't help|pointless", re.IGNORECASE)
    offenders = []
    for path in sorted(AGENT_DIR.rglob("*.py")):
        for text in _string_literals(path.read_text()):
            if hopeless.search(text):
                offenders.append(f"{path.name}: {text}")
    # A hopeless message anywhere can end up in a log line that also says when the next
    # attempt is; the agent's messages say what happens next instead.
    assert offenders == [], offenders
