"""Teacher architectures by name: the one home of teacher lookup.

A domain's teachers are the ones its plugin registers through the ``register_teachers`` hook (the only way to offer
a teacher, so every teacher that trains can be loaded again); ``Domain.default_teacher`` names the default.
"""

from __future__ import annotations

from typing import Any

from kdistill.domain import Layout, TeacherSpec
from kdistill.errors import CheckpointError, KdistillError, unknown_name
from kdistill.plugins import get_plugins
from kdistill.rl.ppo import PPOConfig


def domain_teachers(domain) -> dict[str, TeacherSpec]:
    """The teachers registered by the plugin that registered ``domain``, by name."""
    plugins = get_plugins()
    plugin = plugins.domains.entry(domain.name).plugin
    return {e.name: e.obj for e in plugins.teachers if e.plugin == plugin}


def find_teacher_spec(domain, name: str | None = None) -> tuple[str, TeacherSpec]:
    """``(name, spec)`` of the teacher called ``name``, or of ``domain``'s default teacher when ``name`` is None."""
    if name is None:
        name = domain.default_teacher or next(iter(domain_teachers(domain)), None)
        if name is None:
            raise KdistillError(f"domain {domain.name!r} offers no teacher; register one with register_teachers.")
    return name, get_plugins().teachers.get(name)


def teacher_preset(spec: TeacherSpec, preset: str) -> str:
    """The teacher config preset to use for ``preset``: itself when the teacher has it; for a run-wide preset
    (a PPO preset such as ``paper`` or ``cpu``) the teacher does not define, its ``default``; else an error."""
    presets = spec.config_cls.presets()
    if preset in presets:
        return preset
    if preset in PPOConfig.presets() and "default" in presets:
        return "default"
    raise unknown_name(f"{spec.name} teacher preset", preset, presets)


def teacher_spec_for(name: str) -> TeacherSpec | None:
    """The teacher architecture called ``name`` when it is one (and no student has that name), else None."""
    plugins = get_plugins()
    if name in plugins.students or name not in plugins.teachers:
        return None
    return plugins.teachers.get(name)


def build_teacher(meta: dict[str, Any]):
    """The teacher module a checkpoint's meta describes (weights not loaded)."""
    registry = get_plugins().teachers
    arch = meta.get("arch")
    if arch not in registry:
        raise CheckpointError(f"the checkpoint's teacher {arch!r} is not registered (is the plugin of domain "
                              f"{meta.get('domain')!r} installed?); available: {', '.join(registry.names()) or 'none'}.")
    spec = registry.get(arch)
    try:
        config = spec.config_cls(**meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's config does not fit teacher {arch!r} ({exc}); it was written by another version.") from None
    return spec.build(Layout.from_dict(meta["layout"]), config)
