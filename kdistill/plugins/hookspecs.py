"""Every hook kdistill calls, in one place (pytest style).

Each hook receives a ``register`` callback (the simonw/llm style) and calls it once per thing it
provides: ``register(name, obj)``. A plugin implements only the hooks it needs, marking each
function with ``kdistill.hookimpl``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("kdistill")


@hookspec
def register_domains(register):
    """Register domains: ``register(name, factory)``; ``factory(**options)`` returns a ``kdistill.Domain``.

    Options the CLI may pass: ``data_dir`` (a path or None). Factories must accept and may ignore it.
    """


@hookspec
def register_context_encoders(register):
    """Register context encoders: ``register(name, cls)``; ``cls(context_dim, embed_dim, **kw)`` is an nn.Module."""


@hookspec
def register_students(register):
    """Register student policies: ``register(name, cls)``; see ``kdistill.distill.students``."""


@hookspec
def register_losses(register):
    """Register distillation losses: ``register(name, fn)``; ``fn(student_mu, batch) -> scalar tensor``."""


@hookspec
def register_teachers(register):
    """Register teacher architectures: ``register(name, spec)`` with a ``kdistill.TeacherSpec``."""


@hookspec
def register_commands(register):
    """Register CLI sub-commands: ``register(name, command)``; a ``click.Command`` or ``click.Group``."""


@hookspec
def register_executors(register):
    """Register executors: ``register(name, factory)``; ``factory(workers=N, address=ADDR)`` returns a
    ``kdistill.executors.Executor`` that maps per-task jobs over its workers (see ``kdistill.executors``)."""
