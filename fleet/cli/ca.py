"""`fleet ca`: the fleet's own certificate authorities over the fleet's life.

Minimal group on the ``rollover`` branch; the ``rotation`` branch owns this
module (status, issuing-CA rotation) and registers the root commands too.
"""

from __future__ import annotations

import click

from fleet.cli._context import config_option
from fleet.cli.ca_root import retire_root, rotate_root
from fleet.cli.common import FleetGroup


@click.group(cls=FleetGroup)
@config_option
def ca() -> None:
    """Rotate and retire the fleet's CAs (see README, "CA lifetime")."""


ca.add_command(rotate_root)
ca.add_command(retire_root)
