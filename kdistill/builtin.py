"""kdistill's own registrations (context encoders, students, losses, core commands).

Loaded through the ``kdistill`` entry-point group like any other plugin.
"""

from __future__ import annotations

import click

from kdistill import hookimpl


@hookimpl
def register_commands(register):
    pass
