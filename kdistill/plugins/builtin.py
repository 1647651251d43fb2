"""kdistill's own registrations (context encoders, students, losses, core commands, the local executor).

Loaded through the ``kdistill`` entry-point group like any other plugin.
"""

from __future__ import annotations

from kdistill import hookimpl


@hookimpl
def register_commands(register):
    # core command modules, one per verb group
    from kdistill.cli import bench, compare, demo, distill, env_data, evaluate, expert, experts, export, render, teacher

    register("data", env_data.data_group)
    register("env", env_data.env_group)
    register("teacher", teacher.teacher_group)
    register("eval", evaluate.eval_cmd)
    register("expert", expert.expert_group)
    register("experts", experts.experts_group)
    register("distill", distill.distill_cmd)
    register("compare", compare.compare_cmd)
    register("export", export.export_cmd)
    register("bench", bench.bench_cmd)
    register("demo", demo.demo_cmd)
    register("render", render.render_cmd)


@hookimpl
def register_context_encoders(register):
    from kdistill.distill.encoders import ENCODERS

    for name, cls in ENCODERS.items():
        register(name, cls)


@hookimpl
def register_students(register):
    from kdistill.distill.students import STUDENTS

    for name, cls in STUDENTS.items():
        register(name, cls)


@hookimpl
def register_losses(register):
    from kdistill.distill.losses import LOSSES

    for name, fn in LOSSES.items():
        register(name, fn)


@hookimpl
def register_executors(register):
    from kdistill.executors import LocalExecutor, ProcessExecutor

    register("local", LocalExecutor)
    register("processes", ProcessExecutor)
