"""Registers the Ray executor with kdistill (entry point ``ray`` in group ``kdistill``)."""

from __future__ import annotations

from kdistill import hookimpl


@hookimpl
def register_executors(register):
    # the executor module imports ray only when an executor starts, so kdistill without the extra still loads
    from kdistill_ray.executor import RayExecutor

    register("ray", RayExecutor)
