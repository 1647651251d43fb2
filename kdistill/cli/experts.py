"""``kdistill experts``: train one small MLP expert per task (batched PPO), and export their actors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from kdistill.cli.options import (
    console,
    data_dir_option,
    err_console,
    json_option,
    print_json,
    progress_lines,
    tasks_dir_option,
    tasks_option,
)
from kdistill.errors import KdistillError


@click.group("experts")
def experts_group() -> None:
    """Per-task experts: one small state-only MLP per task, all trained in one process."""


@experts_group.command("train")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl, tasks/*.jsonl, learning_curves.png.")
@click.option("--preset", default=None, help="Config preset: sb3 (Stable-Baselines3's PPO defaults); settled (sb3 with the learning "
              "rate annealed to 0 over the budget, gamma 0.995, no plateau stop); tiny (smoke runs). [default: sb3]")
@tasks_option()
@click.option("--split", default=None, help="Train on a split's tasks: train, test or all. [default: train]")
@tasks_dir_option
@click.option("--num-tasks", type=click.IntRange(1), default=None, help="Only the first N tasks of the selection.")
@click.option("--steps-per-task", type=int, default=None,
              help="Env steps per task at most; with --resume, a larger value than the run's raises its budget and "
                   "the tasks that stopped on the old one train on. [default: 1,500,000]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint (settings are taken from it).")
@click.option("--resume-from", "resume_from", default=None, type=click.Path(file_okay=False),
              help="Seed a new --out folder from a snapshot (`kdistill experts snapshot`) and continue from it.")
@click.option("--seed", type=int, default=None, help="Random seed. [default: 0]")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Env worker processes (0 = step the envs in this process, on threads; use several on many cores). "
                   "With --executor ray: the number of shards, one batched trainer per Ray worker.")
@click.option("--executor", "executor_name", default="local", show_default=True,
              help="local (one process), or ray: the tasks cut into --workers shards, each trained by its own worker "
                   "in OUT/shards/ (docs/scaling.md). A sharded run resumes with either.")
@click.option("--address", default=None, help="With --executor ray: the Ray cluster to join (host:port, or auto).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Torch CPU threads for the updates. [default: up to 2]")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None, help="Updates between checkpoints. [default: 10]")
@click.option("--max-updates", type=int, default=None, help="Stop after this many updates in this call (the run stays resumable).")
@json_option
@data_dir_option
def train_cmd(domain_name: str, out: str, preset: str | None, task_names: str | None, split: str | None,
              num_tasks: int | None, steps_per_task: int | None, resume: bool, resume_from: str | None,
              seed: int | None, workers: int,
              threads: int | None, checkpoint_every: int | None, max_updates: int | None, as_json: bool,
              data_dir: str | None, executor_name: str = "local", address: str | None = None,
              tasks_dir: str | None = None) -> None:
    """Train one expert per task of DOMAIN with PPO, all tasks batched in one process.

    \b
    Example:
      kdistill experts train unimal --split train --out runs/experts
      kdistill experts train unimal --robots-dir mutants --out runs/experts-mutants   # your own task files
      kdistill experts train unimal --out runs/experts --resume       # continue after an interruption
      kdistill experts train unimal --out runs/experts --resume --steps-per-task 3000000   # train longer
      kdistill experts train unimal --out runs/experts --executor ray --workers 8 --address auto   # 8 shards

    Each task has its own normalisers, learned std and evaluation record; a task whose evaluation
    return stops improving stops early. The summary reports the trainer's env steps/s next to the
    raw stepping rate of the same envs with random actions, measured in the same call.

    SIGTERM (a batch scheduler's warning) or Ctrl-C stops a one-process run after its current update
    with a checkpoint, exit code 143 or 130; --resume continues from there. A second Ctrl-C stops at
    once.
    """
    import os

    import torch

    from kdistill.errors import unknown_name
    from kdistill.plugins import get_domain
    from kdistill.procs import StopRequest
    from kdistill.resume import agreeing, run_tasks, saved_run_settings
    from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, random_step_rate, start_or_resume

    run_dir = Path(out)
    from kdistill.rl.experts import is_sharded

    for name, value in (("--workers", workers), ("--threads", threads), ("--checkpoint-every", checkpoint_every),
                        ("--steps-per-task", steps_per_task), ("--max-updates", max_updates)):
        if value is not None and value < (0 if name == "--workers" else 1):
            raise KdistillError(f"{name} must be {'non-negative' if name == '--workers' else 'positive'}, got {value}.")
    if executor_name != "local" or is_sharded(run_dir):
        _train_sharded(domain_name, run_dir, preset, task_names, split, num_tasks, steps_per_task, resume, resume_from,
                       seed, workers, threads, checkpoint_every, max_updates, as_json, data_dir, executor_name, address,
                       tasks_dir)
        return
    if resume and resume_from:
        raise KdistillError("pass either --resume (continue --out) or --resume-from (seed a new --out), not both.")
    saved: dict[str, Any] = {}
    if resume or resume_from:
        saved = saved_run_settings(Path(resume_from) if resume_from else run_dir, domain_name, required=True)
    # every checkpoint restarts the episodes, so the interval is part of what the run computes
    agreeing(saved, [("--checkpoint-every", "checkpoint_every", checkpoint_every)])
    domain = get_domain(domain_name, data_dir=data_dir)
    selection = run_tasks(domain, saved, task_names, split, num_tasks, run_dir, progress=progress_lines(),
                          tasks_dir=tasks_dir)
    tasks = selection.tasks
    preset = preset or saved.get("preset") or "sb3"
    presets = ExpertConfig.presets()
    if preset not in presets:
        raise unknown_name("expert preset", preset, presets)
    settings = ExpertRunSettings(domain=domain.name, tasks=tasks, preset=preset,
                                 seed=seed if seed is not None else saved.get("seed", 0),
                                 steps_per_task=steps_per_task or saved.get("steps_per_task") or 1_500_000,
                                 checkpoint_every=checkpoint_every or saved.get("checkpoint_every", 10),
                                 **selection.settings)
    config = presets[preset]
    n_threads = threads or max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(n_threads)
    raw_rate = random_step_rate(domain, tasks, config.envs_per_task, steps=max(20, 20_000 // max(1, len(tasks))),
                                workers=workers)
    trainer = start_or_resume(domain, settings, config, run_dir, resume, workers=workers, resume_from=resume_from)
    with StopRequest() as stop:
        try:
            summary = _train_with_progress(trainer, run_dir, as_json, max_updates, lambda: stop.requested)
        finally:
            trainer.close()
    summary.update(raw_random_steps_per_s=raw_rate, threads=n_threads, workers=workers, preset=preset,
                   ratio_to_raw=(summary["steps_per_s"] / raw_rate) if raw_rate else None,
                   steps_per_task=settings.steps_per_task, budget_raised_from=trainer.budget_raised_from)
    # a signal that came after the last update (while plotting or closing) does not make a finished run a stop
    stopped = bool(summary["last_update"].get("stopped_on_request")) and stop.signal is not None  # not --max-updates
    if stopped:
        summary["stopped_by"] = stop.signal
    if as_json:
        print_json(summary)
    elif stopped:
        err_console.print(f"stopped by {stop.signal} after update {summary['updates']}, checkpoint "
                          f"{summary['checkpoint']} written; continue with: kdistill experts train {domain_name} "
                          f"--out {run_dir} --resume", markup=False)
    else:
        err_console.print(f"done: {summary['env_steps']:,} env steps over {len(tasks)} tasks "
                          f"({summary['active_tasks']} still training); {summary['steps_per_s']:.0f} env steps/s "
                          f"against {raw_rate:.0f} stepping randomly ({summary['ratio_to_raw']:.2f}); "
                          f"mean best evaluation {summary['mean_best_return']}")
    if stopped:
        raise click.exceptions.Exit(stop.exit_code)


def _train_sharded(domain_name, run_dir: Path, preset, task_names, split, num_tasks, steps_per_task, resume, resume_from,
                   seed, workers, threads, checkpoint_every, max_updates, as_json, data_dir, executor_name, address,
                   tasks_dir=None) -> None:
    """``experts train`` over an executor's workers, one shard of the tasks each (``kdistill.rl.expert_shards``)."""
    from kdistill.cli.options import open_executor
    from kdistill.errors import unknown_name
    from kdistill.plugins import get_domain
    from kdistill.resume import agreeing, run_tasks
    from kdistill.rl.expert_shards import train_sharded
    from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, is_sharded, read_shard_plan

    if resume_from:
        raise KdistillError("--resume-from seeds a one-process run; a sharded run continues with --resume.")
    if executor_name != "local" and workers < 1:
        raise KdistillError(f"--executor {executor_name} needs --workers N (shards, one per worker), got {workers}.")
    saved = read_shard_plan(run_dir)["settings"] if resume and is_sharded(run_dir) else {}
    domain = get_domain(domain_name, data_dir=data_dir)
    selection = run_tasks(domain, saved, task_names, split, num_tasks, run_dir, progress=progress_lines(),
                          tasks_dir=tasks_dir)
    tasks = selection.tasks
    agreeing(saved, [("--seed", "seed", seed),
                     ("--preset", "preset", preset), ("--checkpoint-every", "checkpoint_every", checkpoint_every)])
    preset = preset or saved.get("preset") or "sb3"
    if preset not in ExpertConfig.presets():
        raise unknown_name("expert preset", preset, ExpertConfig.presets())
    settings = ExpertRunSettings(domain=domain.name, tasks=tasks, preset=preset,
                                 seed=seed if seed is not None else saved.get("seed", 0),
                                 steps_per_task=steps_per_task or saved.get("steps_per_task") or 1_500_000,
                                 checkpoint_every=checkpoint_every or saved.get("checkpoint_every", 10),
                                 **selection.settings)
    report = progress_lines(as_json)
    with open_executor(executor_name, workers if executor_name != "local" else 1, address) as executor:
        summary = train_sharded(domain, settings, run_dir, executor, resume=resume, threads=threads or 1,
                                max_updates=max_updates,
                                on_shard=lambda r: report and report(f"shard {r['shard']}: {len(r['tasks'])} tasks, "
                                                                     f"{r['env_steps']:,} env steps", 1, 1))
        summary["executor"] = executor.describe()
    if as_json:
        print_json(summary)
    else:
        err_console.print(f"done: {summary['env_steps']:,} env steps over {len(tasks)} tasks in {summary['shards']} "
                          f"shards ({summary['active_tasks']} still training); mean best evaluation "
                          f"{summary['mean_best_return']}", markup=False)


def write_curves(trainer, run_dir: Path) -> None:
    from kdistill.io import read_jsonl
    from kdistill.plots import task_curves_grid
    from kdistill.rl.experts import task_file

    curves = {}
    for k, task in enumerate(trainer.tasks):
        recs = read_jsonl(run_dir / "tasks" / f"{task_file(task)}.jsonl")
        pts = [(r["env_steps"], r["mean_return"]) for r in recs if r.get("mean_return") is not None]
        curves[task] = {"steps": [p[0] for p in pts], "returns": [p[1] for p in pts],
                        "eval_steps": [e[0] for e in trainer.evals[k]], "eval_returns": [e[1] for e in trainer.evals[k]]}
    task_curves_grid(curves, run_dir / "learning_curves.png",
                     title=f"{len(trainer.tasks)} experts on {trainer.settings.domain}")


def _train_with_progress(trainer, run_dir: Path, quiet: bool, max_updates: int | None,
                         should_stop=None) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from kdistill.io import latest_checkpoint
    from kdistill.rl.experts import stop_after

    budget = trainer.settings.steps_per_task * len(trainer.tasks)
    start_steps, t_start = int(trainer.env_steps.sum()), time.perf_counter()
    with Progress(TextColumn("[bold]experts[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("env steps"),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=err_console, disable=quiet) as progress:
        bar = progress.add_task("train", total=budget, completed=start_steps, status="")

        def on_update(m: dict[str, Any]) -> None:
            best = "-" if m["mean_best_return"] is None else f"{m['mean_best_return']:.0f}"
            progress.update(bar, completed=m["env_steps"],
                            status=f"{m['steps_per_s']:.0f} steps/s  {m['active_tasks']} training  best eval {best}")
            if m.get("checkpoint"):
                write_curves(trainer, run_dir)

        last = trainer.train(on_update=on_update, should_stop=stop_after(max_updates, should_stop))
    wall = time.perf_counter() - t_start
    done = int(trainer.env_steps.sum()) - start_steps
    ckpt = latest_checkpoint(run_dir)
    write_curves(trainer, run_dir)
    table = trainer.task_table()
    return {
        "run": str(run_dir), "checkpoint": str(ckpt) if ckpt else None, "env_steps": int(trainer.env_steps.sum()),
        "updates": trainer.updates, "wall_s": wall, "run_wall_s": trainer.wall_s,
        "steps_per_s": done / wall if wall > 0 and done else 0.0,
        "active_tasks": int(trainer.active.sum()), "mean_best_return": trainer.mean_best_return(),
        "last_update": last, "learning_curves": str(run_dir / "learning_curves.png"), "tasks": table,
    }


@experts_group.command("export")
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for the experts' actors and normalisers (safetensors + meta.json).")
@json_option
def export_cmd(runs: tuple[str, ...], out: str, as_json: bool) -> None:
    """Write each task's best actor and its normaliser from expert RUN: a loadable policy of kind 'experts'.

    Several runs (or exported sets) are merged into one set, their tasks in the order given; they must share
    the domain and the actor's shape, and no task may have two experts.

    \b
    Example:
      kdistill experts export runs/experts --out domains/unimal/pretrained/experts-flat
      kdistill eval unimal --policy domains/unimal/pretrained/experts-flat --split train
      kdistill experts export domains/unimal/pretrained/experts-flat runs/experts-mutants --out runs/experts-all
    """
    from kdistill.rl.experts import export_experts

    summary = export_experts(runs, out)
    if as_json:
        print_json(summary)
    else:
        console.print(f"wrote {summary['tasks']} experts ({summary['env_steps']:,} env steps of training, mean best "
                      f"evaluation {summary['mean_best_return']:.1f}) to {summary['out']}", markup=False)


@experts_group.command("snapshot")
@click.argument("run", type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the snapshot.")
@json_option
def snapshot_cmd(run: str, out: str, as_json: bool) -> None:
    """Copy expert RUN's newest checkpoint without Adam's moments (about half the size), with its logs.

    \b
    Continue it elsewhere (Adam's moments restart; everything else is exact):
      kdistill experts snapshot runs/experts --out domains/unimal/pretrained/experts-flat-run
      kdistill experts train unimal --out runs/experts --resume-from domains/unimal/pretrained/experts-flat-run
    """
    from kdistill.rl.experts import snapshot_run

    summary = snapshot_run(run, out)
    if as_json:
        print_json(summary)
    else:
        console.print(f"snapshot of update {summary['updates']} ({summary['env_steps']:,} env steps), "
                      f"{summary['bytes'] / 1e6:.1f} MB, in {summary['out']}", markup=False)


@experts_group.command("curves")
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="Also draw the curves into this PNG file.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@json_option
def curves_cmd(runs: tuple[str, ...], out: str | None, overwrite: bool, as_json: bool) -> None:
    """Compare expert RUNS (run folders or exported experts, each RUN or NAME=RUN) on the tasks they share: the mean
    evaluation over those tasks against env steps per task, best so far and latest.

    Reads only JSON, so it is safe while the runs train.

    \b
    Example:
      kdistill experts curves sb3=runs/experts settled=runs/experts-settled --out curves.png
      kdistill experts curves runs/experts-a runs/experts-b --json
    """
    from rich.table import Table

    from kdistill.io import check_new_file
    from kdistill.plots import expert_eval_curves
    from kdistill.rl.experts import eval_curves

    if out is not None:
        check_new_file(out, (".png",), "plot", overwrite=overwrite)
    named: dict[str, str] = {}
    for item in runs:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (Path(item).name or item, item)
        if not name or not path or name in named:
            raise KdistillError(f"{item!r}: give each run as RUN or NAME=RUN, with names that differ.")
        named[name] = path
    curves = eval_curves(named)
    if out is not None:
        expert_eval_curves(curves, out)
        curves["plot"] = out
    if as_json:
        print_json(curves)
        return
    step = curves["common_step"]
    table = Table(title=f"{len(named)} expert runs on {curves['tasks']} shared tasks"
                        + (f" (compared at {step:,} env steps per task)" if step else ""))
    for col in ("run", "preset", "steps reached", "mean latest", "mean best", "latest at shared step",
                "best at shared step"):
        table.add_column(col, justify="left" if col in ("run", "preset") else "right")
    for name, c in curves["runs"].items():
        at = c["at_common_step"] or {}
        cells = [f"{c['steps'][-1]:,}" if c["steps"] else "-",
                 f"{c['mean_eval'][-1]:.0f}" if c["mean_eval"] else "-",
                 f"{c['mean_best'][-1]:.0f}" if c["mean_best"] else "-",
                 f"{at['mean_eval']:.0f}" if at else "-", f"{at['mean_best']:.0f}" if at else "-"]
        table.add_row(name, str(c["preset"] or "-"), *cells)
    console.print(table)
    if out is not None:
        console.print(f"plot: {out}", markup=False)


@experts_group.command("status")
@click.argument("run", type=click.Path())
@json_option
def status_cmd(run: str, as_json: bool) -> None:
    """Per-task progress of expert RUN (or exported experts): env steps, best evaluation, status, and the env
    steps left with the time they take at the run's recent rate.

    Reads only JSON (the newest complete checkpoint's meta.json and metrics.jsonl), so it is safe while the run
    trains.

    \b
    Example:
      kdistill experts status runs/experts
      kdistill experts status domains/unimal/pretrained/experts-flat --json
    """
    from rich.table import Table

    from kdistill.rl.experts import expert_run_status

    summary = expert_run_status(run)
    tasks, lr = summary.pop("per_task"), summary["learning_rate"]
    if as_json:
        print_json({**summary, "per_task": [{k: v for k, v in t.items() if k not in ("evals", "recent_returns")}
                                            for t in tasks]})
        return
    preset = f"preset {summary['preset']}, " if summary["preset"] else ""
    lr_text = f", learning rate {lr:.3g}" if lr is not None else ""
    table = Table(title=f"{summary['tasks']} experts ({preset}{summary['env_steps']:,} env steps, "
                        f"{summary['training']} still training{lr_text})")
    for col in ("task", "env steps", "best eval", "at step", "last eval", "status"):
        table.add_column(col, justify="left" if col in ("task", "status") else "right")
    for t in tasks:
        last = t["evals"][-1][1] if t.get("evals") else None
        status = "training" if t["active"] else f"stopped ({t.get('stop_reason')})"
        table.add_row(t["name"], f"{t['env_steps']:,}", "-" if t["best_return"] is None else f"{t['best_return']:.0f}",
                      f"{t['best_step']:,}", "-" if last is None else f"{last:.0f}", status)
    console.print(table)
    mb = summary["mean_best_return"]
    console.print(f"mean best evaluation {'-' if mb is None else f'{mb:.1f}'}; "
                  f"{summary['tasks_at_least_1000']} tasks at 1,000 or more", markup=False)
    if summary["remaining_env_steps"]:
        rate, eta = summary["steps_per_s"], summary["eta_s"]
        pace = "" if rate is None else f" at {rate:,.0f} env steps/s"
        early = " (less if tasks stop early)" if summary["stops_early"] else ""
        left = "" if eta is None else f", about {eta / 3600:.1f} h{early}"
        console.print(f"{summary['remaining_env_steps']:,} env steps left{pace}{left}", markup=False)
