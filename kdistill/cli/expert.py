"""``kdistill expert collect``: roll out a teacher and store expert data per task."""

from __future__ import annotations

import click

from kdistill.cli.options import (
    AliasOption,
    console,
    data_dir_option,
    err_console,
    executor_options,
    json_option,
    open_executor,
    print_json,
    progress_bars,
    progress_lines,
    tasks_dir_option,
    tasks_option,
)


@click.group("expert")
def expert_group() -> None:
    """Expert data: teacher rollouts that students are distilled from."""


@expert_group.command("collect")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--teacher", "teacher_path", required=True, type=click.Path(),
              help="Teacher run folder (its newest checkpoint) or checkpoint folder, or per-task experts "
                   "(`kdistill experts export`): each task's rows are then labelled by its own expert.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Data folder: shards/<task>.safetensors and meta.json. Re-running skips finished tasks.")
@tasks_option()
@click.option("--split", default=None, help="Collect a split's tasks: train, test or all. [default: train]")
@click.option("--num-tasks", type=click.IntRange(1), default=None, help="Only the first N tasks of the selection.")
@click.option("--samples-per-task", "--samples-per-robot", "samples", cls=AliasOption, type=click.IntRange(1), default=16000, show_default=True,
              help="Rows stored per task (time-major over the envs).")
@click.option("--envs", type=click.IntRange(1), default=16, show_default=True, help="Envs of the task stepped together per task.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resets and the sampled actions.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the teacher: cpu or cuda.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="Torch CPU threads. More threads are much slower while the envs step on the same cores "
                   "(measured 7-13x slower with 2 on 2 cores): the batches here are small.")
@executor_options
@json_option
@data_dir_option
@tasks_dir_option
def collect_cmd(domain_name: str, teacher_path: str, out: str, task_names: str | None, split: str | None,
                num_tasks: int | None, samples: int, envs: int, seed: int, device: str, threads: int | None,
                as_json: bool, data_dir: str | None, tasks_dir: str | None = None, executor_name: str = "local",
                workers: int = 1, address: str | None = None) -> None:
    """Roll out the teacher on each task of DOMAIN and store what students learn from.

    Per task, --envs copies of the task are stepped together with the teacher's sampled actions
    (Normal(mean, std), the teacher's frozen normaliser); each row stores the student's view of the
    state (normalised, sliced to the student features), the masks, the teacher's mean action and the
    action played. One shard per task is written atomically, so an interrupted collection resumes.

    \b
    Example:
      kdistill expert collect unimal --teacher runs/teacher --split train --out data/expert
      kdistill expert collect unimal --teacher runs/teacher --split train --out data/expert --executor ray --workers 8
    """
    from rich.table import Table

    from kdistill.devices import check_device, set_torch_threads
    from kdistill.distill.expert_data import CollectSettings, collect_expert_data
    from kdistill.errors import KdistillError
    from kdistill.loading import load_policy
    from kdistill.plugins import get_domain
    from kdistill.tasks import resolve_tasks

    if samples <= 0 or envs <= 0:
        raise KdistillError("--samples-per-task and --envs must be positive.")
    set_torch_threads(threads)
    domain = get_domain(domain_name, data_dir=data_dir)
    tasks = resolve_tasks(domain, task_names, split or (None if task_names or tasks_dir else "train"), num_tasks, tasks_dir,
                          progress=progress_lines())
    teacher = load_policy(teacher_path, domain=domain, device=check_device(device), seed=seed)
    if teacher.kind not in ("teacher", "experts"):
        raise KdistillError(f"{teacher_path} holds a {teacher.kind!r} policy; pass a teacher run from `kdistill teacher "
                            f"train` or per-task experts from `kdistill experts export`.")
    # per-task experts have no common normaliser: the data's is fitted on their rollouts over the tasks
    normalizer = teacher.meta["normalizer"] if teacher.kind == "teacher" else None
    with open_executor(executor_name, workers, address) as executor, progress_bars(not as_json) as report:
        summary = collect_expert_data(domain, teacher, normalizer, tasks, out,
                                      CollectSettings(samples_per_task=samples, num_envs=envs, seed=seed),
                                      teacher_ref=str(teacher_path), progress=report, executor=executor,
                                      threads=threads or 1)
        summary["executor"] = executor.describe()
    summary["domain"] = domain.name
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"expert data in {out}: {len(tasks)} tasks")
    table.add_column("task")
    table.add_column("status")
    table.add_column("teacher return (stochastic)", justify="right")
    for task in tasks:
        ret = summary["mean_return"].get(task)
        table.add_row(task, "collected" if task in summary["collected"] else "already there",
                      "-" if ret is None else f"{ret:.1f}")
    console.print(table)
    err_console.print(f"{summary['samples']:,} rows over {len(tasks)} tasks in {out}")
