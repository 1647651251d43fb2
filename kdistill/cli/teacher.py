"""``kdistill teacher train``: PPO for a domain's teacher, with checkpoints, resume and a learning curve."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from kdistill.cli.options import (
    AliasOption,
    data_dir_option,
    err_console,
    json_option,
    print_json,
    progress_lines,
    tasks_dir_option,
    tasks_option,
)
from kdistill.errors import KdistillError


@click.group("teacher")
def teacher_group() -> None:
    """Train teachers: transformers that read the whole state, context included."""


@teacher_group.command("train")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl, learning_curve.png.")
@click.option("--preset", default=None, help="Config preset for PPO and the teacher: cpu (2 cores) or paper. [default: cpu]")
@click.option("--teacher-preset", default=None,
              help="Teacher config preset when it differs from --preset. [default: --preset if the teacher has it, else 'default']")
@click.option("--arch", "--teacher", "teacher", cls=AliasOption, default=None,
              help="Teacher architecture (e.g. metamorph, modumorph). [default: the domain's]")
@tasks_option("Comma-separated tasks to train on (instead of --split).")
@click.option("--split", default=None, help="Train on a split's tasks: train, test or all. [default: train]")
@tasks_dir_option
@click.option("--num-tasks", type=click.IntRange(1), default=None, help="Only the first N tasks of the selection.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Total env steps of the run (required for a new run).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint (settings are taken from it).")
@click.option("--init", "init", default=None, type=click.Path(exists=True, file_okay=False),
              help="Start from this teacher's weights and observation statistics (a distilled transformer or a "
                   "PPO run, same --arch and --teacher-preset) instead of fresh weights. A teacher made on a "
                   "task without exteroception (flat ground) may start one with it (terrain): it first acts as before.")
@click.option("--critic-warmup", type=click.IntRange(0), default=None,
              help="First iterations in which only the critic learns, the actor kept as it is: for an --init actor "
                   "whose critic was never trained. [default: 0]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate instead of the PPO preset's (e.g. smaller for an --init actor). [default: the preset's]")
@click.option("--action-std", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The fixed action std PPO samples with instead of the teacher preset's (e.g. the noise an --init "
                   "actor tolerates: a distilled one never acted under the presets' 0.9). [default: the preset's]")
@click.option("--kickstart", default=None, type=click.Path(exists=True, file_okay=False),
              help="Per-task experts (kdistill experts export), or one teacher of the domain, whose actions on the "
                   "states the actor visits pull it towards them during PPO, beside the return (kickstarting; e.g. "
                   "with --init of a transformer distilled from them, so that PPO keeps what they taught, or to "
                   "train another architecture from a trained teacher).")
@click.option("--kickstart-coef", type=click.FloatRange(min=0), default=None,
              help="Weight of KL(labeller || actor) in the loss, with --kickstart. [default: 0.1]")
@click.option("--kickstart-decay", type=click.IntRange(min=0), default=None, metavar="STEPS",
              help="With --kickstart: the weight falls linearly to 0 over this many env steps of the run, so the "
                   "return takes over (0 = constant). [default: 0]")
@click.option("--freeze-obs-norm", is_flag=True, default=None,
              help="Keep the observation statistics the run starts with (an --init teacher's) instead of updating them.")
@click.option("--seed", type=int, default=None, help="Random seed. [default: 0]")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the model: cpu or cuda.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Local executor: env worker processes (0 = step envs in this process; use several on many-core "
                   "machines). --executor ray: rollout workers, each stepping its share of the envs with a CPU copy "
                   "of the policy.")
@click.option("--executor", "executor_name", default="local", show_default=True,
              help="Where the rollouts run: local (this process and its env workers), or on rollout workers of "
                   "processes (this machine) or ray (kdistill[ray]).")
@click.option("--address", default=None, help="With --executor ray: the Ray cluster to join (host:port, or auto).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch CPU threads. [default: 1 on machines of up to 4 cores, else cores minus workers, at most 8]")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None,
              help="Iterations between checkpoints. Every checkpoint restarts the episodes, so keep this times the PPO "
                   "preset's steps per env (num_steps) well above the episode length, or the late part of an episode "
                   "is never trained on. [default: 10]")
@click.option("--eval-every", type=click.IntRange(1), default=None,
              help="Every N iterations, measure the deterministic actor on the run's tasks (fresh envs, seeds apart "
                   "from eval's and compare's) and keep the best so far in OUT/best, a teacher folder for eval, "
                   "compare and collect. Training is unchanged by it; may change on --resume. [default: off]")
@click.option("--eval-episodes", type=click.IntRange(1), default=1, show_default=True,
              help="Episodes per task of each --eval-every measurement.")
@click.option("--new-split", is_flag=True,
              help="On --resume, accept another --executor/--workers than the run used (e.g. to move it to a larger "
                   "machine): the envs are then split and seeded anew, so the run goes on validly but not bit for bit "
                   "as it would have.")
@json_option
@data_dir_option
def train_cmd(domain_name: str, out: str, preset: str | None, teacher_preset: str | None, teacher: str | None, task_names: str | None,
              split: str | None, num_tasks: int | None, steps: int | None, resume: bool, init: str | None,
              critic_warmup: int | None, lr: float | None, action_std: float | None,
              kickstart: str | None, kickstart_coef: float | None,
              kickstart_decay: int | None, freeze_obs_norm: bool | None, seed: int | None,
              device: str, workers: int, executor_name: str, address: str | None, threads: int | None,
              checkpoint_every: int | None, eval_every: int | None, eval_episodes: int, new_split: bool, as_json: bool,
              data_dir: str | None, tasks_dir: str | None = None) -> None:
    """Train a teacher for DOMAIN with PPO.

    \b
    Example:
      kdistill teacher train unimal --preset cpu --split train --num-tasks 10 --steps 5000000 --out runs/t1
      kdistill teacher train unimal --out runs/t1 --resume          # continue after an interruption
      kdistill teacher train unimal --split train --steps 5000000 --out runs/t2 --executor ray --workers 8
      kdistill teacher train unimal --split train --steps 5000000 --out runs/t3 \\
          --init domains/unimal/pretrained/teacher-universal --critic-warmup 20 --lr 3e-5 --freeze-obs-norm
      kdistill teacher train unimal --out runs/t3 --resume --eval-every 50 --eval-episodes 2   # keep runs/t3/best

    A checkpoint is written every --checkpoint-every iterations and at the end; an interruption loses at
    most the work since the last one; SIGTERM or a first Ctrl-C instead stops after the current
    iteration with a checkpoint (exit code 143 or 130). --steps on --resume may raise the total (the learning-rate
    schedule then stretches to the new end). --address, --threads and --eval-every may change on --resume; --executor and
    --workers only with --new-split, since they decide how the envs are seeded.
    """
    from kdistill.cli.options import open_executor
    from kdistill.devices import check_device, set_torch_threads
    from kdistill.io import claim_folder, looks_like_run
    from kdistill.plugins import get_domain
    from kdistill.procs import StopRequest
    from kdistill.resume import agreeing, run_tasks, saved_run_settings
    from kdistill.rl.ppo import PPOConfig
    from kdistill.rl.trainer import EvalSchedule, RunSettings, start_or_resume
    from kdistill.teachers.lookup import find_teacher_spec
    from kdistill.teachers.lookup import teacher_preset as default_teacher_preset

    run_dir = Path(out)
    saved = saved_run_settings(run_dir, domain_name, required=False) if resume else {}
    domain = get_domain(domain_name, data_dir=data_dir)
    selection = run_tasks(domain, saved, task_names, split, num_tasks, run_dir, progress=progress_lines(),
                          tasks_dir=tasks_dir)
    tasks = selection.tasks
    preset = preset or saved.get("preset") or "cpu"
    teacher_name, spec = find_teacher_spec(domain, teacher or saved.get("teacher"))
    steps = steps if steps is not None else saved.get("total_steps")
    if steps is None or steps <= 0:
        raise KdistillError("--steps N (total env steps, positive) is required for a new run.")
    from kdistill.errors import unknown_name

    presets, ppo_presets = spec.config_cls.presets(), PPOConfig.presets()
    if preset not in ppo_presets:
        raise unknown_name("PPO preset", preset, ppo_presets)
    teacher_preset = teacher_preset or saved.get("teacher_preset") or default_teacher_preset(spec, preset)
    if teacher_preset not in presets:
        raise unknown_name(f"{teacher_name} preset", teacher_preset, presets)
    _refuse_other_start(saved, run_dir, init, lr, action_std)
    # every checkpoint restarts the episodes, so the interval is part of what the run computes
    remote = executor_name != "local"
    # rollout workers seed every env slot alike, however many there are; the learner's own env processes split the
    # seeds between them
    rollout = "rollout-workers" if remote else f"env-processes:{workers}"
    if saved.get("rollout") and rollout != saved["rollout"] and not new_split:
        raise KdistillError(f"the run's envs ran as {saved['rollout']}, not {rollout} (--executor, --workers); pass "
                            f"the run's own to continue it exactly, or add --new-split to continue it this way "
                            f"(valid, not bit for bit).")
    agreeing(saved, [("--checkpoint-every", "checkpoint_every", checkpoint_every),
                     ("--critic-warmup", "critic_warmup", critic_warmup, 0),
                     ("--kickstart", "kickstart", kickstart, ""),
                     ("--kickstart-coef", "kickstart_coef", kickstart_coef, 0.0),
                     ("--kickstart-decay", "kickstart_decay", kickstart_decay, 0),
                     ("--freeze-obs-norm", "freeze_obs_norm", freeze_obs_norm, False)])
    kickstart = kickstart if kickstart is not None else saved.get("kickstart", "")
    if kickstart_coef is not None and not kickstart:
        raise KdistillError("--kickstart-coef weighs the pull towards --kickstart experts; pass --kickstart too.")
    if kickstart_decay and not kickstart:
        raise KdistillError("--kickstart-decay schedules the pull towards --kickstart experts; pass --kickstart too.")
    settings = RunSettings(domain=domain.name, tasks=tasks, teacher=teacher_name, preset=preset, teacher_preset=teacher_preset,
                           seed=seed if seed is not None else saved.get("seed", 0), total_steps=steps,
                           checkpoint_every=checkpoint_every or saved.get("checkpoint_every", 10),
                           init=init or saved.get("init", ""),
                           critic_warmup=critic_warmup if critic_warmup is not None else saved.get("critic_warmup", 0),
                           lr=lr if lr is not None else saved.get("lr"),
                           action_std=action_std if action_std is not None else saved.get("action_std"),
                           kickstart=kickstart,
                           kickstart_coef=(kickstart_coef if kickstart_coef is not None
                                           else saved.get("kickstart_coef", 0.1 if kickstart else 0.0)),
                           kickstart_decay=kickstart_decay if kickstart_decay is not None else saved.get("kickstart_decay", 0),
                           freeze_obs_norm=bool(freeze_obs_norm or saved.get("freeze_obs_norm", False)),
                           rollout=rollout, **selection.settings)
    check_device(device)
    if remote and workers < 1:
        raise KdistillError(f"--executor {executor_name} needs --workers N (rollout workers), got {workers}.")
    # the local executor's --workers are env processes of the learner's own rollout, not executor workers
    with open_executor(executor_name, workers if remote else 1, address) as executor:
        # the folder is marked only once the run could start: a refused --init leaves nothing behind
        claim_folder(run_dir, "teacher-run", legacy=looks_like_run("teacher"), check_only=True)
        n_threads = set_torch_threads(threads, workers)
        trainer = start_or_resume(domain, settings, spec, settings.teacher_config(presets), settings.ppo_config(ppo_presets), run_dir, resume,
                                  device=device, workers=0 if remote else workers, executor=executor if remote else None,
                                  evaluation=EvalSchedule(eval_every, eval_episodes) if eval_every else None)
        try:
            claim_folder(run_dir, "teacher-run", legacy=looks_like_run("teacher"))
        except BaseException:
            trainer.close()
            raise
        with StopRequest() as stop:
            try:
                summary = _train_with_progress(trainer, run_dir, as_json, lambda: stop.requested)
            finally:
                trainer.close()
        if remote:
            summary["executor"] = executor.describe()
    summary.update(threads=n_threads, workers=workers, device=device, preset=preset, teacher=teacher_name, tasks=len(tasks))
    # a signal that came after the last iteration (while plotting or closing) does not make a finished run a stop
    stopped = summary.pop("stopped_on_request")
    if stopped:
        summary["stopped_by"] = stop.signal
    if as_json:
        print_json(summary)
    elif stopped:
        err_console.print(f"stopped by {stop.signal} after iteration {summary['iterations']}, checkpoint "
                          f"{summary['checkpoint']} written; continue with: kdistill teacher train {domain_name} "
                          f"--out {run_dir} --resume", markup=False)
    else:
        unstable = summary["unstable_episodes"]
        if unstable:
            worst = ", ".join(f"{t} ({n})" for t, n in sorted(unstable.items(), key=lambda kv: -kv[1])[:5])
            err_console.print(f"{sum(unstable.values())} episode(s) ended because the simulation went unstable: {worst}; "
                              f"check these tasks with `kdistill env check {domain.name} --tasks NAMES`.")
        err_console.print(f"done: {summary['env_steps']:,} env steps, mean return {summary['mean_return']} "
                          f"(over tasks {summary['task_mean_return']}), "
                          f"{summary['steps_per_s']:.0f} env steps/s; checkpoint {summary['checkpoint']}")
    if stopped:
        raise click.exceptions.Exit(stop.exit_code)


def _refuse_other_start(saved: dict, run_dir: Path, init: str | None, lr: float | None, action_std: float | None) -> None:
    """On --resume, refuse a start (--init, --lr, --action-std) other than the run's own."""
    if init and saved and saved.get("init", "") != init:
        raise KdistillError(f"--init {init}: the run in {run_dir} started from "
                            f"{saved.get('init') or 'fresh weights'}; resume it without --init.")
    if action_std is not None and saved and saved.get("action_std") != action_std:
        started = f"an action std of {saved['action_std']}" if saved.get("action_std") else "its teacher preset's action std"
        raise KdistillError(f"--action-std {action_std}: the run in {run_dir} was started with {started}; resume it "
                            f"without --action-std.")
    if lr is not None and saved and saved.get("lr") != lr:
        started = f"a learning rate of {saved['lr']}" if saved.get("lr") else "its preset's learning rate"
        raise KdistillError(f"--lr {lr}: the run in {run_dir} was started with {started}; resume it without --lr.")


def _train_with_progress(trainer, run_dir: Path, quiet: bool, should_stop=None) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from kdistill.io import latest_checkpoint, read_jsonl
    from kdistill.plots import learning_curve

    total = trainer.max_iterations * trainer.config.batch_size
    start_steps, t_start = trainer.env_steps, time.perf_counter()
    timings: list[tuple[float, float]] = []

    def plot() -> None:
        learning_curve(read_jsonl(run_dir / "metrics.jsonl"), run_dir / "learning_curve.png",
                       title=f"{trainer.settings.teacher} on {trainer.settings.domain} ({len(trainer.settings.tasks)} tasks)")

    with Progress(TextColumn("[bold]PPO[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("env steps"),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}", markup=False),
                  console=err_console, disable=quiet, transient=False) as progress:
        bar = progress.add_task("train", total=total, completed=trainer.env_steps, status="")

        def on_iteration(m: dict[str, Any]) -> None:
            timings.append((m["rollout_s"], m["update_s"]))
            ret = "-" if m["mean_return"] is None else f"{m['mean_return']:.1f}"
            per_task = "-" if m.get("task_mean_return") is None else f"{m['task_mean_return']:.1f}"
            best = trainer.best_eval
            progress.update(bar, completed=m["env_steps"],
                            status=f"{m['steps_per_s']:.0f} steps/s  return {ret}  over tasks {per_task}  "
                                   f"kl {m.get('approx_kl', 0):.4f}" + (f"  best eval {best['return']:.1f}" if best else ""))
            if m.get("checkpoint"):
                plot()

        last = trainer.train(on_iteration=on_iteration, should_stop=should_stop)
    if (run_dir / "metrics.jsonl").exists():
        plot()
    wall = time.perf_counter() - t_start
    done = trainer.env_steps - start_steps
    ckpt = latest_checkpoint(run_dir)
    return {
        "run": str(run_dir), "checkpoint": str(ckpt) if ckpt else None, "env_steps": trainer.env_steps,
        "iterations": trainer.iteration, "wall_s": wall, "steps_per_s": done / wall if wall > 0 and done else 0.0,
        "mean_return": last.get("mean_return") if last else None,
        "task_mean_return": last.get("task_mean_return") if last else None,
        "rollout_s_mean": sum(t[0] for t in timings) / len(timings) if timings else None,
        "update_s_mean": sum(t[1] for t in timings) / len(timings) if timings else None,
        "learning_curve": str(run_dir / "learning_curve.png"),
        "best": ({**trainer.best_eval, "folder": str(run_dir / "best")} if trainer.best_eval else None),
        "unstable_episodes": dict(getattr(trainer, "unstable", {})),
        "stopped_on_request": bool(last.get("stopped_on_request")),
    }


@teacher_group.command("status")
@click.argument("run", type=click.Path())
@json_option
def status_cmd(run: str, as_json: bool) -> None:
    """Where teacher run RUN stands: env steps, rate and time left, latest returns, and per task its
    episodes, mean episode length, sampling probability and recent training return.

    Reads only the newest complete checkpoint's meta.json and metrics.jsonl, so it is safe while the run
    trains. Training returns are under the PPO action noise; `kdistill eval` measures the mean action.

    \b
    Example:
      kdistill teacher status runs/t1
      kdistill teacher status runs/t1 --json | jq '.per_task | sort_by(.recent_return) | .[:5]'   # weakest tasks
    """
    from rich.table import Table

    from kdistill.cli.options import console
    from kdistill.rl.trainer import run_status

    if not Path(run).exists():
        raise KdistillError(f"{run} does not exist; pass the --out folder of a `kdistill teacher train` run.")
    s = run_status(run)
    if as_json:
        print_json(s)
        return

    def num(x, fmt=",.0f"):
        return "-" if x is None else format(x, fmt)

    table = Table(title=f"{s['teacher']} on {s['domain']}, {s['tasks']} tasks: checkpoint {s['checkpoint']}")
    for col in ("task", "episodes", "mean length", "sampled", "recent return"):
        table.add_column(col, justify="left" if col == "task" else "right", overflow="fold")
    for t in s["per_task"]:
        table.add_row(t["task"], num(t["episodes"]), num(t["mean_length"]),
                      "-" if t["sampling_prob"] is None else f"{100 * t['sampling_prob']:.1f}%",
                      "-" if t["recent_return"] is None else f"{t['recent_return']:,.0f} ({t['recent_episodes']})")
    console.print(table)
    fraction = s["logged_env_steps"] / s["total_steps"] if s["total_steps"] else 0.0
    eta = "done" if s["done"] else ("-" if s["eta_s"] is None else f"{s['eta_s'] / 3600:.1f} h left")
    console.print(f"{s['logged_env_steps']:,} of {s['total_steps']:,} env steps ({100 * fraction:.1f}%), "
                  f"{num(s['steps_per_s'])} env steps/s, {eta}; lr {num(s['lr'], '.2e')}", markup=False)
    console.print(f"training return: last 100 episodes {num(s['mean_return'], ',.1f')}, over tasks "
                  f"{num(s['task_mean_return'], ',.1f')} ({s['tasks_with_episodes']} of {s['tasks']} tasks with "
                  f"episodes)", markup=False)
    if s["best"]:
        b = s["best"]
        console.print(f"deterministic evaluation ({b['episodes']} episode(s) per task): last {num(s['last_eval_return'], ',.1f')}, "
                      f"best {b['return']:,.1f} at {b['env_steps']:,} env steps, kept in {b['folder']}", markup=False)
