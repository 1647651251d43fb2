"""kdistill: knowledge-decoupled distillation.

A teacher that reads task context and state together is distilled into a hypernetwork that writes,
once per task, the weights of a small policy that reads state only.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("kdistill")

from kdistill.domain import Domain, Layout, TaskContext, TeacherSpec  # noqa: E402
from kdistill.errors import KdistillError  # noqa: E402
from kdistill.plugins import get_domain, get_plugins  # noqa: E402

__all__ = [
    "__version__",
    "hookimpl",
    "KdistillError",
    "Domain",
    "Layout",
    "TaskContext",
    "TeacherSpec",
    "get_domain",
    "get_plugins",
]
