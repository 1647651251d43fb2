"""``kdistill eval``: a policy's returns per task beside a random policy's (reference protocol)."""

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
    print_json,
    progress_lines,
    tasks_dir_option,
    tasks_option,
)


@click.command("eval")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--policy", "policy_path", required=True, type=click.Path(),
              help="Run folder (its newest checkpoint) or checkpoint folder of a teacher or student.")
@tasks_option()
@click.option("--split", default=None, help="Evaluate a split's tasks: train, test or all. [default: train]")
@click.option("--num-tasks", type=click.IntRange(1), default=None, help="Only the first N tasks of the selection.")
@evaluation_options
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Also write eval.json and eval.png (per-task bar chart) into this folder.")
@executor_options
@json_option
@data_dir_option
@tasks_dir_option
def eval_cmd(domain_name: str, policy_path: str, task_names: str | None, split: str | None, num_tasks: int | None,
             episodes: int, seed: int, stochastic: bool, no_random: bool, device: str, threads: int, out_dir: str | None,
             as_json: bool, data_dir: str | None, tasks_dir: str | None, executor_name: str = "local", workers: int = 1,
             address: str | None = None) -> None:
    """Evaluate a policy on DOMAIN: one episode per env, raw undiscounted returns, mean over episodes then tasks.

    \b
    Example:
      kdistill eval unimal --policy runs/t1 --split test --episodes 16 --out runs/t1/eval-test
      kdistill eval unimal --policy runs/t1 --tasks-dir my-tasks       # a folder of your own task files
      kdistill eval unimal --policy runs/t1 --split all --executor ray --workers 8   # tasks spread over Ray workers
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from rich.text import Text

    from kdistill.devices import check_device, set_torch_threads
    from kdistill.domain import domain_label
    from kdistill.errors import KdistillError
    from kdistill.evaluate import evaluate_policy
    from kdistill.io import atomic_write_json, claim_results_folder
    from kdistill.loading import load_policy
    from kdistill.plots import task_bars
    from kdistill.plugins import get_domain
    from kdistill.tasks import resolve_tasks

    if episodes <= 0:
        raise KdistillError(f"--episodes must be positive, got {episodes}.")
    set_torch_threads(threads)
    domain = get_domain(domain_name, data_dir=data_dir)
    tasks = resolve_tasks(domain, task_names, split or (None if task_names or tasks_dir else "train"), num_tasks, tasks_dir,
                          progress=progress_lines())
    policy = load_policy(policy_path, domain=domain, device=check_device(device), seed=seed)
    with open_executor(executor_name, workers, address) as executor, \
            Progress(TextColumn("[bold]eval[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("tasks"),
                     TimeElapsedColumn(), TextColumn("{task.fields[last]}", markup=False), console=err_console,
                     disable=as_json) as progress:
        if out_dir is not None:  # before the evaluation, so its results cannot be lost to a bad --out
            claim_results_folder(out_dir, "eval", {"eval.json", "eval.png"})
        bar = progress.add_task("eval", total=len(tasks), last="")
        result = evaluate_policy(
            domain, policy, tasks, episodes=episodes, seed=seed, deterministic=not stochastic,
            random_baseline=not no_random, executor=executor, threads=threads,
            on_task=lambda row: progress.update(bar, advance=1, last=f"{row['name']}: {row['mean']:.1f}"))
        result["executor"] = executor.describe()
    result["policy"] = {"path": str(policy_path), **policy.describe()}
    result["domain"] = domain_label(domain)
    result["split"] = split if tasks_dir else (None if task_names else (split or "train"))
    result["tasks_dir"] = tasks_dir
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "eval.json", result)
        task_bars(result, out / "eval.png", title=f"{policy.kind} on {domain.name} ({result['split'] or tasks_dir or 'selected tasks'})")
    if as_json:
        print_json(result)
        return
    import numpy as np

    table = Table(title=f"{policy.kind} {policy.meta.get('arch', '')} on {domain.name}: {len(tasks)} tasks x {episodes} episodes"
                        f" ({'stochastic' if stochastic else 'mean action'})")
    for col, justify in (("task", "left"), ("mean return", "right"), ("std", "right"), ("mean length", "right"),
                         ("random", "right")):
        table.add_column(col, justify=justify)
    for row in result["tasks"]:
        table.add_row(row["name"], f"{row['mean']:.1f}", f"{np.std(row['returns']):.1f}", f"{np.mean(row['lengths']):.0f}",
                      f"{row['random_mean']:.1f}" if "random_mean" in row else "-")
    s = result["summary"]
    table.add_section()
    table.add_row(Text("mean over tasks", style="bold"), Text(f"{s['mean_return']:.1f}", style="bold"), "", "",
                  f"{s['random_mean_return']:.1f}" if "random_mean_return" in s else "-")
    console.print(table)
    if out_dir is not None:
        console.print(f"wrote {Path(out_dir) / 'eval.json'} and {Path(out_dir) / 'eval.png'}")
