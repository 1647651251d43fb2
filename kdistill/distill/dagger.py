"""DAgger: the student acts, the teacher labels the states it visits, the data grows, the student trains again.

A DAgger run folder ``RUN`` is built from ordinary, resumable pieces:

* ``RUN/round-0/``: the student distilled from the initial expert data (a ``kdistill distill`` run folder;
  ``round_0`` copies in a finished one with the same data and settings instead of training it again);
* ``RUN/data-<r>/``: the states visited in round ``r`` (an expert data folder sharing the initial data's
  normaliser), labelled with the teacher's mean actions. In round ``r`` each env plays the teacher's
  sampled action with probability ``beta ** r`` at every step and the previous round's student's mean
  action otherwise, so the data drifts towards the states the student itself reaches;
* ``RUN/round-<r>/``: the student after round ``r``, trained from round ``r - 1``'s weights on the
  initial data plus ``data-1 .. data-r``;
* ``RUN/ckpt-*`` and ``RUN/latest.json``: a copy of the newest finished round's student, so ``RUN`` loads
  as that student everywhere; ``RUN/dagger.json``: the settings, pinned on resume.

Every piece skips work that is already done, so running the same command again resumes after an
interruption; different settings are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import attrs

from kdistill.distill.expert_data import CollectSettings, collect_expert_data, read_expert_meta
from kdistill.distill.training import check_finished_run, distill, split_tasks
from kdistill.errors import KdistillError
from kdistill.executors import Executor
from kdistill.io import atomic_write_json, claim_folder, copy_folder, latest_checkpoint, load_checkpoint, read_json_object, save_run_checkpoint
from kdistill.loading import load_policy
from kdistill.progress import Progress

_pos = attrs.validators.gt(0)


@attrs.frozen
class DaggerSettings:
    rounds: int = attrs.field(validator=_pos)
    beta: float = attrs.field(default=0.5, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    samples_per_task: int = attrs.field(default=4000, validator=_pos)  # new rows per task per round
    num_envs: int = attrs.field(default=8, validator=_pos)
    epochs: int = attrs.field(default=10, validator=_pos)  # epochs of each round's retraining
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def run_dagger(domain, teacher, teacher_ref: str, data_path: str | Path, student: str, student_config: Any, config,
               out: str | Path, settings: DaggerSettings, device: str = "cpu", progress: Progress | None = None,
               student_preset: str | None = None,
               on_round: Callable[[dict[str, Any]], None] | None = None,
               executor: Executor | None = None, threads: int = 1,
               round_0: str | Path | None = None) -> dict[str, Any]:
    """Distill, then ``settings.rounds`` rounds of DAgger (module docstring); returns a summary per round.

    ``round_0``: a finished distillation of ``data_path`` with ``student``, ``student_config`` and ``config``
    (checked before anything is written) that becomes round 0 instead of being trained again.

    ``executor``: where each round's rollouts run (default: this process); its workers load the student on the CPU,
    with ``threads`` torch threads each. The rows are the same on any executor."""
    import attrs as _attrs

    out, data_path = Path(out), Path(data_path)
    data_meta = read_expert_meta(data_path)
    if data_meta["domain"] != domain.name:
        raise KdistillError(f"{data_path} holds {data_meta['domain']!r} data, not {domain.name!r}.")
    adopt = round_0 is not None and not (out / "round-0").exists()
    if round_0 is not None and not adopt:  # adopted before: only a finished round 0 stands for it
        check_finished_run(out / "round-0", data_path, student, student_config, config, student_preset)
    if adopt:
        if Path(round_0).resolve() == out.resolve() or out.resolve() in Path(round_0).resolve().parents:
            raise KdistillError(f"--round-0 {round_0} is the DAgger run {out} or inside it; pass the finished "
                                f"distillation run that round 0 copies.")
        check_finished_run(round_0, data_path, student, student_config, config, student_preset)
    claim_folder(out, "dagger-run")
    pinned = {"data": str(data_path.resolve()), "teacher": str(teacher_ref), "student": student,
              "dagger": settings.to_dict(), "distill": {k: v for k, v in config.to_dict().items() if k != "checkpoint_every"}}
    settings_path = out / "dagger.json"
    if settings_path.exists():
        saved = read_json_object(settings_path)
        if saved != pinned:
            diff = sorted(k for k in set(saved) | set(pinned) if saved.get(k) != pinned.get(k))
            raise KdistillError(f"{out} is a DAgger run with other settings ({', '.join(diff)}); run it with its own "
                                f"settings to resume, or choose another --out folder.")
    else:
        atomic_write_json(settings_path, pinned)

    rounds: list[dict[str, Any]] = []

    def publish(r: int, result: dict[str, Any]) -> None:
        tensors, meta = load_checkpoint(latest_checkpoint(out / f"round-{r}"))
        meta = {**meta, "dagger": {"round": r, "rounds": settings.rounds, "beta": settings.beta ** r if r else 1.0}}
        save_run_checkpoint(out, r, tensors, meta, keep=1)
        row = {"round": r, "train_rows": result.get("train_rows"), "train_loss": result.get("train_loss"),
               "beta": settings.beta ** r if r else None}
        rounds.append(row)
        if on_round is not None:
            on_round(row)

    if adopt:
        copy_folder(round_0, out / "round-0")
    result = distill(data_path, student, student_config, config, out=out / "round-0", resume=True, domain=domain,
                     device=device, progress=progress, student_preset=student_preset)
    publish(0, result)
    tasks, _ = split_tasks(sorted(data_meta["tasks"]), config.val_tasks, config.seed)  # distill's own split
    round_config = _attrs.evolve(config, epochs=settings.epochs)
    for r in range(1, settings.rounds + 1):
        previous = out / f"round-{r - 1}"
        remote = executor is not None and not executor.in_process
        actor = load_policy(previous, domain=domain, device="cpu" if remote else device, seed=settings.seed + r)
        collect_expert_data(domain, teacher, data_meta["normalizer"], tasks, out / f"data-{r}",
                            CollectSettings(samples_per_task=settings.samples_per_task, num_envs=settings.num_envs,
                                            seed=settings.seed + r),
                            teacher_ref=str(teacher_ref), progress=progress, actor=actor,
                            beta=settings.beta ** r, actor_ref=str(previous.resolve()), executor=executor,
                            threads=threads)
        result = distill(data_path, student, student_config, round_config, out=out / f"round-{r}", resume=True,
                         domain=domain, device=device, progress=progress, student_preset=student_preset,
                         extra_data=[out / f"data-{i}" for i in range(1, r + 1)],
                         init_from=latest_checkpoint(previous))
        publish(r, result)
    return {"run": str(out), "rounds": rounds, "student": student, "final": str(latest_checkpoint(out))}

