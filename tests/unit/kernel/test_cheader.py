"""The Mosquitto plugin's header is what the kernel generates now (C and Python cannot drift)."""

from __future__ import annotations

from pathlib import Path

from broker_plugins.mosquitto import build
from fleet.kernel import cheader

HEADER = Path(__file__).resolve().parents[3] / "broker_plugins" / "mosquitto" / "fleet_kernel.h"


def test_the_committed_header_is_current() -> None:
    assert HEADER == cheader.HEADER_PATH
    assert cheader.main(["--check", str(HEADER)]) == 0


def test_a_modified_header_is_reported_stale(tmp_path: Path) -> None:
    copy = tmp_path / "fleet_kernel.h"
    copy.write_text(HEADER.read_text().replace('"admin",', '"admin-not",'))
    assert cheader.main(["--check", str(copy)]) == 1
    assert cheader.main(["--check", str(tmp_path / "missing.h")]) == 1


def test_the_plugin_uses_the_header_rather_than_its_own_copies() -> None:
    units = sorted(build.SOURCE_DIR.glob("*.[ch]"))
    assert set(build.SOURCES) <= set(units)  # every compiled unit is scanned
    sources = {unit.name: unit.read_text() for unit in units}
    assert '#include "fleet_kernel.h"' in sources["fleet_plugin.h"]
    for name, source in sources.items():
        if name != "fleet_plugin.h":  # it includes fleet_kernel.h, so every unit has the constants
            assert '#include "fleet_plugin.h"' in source, name
    everything = "\n".join(sources.values())
    for constant in (
        "FLEET_MAX_DEVICE_ID",
        "FLEET_DEVICE_ID_PUNCTUATION",
        "FLEET_DEFAULT_SKEW_SECONDS",
        "fleet_reserved_ids",
        "fleet_allowed_keys",
        "fleet_reason_codes",
    ):
        assert constant in everything, constant
    for name, source in sources.items():
        for copy in ('"administrator"', '"prime256v1"', '"certificate_revoked"', '"._-"'):
            assert copy not in source, f"{copy} is written in {name}; it belongs to the kernel"
