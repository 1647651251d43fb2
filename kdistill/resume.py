"""What a resumed run takes from its newest checkpoint, and how it reconciles that with the options given.

A run folder's newest ``meta.json`` holds ``run``: the settings the run was started with (domain, tasks, seed,
presets, budgets). ``--resume`` continues with those; an option given again must agree with them, or the resume
is refused with one line rather than silently training something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import attrs

from kdistill.errors import KdistillError
from kdistill.io import latest_checkpoint, read_json_object
from kdistill.progress import Progress
from kdistill.tasks import resolve_tasks, task_folder_digest


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


@attrs.frozen
class RunTasks:
    """The tasks a training run works on and, when they came from ``--tasks-dir``, that folder (absolute) and its
    ``task_folder_digest``; ``settings`` are the run-settings fields that record the folder."""

    tasks: list[str]
    folder: str = ""
    folder_sha256: str = ""

    @property
    def settings(self) -> dict[str, str]:
        return {"tasks_dir": self.folder, "tasks_dir_sha256": self.folder_sha256}


def run_tasks(domain, saved: dict[str, Any], task_names: str | None, split: str | None, num_tasks: int | None,
              run_dir: str | Path, progress: Progress | None = None, tasks_dir: str | None = None) -> RunTasks:
    """The tasks of a new run (``split`` defaults to train, unless ``tasks_dir`` gives the task set), or the saved
    run's, which a given selection must equal. A saved run of a task folder adds that folder to ``domain`` again
    (``tasks_dir`` may say where it is now) and refuses files that changed since."""
    if saved:
        folder = saved.get("tasks_dir") or ""
        if folder:
            folder = _reopen_task_folder(saved, tasks_dir or folder, run_dir)
        elif tasks_dir:
            raise KdistillError(f"{run_dir} trains the domain's own tasks, not a --tasks-dir; resume without "
                                f"--tasks-dir or choose a new --out folder.")
        if folder or task_names or split or num_tasks:
            # a task folder is read here in any case: that makes its tasks known to the domain
            selected = resolve_tasks(domain, task_names, split, num_tasks, folder or None, progress=progress)
            if (task_names or split or num_tasks) and selected != list(saved["tasks"]):
                raise KdistillError(f"{run_dir} trains other tasks ({len(saved['tasks'])}); resume without "
                                    f"--tasks/--split/--num-tasks or choose a new --out folder.")
        return RunTasks(list(saved["tasks"]), folder, saved.get("tasks_dir_sha256") or "")
    tasks = resolve_tasks(domain, task_names, split or (None if task_names or tasks_dir else "train"), num_tasks,
                          tasks_dir, progress=progress)
    if tasks_dir is None:
        return RunTasks(tasks)
    return RunTasks(tasks, str(Path(tasks_dir).resolve()), task_folder_digest(tasks_dir))


def _reopen_task_folder(saved: dict[str, Any], folder: str, run_dir: str | Path) -> str:
    """The task folder a saved run trains on, checked to hold the files the run started with."""
    if not Path(folder).is_dir():
        raise KdistillError(f"{run_dir} trains the tasks of {folder}, which is not there; pass --tasks-dir with "
                            f"the folder's new place.")
    if saved.get("tasks_dir_sha256") and task_folder_digest(folder) != saved["tasks_dir_sha256"]:
        raise KdistillError(f"the task files in {folder} differ from those {run_dir} started with; restore them, "
                            f"or start a new --out folder to train on the changed files.")
    return str(Path(folder).resolve())


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
