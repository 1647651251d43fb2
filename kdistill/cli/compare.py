"""``kdistill compare``: several policies (teacher, students) side by side under the same protocol."""

from __future__ import annotations

from pathlib import Path

import click

from kdistill.cli.options import (
    console,
    data_dir_option,
    err_console,
    evaluation_options,
    executor_options,
    json_option,
    open_executor,
    parse_policies,
    print_json,
    progress_lines,
    tasks_dir_option,
    tasks_option,
)


@click.command("compare")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--policies", "policies_spec", required=True,
              help="NAME=RUN pairs, comma-separated, e.g. teacher=runs/t,hnmlp=runs/h,mlp=runs/m. "
                   "A policy named 'teacher' is the reference for the fraction column.")
@click.option("--split", "split_spec", default="train,test", show_default=True, help="Comma-separated splits.")
@click.option("--num-tasks", type=click.IntRange(1), default=None, help="Only the first N tasks of each split.")
@tasks_option("Comma-separated tasks, compared as one group named 'tasks' (instead of --split).")
@evaluation_options
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Also write compare.json, compare.md (markdown tables, per task too) and compare.png into this folder.")
@executor_options
@json_option
@data_dir_option
@tasks_dir_option
def compare_cmd(domain_name: str, policies_spec: str, split_spec: str, num_tasks: int | None, task_names: str | None,
                episodes: int, seed: int,
                stochastic: bool, no_random: bool, device: str, threads: int | None, out_dir: str | None, as_json: bool,
                data_dir: str | None, tasks_dir: str | None, executor_name: str = "local", workers: int = 1,
                address: str | None = None) -> None:
    """Evaluate several policies of DOMAIN on the same tasks and episodes, in one table.

    Each policy plays the reference protocol (one episode per env, mean action, raw returns; students
    generate their weights once per task). Returns are averaged over episodes, then tasks.

    \b
    Example:
      kdistill compare unimal --policies teacher=runs/t,hnmlp=runs/h,mlp=runs/m --split train,test --out runs/cmp
      kdistill compare unimal --policies teacher=runs/t,hnmlp=runs/h --tasks-dir mutants    # the folder only
      kdistill compare unimal --policies teacher=runs/t,hnmlp=runs/h --tasks floor-1409-0-3-01-15-56-55
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from kdistill.devices import check_device, set_torch_threads
    from kdistill.errors import KdistillError
    from kdistill.evaluate import compare_policies, comparison_markdown
    from kdistill.io import atomic_write_json, atomic_write_text, claim_results_folder
    from kdistill.loading import load_policy
    from kdistill.plots import plot_comparison
    from kdistill.plugins import get_domain

    if episodes <= 0:
        raise KdistillError(f"--episodes must be positive, got {episodes}.")
    paths = parse_policies(policies_spec)
    set_torch_threads(threads)
    domain = get_domain(domain_name, data_dir=data_dir)
    split_given = click.get_current_context().get_parameter_source("split_spec").name != "DEFAULT"
    splits = _task_groups(domain, split_spec, split_given, task_names, tasks_dir, num_tasks)
    split_names = list(splits)
    device = check_device(device)
    policies = {name: load_policy(path, domain=domain, device=device, seed=seed) for name, path in paths.items()}
    total = sum(len(t) for t in splits.values()) * len(policies)
    with open_executor(executor_name, workers, address) as executor, \
            Progress(TextColumn("[bold]compare[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("task evaluations"),
                     TimeElapsedColumn(), TextColumn("{task.fields[last]}", markup=False), console=err_console,
                     disable=as_json) as progress:
        if out_dir is not None:  # before the evaluations, so their results cannot be lost to a bad --out
            claim_results_folder(out_dir, "comparison", {"compare.json", "compare.md", "compare.png"})
        bar = progress.add_task("compare", total=total, last="")
        result = compare_policies(
            domain, policies, splits, episodes=episodes, seed=seed, deterministic=not stochastic,
            random_baseline=not no_random, executor=executor, threads=threads or 1,
            on_task=lambda split, name, row: progress.update(bar, advance=1, last=f"{split} {name} {row['name']}: {row['mean']:.1f}"))
        result["executor"] = executor.describe()
    result["policies"] = {name: {"path": paths[name], **policies[name].describe()} for name in policies}
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "compare.json", result)
        atomic_write_text(out / "compare.md", comparison_markdown(result))
        plot_comparison(result, out / "compare.png")
    if as_json:
        print_json(result)
        return
    table = Table(title=f"{domain.name}: mean return over tasks ({episodes} episodes per task, "
                        f"{'stochastic' if stochastic else 'mean action'})")
    table.add_column("policy")
    has_teacher = "fraction_of_teacher" in result
    for s in split_names:
        table.add_column(f"{s} ({len(splits[s])})", justify="right")
        if has_teacher:
            table.add_column(f"{s} / teacher", justify="right")
    for name in list(policies) + ([] if no_random else ["random"]):
        cells = []
        for s in split_names:
            r = result["returns"][s].get(name)
            cells.append("-" if r is None else f"{r:.1f}")
            if has_teacher:
                frac = result["fraction_of_teacher"][s].get(name)
                cells.append("-" if frac is None else f"{100 * frac:.0f}%")
        table.add_row(name, *cells)
    console.print(table)
    if out_dir is not None:
        console.print(f"wrote compare.json, compare.md (per-task tables) and compare.png into {out_dir}")


def _task_groups(domain, split_spec: str, split_given: bool, task_names: str | None, tasks_dir: str | None,
                 num_tasks: int | None) -> dict[str, list[str]]:
    """The groups of tasks compared, in order: the splits, or the --tasks named, and a --tasks-dir folder."""
    from kdistill.errors import KdistillError
    from kdistill.tasks import resolve_tasks

    split_names = [s.strip() for s in split_spec.split(",") if s.strip()]
    if task_names is not None:
        if split_given or tasks_dir is not None:
            raise KdistillError("pass either --tasks or --split/--tasks-dir, not both.")
        return {"tasks": resolve_tasks(domain, task_names, None, num_tasks, progress=progress_lines())}
    if tasks_dir is not None and not split_given:
        split_names = []  # --tasks-dir alone: the folder's tasks only (add --split to compare with splits too)
    elif not split_names:
        raise KdistillError("--split is empty; pass e.g. train,test.")
    groups = {s: resolve_tasks(domain, None, s, num_tasks, progress=progress_lines()) for s in split_names}
    if tasks_dir is not None:
        label = Path(tasks_dir).name or "tasks-dir"
        if label in groups:
            label = f"{label} (folder)"
        groups[label] = resolve_tasks(domain, None, None, num_tasks, tasks_dir)
    return groups
