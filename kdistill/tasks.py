"""Choosing the tasks a command works on, and installing a domain's data on first use.

Every command that takes ``--tasks``, ``--split`` or ``--tasks-dir`` selects its tasks with ``select_tasks``:

* ``--tasks-dir DIR``: the tasks of a folder of task files, added to the domain with ``Domain.add_task_folder``
  (with ``--split`` too: the split's tasks, then the folder's); ``--tasks`` then picks among them;
* ``--tasks a,b``: those tasks, checked against every split;
* ``--split NAME`` (or ``all``): a split's tasks.

Before the domain's own splits are read, ``ensure_data`` installs the domain's data when none is found (a
``MissingDataError``), reporting through a ``kdistill.progress.Progress`` callback, as ``kdistill data fetch`` would.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from kdistill.domain import Domain
from kdistill.errors import DataError, KdistillError, MissingDataError, unknown_name
from kdistill.progress import Progress


def _names(tasks: str | Sequence[str] | None) -> list[str] | None:
    if tasks is None:
        return None
    parts = tasks.split(",") if isinstance(tasks, str) else [p for t in tasks for p in str(t).split(",")]
    names = [n.strip() for n in parts if n.strip()]
    return names or None


def ensure_data(domain, progress: Progress | None = None) -> None:
    """Install ``domain``'s data if none is found (``Domain.fetch_data``), reporting through ``progress``.

    Data that is present but damaged is not touched: its error stands. Without a network the download's one-line
    error says how to install from a local archive instead.
    """
    try:
        domain.splits()
        return
    except MissingDataError as exc:
        if type(domain).fetch_data is Domain.fetch_data:  # nothing to fetch: the error stands
            raise
        missing = str(exc)
    report = progress or (lambda description, completed, total: None)
    report(f"{missing.split(';')[0]}: installing the {domain.name} data (first use)", 0, None)
    try:
        result = domain.fetch_data(None, progress=report)
    except DataError as err:
        raise DataError(f"{missing.rstrip('.')}. Installing it on first use failed: {err}") from None
    report(f"installed {domain.name} data in {result.get('path')} ({result.get('files')} files checked)", 1, 1)


def select_tasks(domain, tasks: str | Sequence[str] | None = None, split: str | None = None,
                 num_tasks: int | None = None, tasks_dir: str | None = None, default_split: str | None = "train",
                 progress: Progress | None = None) -> list[str]:
    """The tasks named by ``--tasks``, ``--split`` or ``--tasks-dir`` (see the module docstring), optionally only
    the first ``num_tasks``. ``default_split`` is used when nothing is given. One-line errors for bad input."""
    names = _names(tasks)
    if num_tasks is not None and num_tasks <= 0:
        raise KdistillError(f"--num-tasks must be positive, got {num_tasks}.")
    if tasks_dir is not None:
        before: list[str] = []
        if split:  # the split's tasks come first, so a run of both lists its tasks as a run of the split alone
            ensure_data(domain, progress)
            before = domain.tasks(split=split)
        try:
            folder = list(domain.add_task_folder(tasks_dir))
        except NotImplementedError:
            raise KdistillError(f"domain {domain.name!r} does not read task folders (--tasks-dir).") from None
        # so that a worker of another executor can add the same folder (kdistill.executors.DomainRef)
        known, resolved = tuple(getattr(domain, "task_folders", ()) or ()), str(Path(tasks_dir).resolve())
        domain.task_folders = known if resolved in known else (*known, resolved)
        candidates = before + [t for t in folder if t not in set(before)]
        if names:
            unknown = [n for n in names if n not in candidates]
            if unknown:
                where = f"{tasks_dir} or split {split!r}" if split else str(tasks_dir)
                raise unknown_name(f"task of {where}", unknown[0], candidates)
            tasks = names
        else:
            tasks = candidates
    else:
        if names and split:
            raise KdistillError("pass either --tasks or --split, not both.")
        ensure_data(domain, progress)
        tasks = domain.tasks(split=split or (None if names else default_split), names=names)
    if num_tasks is not None:
        tasks = tasks[:num_tasks]
    if not tasks:
        raise KdistillError(f"no tasks selected in domain {domain.name!r}; check --tasks/--split/--tasks-dir.")
    return list(tasks)


def resolve_tasks(domain, tasks: str | None, split: str | None, num_tasks: int | None,
                  tasks_dir: str | None = None, progress: Progress | None = None) -> list[str]:
    """Tasks named by ``--tasks a,b``, a ``--split`` or a ``--tasks-dir``, optionally only the first ``--num-tasks``
    (``select_tasks`` without a default split: installs the domain's data on first use)."""
    return select_tasks(domain, tasks=tasks, split=split, num_tasks=num_tasks, tasks_dir=tasks_dir,
                        default_split=None, progress=progress)


def task_folder_digest(folder: str | Path) -> str:
    """sha256 over every file of a task folder (relative path and bytes, in sorted order; hidden files skipped).

    A run trained on a ``--tasks-dir`` records it, so a resume over task files that changed since is refused: the
    core cannot tell which of a domain's files matter, so all of them count."""
    root = Path(folder)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = Path(dirpath) / name
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError as exc:
                raise DataError(f"cannot read {path} ({exc.strerror}); fix its permissions.") from None
            digest.update(b"\0")
    return digest.hexdigest()
