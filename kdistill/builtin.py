"""kdistill's own registrations (context encoders, students, losses, core commands).

Loaded through the ``kdistill`` entry-point group like any other plugin.
"""

from __future__ import annotations

from kdistill import hookimpl


@hookimpl
def register_commands(register):
    # one line per core command module; each module exposes click commands/groups
    pass


@hookimpl
def register_context_encoders(register):
    pass


@hookimpl
def register_students(register):
    pass


@hookimpl
def register_losses(register):
    pass
