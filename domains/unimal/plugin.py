"""Registers the UNIMAL domain with kdistill (entry point ``unimal`` in group ``kdistill``)."""

from __future__ import annotations

from kdistill import hookimpl


@hookimpl
def register_domains(register):
    from kdistill_unimal.domain import UnimalDomain

    register("unimal", UnimalDomain)


@hookimpl
def register_teachers(register):
    from kdistill_unimal.teachers import TEACHERS

    for name, spec in TEACHERS.items():
        register(name, spec)


@hookimpl
def register_commands(register):
    from kdistill_unimal.commands import unimal_group

    register("unimal", unimal_group)
