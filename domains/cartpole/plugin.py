"""Registers the cart-pole domain and its teacher with kdistill (entry point ``cartpole`` in group ``kdistill``)."""

from __future__ import annotations

from kdistill import hookimpl


@hookimpl
def register_domains(register):
    from kdistill_cartpole.domain import CartPoleDomain

    register("cartpole", CartPoleDomain)


@hookimpl
def register_teachers(register):
    from kdistill_cartpole.teacher import CONTEXT_MLP

    register(CONTEXT_MLP.name, CONTEXT_MLP)
