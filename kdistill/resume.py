"""What a resumed run takes from its newest checkpoint, and how it reconciles that with the options given.

A run folder's newest ``meta.json`` holds ``run``: the settings the run was started with (domain, tasks, seed,
presets, budgets). ``--resume`` continues with those; an option given again must agree with them, or the resume
is refused with one line rather than silently training something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from kdistill.errors import KdistillError
from kdistill.io import latest_checkpoint, read_json_object
from kdistill.progress import Progress
from kdistill.tasks import resolve_tasks


def saved_run_settings(run_dir: str | Path, domain_name: str, required: bool,
                       missing_hint: str = "drop --resume to start a new run") -> dict[str, Any]:
    """The ``run`` settings of the newest checkpoint in ``run_dir`` ({} when there is none and not ``required``)."""
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is None:
        if required:
            raise KdistillError(f"{run_dir} holds no checkpoint to resume from; {missing_hint}.")
        return {}
    saved = read_json_object(ckpt / "meta.json").get("run", {})
    if not isinstance(saved, dict) or not isinstance(saved.get("tasks"), list):
        raise KdistillError(f"{ckpt / 'meta.json'} has no valid 'run' settings (tasks, seed, ...); "
                            f"it cannot be resumed, start a new --out folder.")
    name = domain_name.partition(":")[0]  # "unimal:vt": the kind of task is checked against the checkpoint later
    if saved.get("domain") not in (None, name):
        raise KdistillError(f"{run_dir} is a run of domain {saved.get('domain')!r}, not {name!r}; "
                            f"resume it with that domain or choose a new --out folder.")
    return saved


def run_tasks(domain, saved: dict[str, Any], task_names: str | None, split: str | None, num_tasks: int | None,
              run_dir: str | Path, progress: Progress | None = None) -> list[str]:
    """The tasks of a new run (``split`` defaults to train), or the saved run's, which a given selection must equal."""
    if saved:
        if task_names or split or num_tasks:
            if resolve_tasks(domain, task_names, split, num_tasks, progress=progress) != list(saved["tasks"]):
                raise KdistillError(f"{run_dir} trains other tasks ({len(saved['tasks'])}); resume without "
                                    f"--tasks/--split/--num-tasks or choose a new --out folder.")
        return list(saved["tasks"])
    return resolve_tasks(domain, task_names, split or (None if task_names else "train"), num_tasks, progress=progress)


def agreeing(saved: dict[str, Any], given: Sequence[tuple[str, str, Any]]) -> None:
    """Refuse a resume where an option is given with another value than the run was started with.

    ``given`` holds ``(option, key in saved, value)``, or ``(option, key, value, default)`` for a setting that runs
    saved before it existed lack (they ran with ``default``); a value of None means the option was not given.
    """
    for option, key, value, *default in given:
        if not saved or value is None or (key not in saved and not default):
            continue
        started = saved.get(key, *default)
        if value != started:
            raise KdistillError(f"the run was started with {option} {started}; resume without {option} "
                                f"(or with that value), or choose a new --out folder.")
