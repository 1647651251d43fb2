"""``kdistill distill``: fit a student (HN-MLP or plain MLP) to expert data."""

from __future__ import annotations

import click

from kdistill.cli.options import (
    console,
    data_dir_option,
    err_console,
    executor_options,
    json_option,
    open_executor,
    print_json,
    progress_bars,
    tasks_dir_option,
)


@click.command("distill")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False),
              help="Expert data folder written by `kdistill expert collect`.")
@click.option("--student", default="hnmlp", show_default=True,
              help="Student architecture: hnmlp or mlp (or a plugin's), or a teacher architecture such as metamorph "
                   "or modumorph (the result is then an ordinary teacher).")
@click.option("--student-preset", default=None,
              help="Student config preset (hnmlp: paper, paper-dropout, small; mlp: paper, small; a teacher "
                   "architecture: its presets, e.g. cpu or paper). [default: paper; cpu for a teacher architecture]")
@click.option("--dagger", "dagger_rounds", type=click.IntRange(1), default=None,
              help="After distilling, this many DAgger rounds: the student acts, --teacher labels, retrain on all data.")
@click.option("--teacher", "teacher_path", default=None, type=click.Path(),
              help="With --dagger: the teacher that labels (a teacher run, or per-task experts).")
@click.option("--dagger-beta", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --dagger: round r plays the teacher's action with probability beta**r, else the student's.")
@click.option("--dagger-samples", type=click.IntRange(1), default=4000, show_default=True,
              help="With --dagger: new rows per task per round.")
@click.option("--dagger-epochs", type=click.IntRange(1), default=10, show_default=True,
              help="With --dagger: epochs of retraining per round (from the previous round's weights).")
@click.option("--round-0", "round_0", default=None, type=click.Path(file_okay=False),
              help="With --dagger: a finished `kdistill distill` run of the same --data and settings, copied in as "
                   "round 0 instead of distilling again.")
@click.option("--preset", default="paper", show_default=True, help="Distillation preset: paper, paper-long or demo.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Epochs over the training rows. [default: the preset's, 50]")
@click.option("--batch", "batch_size", type=click.IntRange(1), default=None, help="Rows per step. [default: 5120]")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="Adam learning rate. [default: 1e-3]")
@click.option("--loss", default=None, help="Loss: mse (balanced mean-action KL) or logp. [default: mse]")
@click.option("--val-tasks", type=click.IntRange(0), default=None,
              help="Tasks held out for the validation loss. [default: 0]")
@click.option("--samples-per-task", type=click.IntRange(1), default=None,
              help="Use only the first N rows of each task. [default: all]")
@click.option("--seed", type=int, default=None, help="Seed of the initialisation, shuffling and dropout. [default: 0]")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None, help="Epochs between checkpoints. [default: 5]")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl, loss_curve.png.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its newest checkpoint, with the run's own settings "
                   "(--epochs and --checkpoint-every may be changed; other options must match the run).")
@click.option("--device", default="cpu", show_default=True, help="Torch device: cpu or cuda.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch CPU threads. [default: 1 on machines of up to 4 cores, else the cores, at most 8]")
@executor_options
@json_option
@data_dir_option
@tasks_dir_option
def distill_cmd(domain_name: str, data_path: str, student: str, student_preset: str, preset: str, epochs: int | None,
                batch_size: int | None, lr: float | None, loss: str | None, val_tasks: int | None,
                samples_per_task: int | None, seed: int | None, checkpoint_every: int | None, out: str, resume: bool,
                device: str, threads: int | None, as_json: bool, dagger_rounds: int | None = None,
                teacher_path: str | None = None, dagger_beta: float = 0.5, dagger_samples: int = 4000,
                dagger_epochs: int = 10, data_dir: str | None = None, tasks_dir: str | None = None,
                executor_name: str = "local", workers: int = 1, address: str | None = None,
                round_0: str | None = None) -> None:
    """Distill DOMAIN's expert data into a student that reads the state only.

    The reference recipe: Adam (lr 1e-3, eps 1e-5), gradient clipping 0.5, shuffled batches of 5120
    rows, balanced mean-action MSE. The HN-MLP generates its weights once per task present in a batch.
    A checkpoint is written every --checkpoint-every epochs; --resume continues exactly where it stopped
    (--epochs may be raised).

    \b
    Example:
      kdistill distill unimal --data data/expert --student hnmlp --out runs/hnmlp
      kdistill distill unimal --data data/expert --student mlp --out runs/mlp --val-tasks 10
      kdistill distill unimal --data data/experts --student metamorph --student-preset cpu --out runs/tf
      kdistill distill unimal --data data/experts --student metamorph --student-preset cpu --out runs/tf-dagger \\
          --dagger 3 --teacher domains/unimal/pretrained/experts-flat
      kdistill distill unimal --data data/experts --out runs/hnmlp-dagger --dagger 2 \\
          --teacher domains/unimal/pretrained/experts-flat --round-0 runs/hnmlp   # reuse a finished run
      torchrun --nproc-per-node 2 -m kdistill distill unimal --data data/expert --out runs/hnmlp   # data-parallel

    Under torchrun each process fits its slice of every batch and the gradients are summed (torch.distributed:
    gloo on CPUs, NCCL with --device cuda, one GPU per process): the same model as one process, up to float
    rounding. Rank 0 writes the run folder and prints the result.
    """
    import attrs
    from click.core import ParameterSource

    from kdistill.devices import set_torch_threads
    from kdistill.distill.training import DistillConfig
    from kdistill.errors import KdistillError, unknown_name

    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)

    presets = DistillConfig.presets()
    if preset not in presets:
        raise unknown_name("distillation preset", preset, presets)
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss, "val_tasks": val_tasks,
                 "samples_per_task": samples_per_task, "seed": seed, "checkpoint_every": checkpoint_every}
    base = presets[preset]
    # a DAgger run resumes by itself, from the settings pinned in its dagger.json (its newest checkpoint is a round's,
    # trained with --dagger-epochs)
    saved = _saved_run(out) if resume and dagger_rounds is None else None
    student_config = None
    if saved is not None:
        # --resume continues the run as it was started: its settings, unless an option is given explicitly
        try:
            base = base if given("preset") else DistillConfig(**saved["distill"])
        except (TypeError, ValueError) as exc:
            raise KdistillError(f"{out}: the newest checkpoint's distillation settings are unreadable ({exc}); "
                                f"start a new --out folder.") from None
        if not given("student"):
            student = saved["arch"]
        if not given("student_preset"):
            student_config = saved["config"]
    try:
        config = attrs.evolve(base, **{k: v for k, v in overrides.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise KdistillError(f"invalid distillation setting: {exc}.") from None
    set_torch_threads(threads)
    from kdistill.distill.students import make_config, student_class
    from kdistill.teachers.lookup import teacher_spec_for

    if teacher_spec_for(student) is None:
        cls = student_class(student)
        if hasattr(cls, "Config") and student_config is None:
            student_config = make_config(cls.Config, None, student_preset or "paper")
    if dagger_rounds is not None:
        result = _run_dagger(domain_name, data_path, student, student_config, student_preset, config, out, device,
                             teacher_path, dagger_rounds, dagger_beta, dagger_samples, dagger_epochs, seed, as_json,
                             data_dir, tasks_dir, (executor_name, workers, address), threads or 1, round_0)
        if as_json:
            print_json(result)
        else:
            for row in result["rounds"]:
                console.print(f"round {row['round']}: {row['train_rows']:,} rows, train loss {row['train_loss']:.5f}",
                              markup=False)
            err_console.print(f"run folder: {out} (loads as the last round's student)", markup=False)
        return
    if round_0 is not None:
        raise KdistillError("--round-0 is used with --dagger only: it stands in for the DAgger run's first distillation.")
    _check_dagger_only(teacher_path, given)
    result = _run_distill(data_path, student, student_config, config, out, resume, domain_name, device, as_json,
                          student_preset)
    if result is not None:  # None: a data-parallel rank other than 0, which reports for all
        _print_result(result, student, out, as_json)


def _check_dagger_only(teacher_path, given) -> None:
    from kdistill.errors import KdistillError

    if teacher_path is not None:
        raise KdistillError("--teacher is used with --dagger only; the data folder already names its teacher.")
    if any(given(name) for name in ("executor_name", "workers", "address")):
        raise KdistillError("--executor, --workers and --address place DAgger's rollouts; they are used with --dagger "
                            "only (the distillation itself runs here, or under torchrun).")


def _print_result(result: dict, student: str, out: str, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    val = f", validation loss {result['val_loss']:.5f} on {len(result['val_tasks'])} held-out tasks" if result["val_loss"] is not None else ""
    train_loss = "-" if result["train_loss"] is None else f"{result['train_loss']:.5f}"
    console.print(f"done: {student} student, {result['epochs']} epochs, {result['steps']:,} steps, "
                  f"train loss {train_loss}{val}")
    err_console.print(f"run folder: {out} (loss_curve.png, metrics.jsonl)")


def _run_distill(data_path, student, student_config, config, out, resume, domain_name, device, as_json,
                 student_preset) -> dict | None:
    """One distillation, as one process or as this process's rank under torchrun (None on ranks other than 0)."""
    from kdistill.devices import check_device
    from kdistill.distill.expert_data import read_expert_meta
    from kdistill.distill.training import distill
    from kdistill.distributed import close_data_parallel, data_parallel_from_env, rank_device

    read_expert_meta(data_path)  # a missing or damaged data folder is reported before the progress display opens
    device = check_device(rank_device(device))
    parallel = data_parallel_from_env(device)
    try:
        with progress_bars(not as_json and (parallel is None or parallel.is_main)) as report:
            result = distill(data_path, student, student_config, config, out=out, resume=resume, domain=domain_name,
                             device=device, progress=report, student_preset=student_preset, parallel=parallel)
    finally:
        close_data_parallel()
    if parallel is None:
        return result
    return {**result, "ranks": parallel.world} if parallel.is_main else None


def _run_dagger(domain_name, data_path, student, student_config, student_preset, config, out, device, teacher_path,
                rounds, beta, samples, epochs, seed, as_json, data_dir=None, tasks_dir=None,
                executor_args=("local", 1, None), threads=1, round_0=None) -> dict:
    from kdistill.devices import check_device
    from kdistill.distill.expert_data import read_expert_meta
    from kdistill.distributed import launched_world
    from kdistill.errors import KdistillError
    from kdistill.loading import load_policy
    from kdistill.plugins import get_domain

    if launched_world() > 1:
        raise KdistillError("--dagger runs as one process; start it without torchrun (its distillation rounds are "
                            "small next to the first one, which torchrun can run on its own).")
    if teacher_path is None:
        raise KdistillError("--dagger needs --teacher: the teacher (or per-task experts) that labels the student's states.")
    meta = read_expert_meta(data_path)
    domain = get_domain(domain_name, data_dir=data_dir)
    if tasks_dir is not None:  # DAgger steps the data's tasks: a folder of the user's own tasks must be registered
        from kdistill.tasks import select_tasks

        select_tasks(domain, tasks_dir=tasks_dir)
    with open_executor(*executor_args) as executor:
        # an executor's workers run the rollouts, the teacher included, on their CPUs
        teacher = load_policy(teacher_path, domain=domain, device=check_device(device) if executor.in_process else "cpu",
                              seed=seed or 0)
        return _dagger_rounds(domain, teacher, teacher_path, meta, data_path, student, student_config, student_preset,
                              config, out, device, rounds, beta, samples, epochs, seed, as_json, executor, threads,
                              round_0)


def _dagger_rounds(domain, teacher, teacher_path, meta, data_path, student, student_config, student_preset, config, out,
                   device, rounds, beta, samples, epochs, seed, as_json, executor, threads, round_0=None) -> dict:
    from kdistill.devices import check_device
    from kdistill.distill.dagger import DaggerSettings, run_dagger
    from kdistill.errors import KdistillError

    if teacher.kind not in ("teacher", "experts"):
        raise KdistillError(f"--teacher {teacher_path} holds a {teacher.kind!r} policy; pass a teacher run or experts.")
    sha = teacher.meta.get("weights_sha256")
    if meta.get("teacher_sha256") not in (None, sha):
        raise KdistillError(f"--teacher {teacher_path} is not the teacher that collected {data_path}; pass that one.")
    settings = DaggerSettings(rounds=rounds, beta=beta, samples_per_task=samples, epochs=epochs, seed=seed or 0)
    with progress_bars(not as_json) as report:
        return run_dagger(domain, teacher, str(teacher_path), data_path, student, student_config, config, out, settings,
                          device=check_device(device), progress=report, student_preset=student_preset,
                          executor=executor, threads=threads, round_0=round_0)


def _saved_run(out: str) -> dict | None:
    """The meta of the newest checkpoint in ``out``, or None when there is none yet."""
    from pathlib import Path

    from kdistill.errors import KdistillError
    from kdistill.io import latest_checkpoint, read_json_object

    ckpt = latest_checkpoint(Path(out)) if Path(out).is_dir() else None
    if ckpt is None:
        return None
    meta = read_json_object(ckpt / "meta.json")
    if meta.get("kind") != "student" and not (meta.get("kind") == "teacher" and "distill" in meta):
        raise KdistillError(f"{out} holds a {meta.get('kind')!r} run, not a distilled student; pass another --out.")
    for key, kind in (("distill", dict), ("arch", str), ("config", dict)):
        if not isinstance(meta.get(key), kind):
            raise KdistillError(f"{ckpt / 'meta.json'} has no valid {key!r}; the run cannot be resumed, start a new --out.")
    return meta
