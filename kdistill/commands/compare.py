"""``kdistill compare``: several policies (teacher, students) side by side under the same protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kdistill.cli import console, data_dir_option, err_console, json_option, print_json, tasks_dir_option


def parse_policies(spec: str) -> dict[str, str]:
    """``"teacher=runs/t,hnmlp=runs/h"`` -> ``{"teacher": "runs/t", "hnmlp": "runs/h"}``."""
    from kdistill.errors import KdistillError

    out: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, path = part.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise KdistillError(f"--policies takes NAME=RUN pairs separated by commas (e.g. teacher=runs/t,hnmlp=runs/h); got {part!r}.")
        if name in out or name == "random":
            raise KdistillError(f"policy name {name!r} is used twice or reserved; give each policy its own name.")
        out[name] = path
    if not out:
        raise KdistillError("--policies is empty; pass NAME=RUN pairs, e.g. teacher=runs/t,hnmlp=runs/h.")
    return out


def compare_policies(domain, policies: dict[str, Any], splits: dict[str, list[str]], episodes: int = 16, seed: int = 0,
                     deterministic: bool = True, random_baseline: bool = True, on_task=None) -> dict[str, Any]:
    """Evaluate every policy on every split's tasks (same envs, same reset seeds) and tabulate mean returns."""
    from kdistill.evaluate import evaluate_policy

    returns: dict[str, dict[str, float | None]] = {}
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for split, tasks in splits.items():
        returns[split], per_task[split] = {}, {t: {} for t in tasks}
        for k, (name, policy) in enumerate(policies.items()):
            with_random = random_baseline and k == 0  # the random policy plays the same seeds whoever runs it
            result = evaluate_policy(domain, policy, tasks, episodes=episodes, seed=seed, deterministic=deterministic,
                                     random_baseline=with_random,
                                     on_task=(lambda row, n=name, s=split: on_task(s, n, row)) if on_task else None)
            returns[split][name] = result["summary"]["mean_return"]
            for row in result["robots"]:
                per_task[split][row["name"]][name] = row["mean"]
                if with_random:
                    per_task[split][row["name"]]["random"] = row["random_mean"]
            if with_random:
                returns[split]["random"] = result["summary"]["random_mean_return"]
    out: dict[str, Any] = {"domain": domain.name, "episodes": episodes, "seed": seed, "deterministic": deterministic,
                           "tasks": {s: list(t) for s, t in splits.items()}, "returns": returns, "per_task": per_task}
    if "teacher" in policies:
        # a fraction of a non-positive return means nothing, so it is left out (None)
        out["fraction_of_teacher"] = {
            s: {n: (r / row["teacher"] if r is not None and (row.get("teacher") or 0) > 0 else None)
                for n, r in row.items() if n not in ("teacher", "random")}
            for s, row in returns.items()}
    return out


def plot_comparison(result: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Grouped bars: mean return per split (groups) and policy (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    splits = list(result["returns"])
    names = list(dict.fromkeys(n for s in splits for n in result["returns"][s] if n != "random"))
    if any("random" in result["returns"][s] for s in splits):
        names.append("random")  # the baseline goes last
    x = np.arange(len(splits))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(splits) * max(len(names), 1) * 0.5 + 2), 4.2))
    for i, name in enumerate(names):
        vals = [result["returns"][s].get(name) for s in splits]
        bars = ax.bar(x + i * width, [v if v is not None else 0 for v in vals], width, label=name,
                      color="tab:gray" if name == "random" else None)
        for b, v in zip(bars, vals):
            if v is not None:
                ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(x + width * (len(names) - 1) / 2)
    ax.set_xticklabels([f"{s} ({len(result['tasks'][s])} tasks)" for s in splits])
    ax.set_ylabel(f"mean return ({result['episodes']} episodes per task)")
    ax.set_title(title or f"{result['domain']}: policies compared")
    ax.axhline(0, color="black", lw=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    from kdistill.plots import save_figure

    save_figure(fig, path)


@click.command("compare")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--policies", "policies_spec", required=True,
              help="NAME=RUN pairs, comma-separated, e.g. teacher=runs/t,hnmlp=runs/h,mlp=runs/m. "
                   "A policy named 'teacher' is the reference for the fraction column.")
@click.option("--split", "split_spec", default="train,test", show_default=True, help="Comma-separated splits.")
@click.option("--num-tasks", type=click.IntRange(1), default=None, help="Only the first N tasks of each split.")
@click.option("--episodes", type=click.IntRange(1), default=16, show_default=True, help="Episodes per task (one per env).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the episodes' resets.")
@click.option("--stochastic", is_flag=True, help="Sample actions instead of playing the mean action.")
@click.option("--no-random", is_flag=True, help="Skip the random-policy row.")
@click.option("--device", default="cpu", show_default=True, help="Torch device: cpu or cuda.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="Torch CPU threads. More threads are much slower while the envs step on the same cores "
                   "(measured 7-13x slower with 2 on 2 cores): the batches here are small.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Also write compare.json and compare.png into this folder.")
@json_option
@data_dir_option
@tasks_dir_option
def compare_cmd(domain_name: str, policies_spec: str, split_spec: str, num_tasks: int | None, episodes: int, seed: int,
                stochastic: bool, no_random: bool, device: str, threads: int | None, out_dir: str | None, as_json: bool,
                data_dir: str | None, tasks_dir: str | None) -> None:
    """Evaluate several policies of DOMAIN on the same tasks and episodes, in one table.

    Each policy plays the reference protocol (one episode per env, mean action, raw returns; students
    generate their weights once per task). Returns are averaged over episodes, then tasks.

    \b
    Example:
      kdistill compare unimal --policies teacher=runs/t,hnmlp=runs/h,mlp=runs/m --split train,test --out runs/cmp
      kdistill compare unimal --policies teacher=runs/t,hnmlp=runs/h --robots-dir mutants   # the folder only
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from kdistill.commands.teacher import check_device, resolve_tasks, set_torch_threads
    from kdistill.errors import KdistillError
    from kdistill.io import atomic_write_json, prepare_output_dir
    from kdistill.plugins import get_domain
    from kdistill.loading import load_policy

    if episodes <= 0:
        raise KdistillError(f"--episodes must be positive, got {episodes}.")
    paths = parse_policies(policies_spec)
    set_torch_threads(threads)
    domain = get_domain(domain_name, data_dir=data_dir)
    split_names = [s.strip() for s in split_spec.split(",") if s.strip()]
    if tasks_dir is not None and click.get_current_context().get_parameter_source("split_spec").name == "DEFAULT":
        split_names = []  # --robots-dir alone: the folder's tasks only (add --split to compare with splits too)
    elif not split_names:
        raise KdistillError("--split is empty; pass e.g. train,test.")
    splits = {s: resolve_tasks(domain, None, s, num_tasks) for s in split_names}
    if tasks_dir is not None:
        label = Path(tasks_dir).name or "robots-dir"
        if label in splits:
            label = f"{label} (folder)"
        splits[label] = resolve_tasks(domain, None, None, num_tasks, tasks_dir)
        split_names.append(label)
    device = check_device(device)
    policies = {name: load_policy(path, domain=domain.name, device=device, seed=seed) for name, path in paths.items()}
    if out_dir is not None:
        prepare_output_dir(out_dir)  # before the evaluations, so their results cannot be lost to a bad --out
    total = sum(len(t) for t in splits.values()) * len(policies)
    with Progress(TextColumn("[bold]compare[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("task evaluations"),
                  TimeElapsedColumn(), TextColumn("{task.fields[last]}", markup=False), console=err_console,
                  disable=as_json) as progress:
        bar = progress.add_task("compare", total=total, last="")
        result = compare_policies(
            domain, policies, splits, episodes=episodes, seed=seed, deterministic=not stochastic,
            random_baseline=not no_random,
            on_task=lambda split, name, row: progress.update(bar, advance=1, last=f"{split} {name} {row['name']}: {row['mean']:.1f}"))
    result["policies"] = {name: {"path": paths[name], **policies[name].describe()} for name in policies}
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "compare.json", result)
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
        console.print(f"wrote {Path(out_dir) / 'compare.json'} and {Path(out_dir) / 'compare.png'}")
