"""The plugin's build compiles every C unit of broker_plugins/mosquitto/plugin/."""

from __future__ import annotations

from broker_plugins.mosquitto import build


def test_every_unit_is_compiled() -> None:
    # A unit left out would link (a plugin may leave symbols to the broker) and
    # only fail when Mosquitto loads the plugin.
    units = sorted(build.SOURCE_DIR.glob("*.c"))
    assert units, build.SOURCE_DIR
    assert sorted(build.SOURCES) == units
    assert len(set(build.SOURCES)) == len(build.SOURCES)
