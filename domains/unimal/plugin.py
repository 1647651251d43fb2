"""Registers the UNIMAL domain with kdistill (entry point ``unimal`` in group ``kdistill``)."""

from __future__ import annotations

from kdistill import hookimpl


@hookimpl
def register_domains(register):
    from domains.unimal.domain import UnimalDomain

    register("unimal", UnimalDomain)
