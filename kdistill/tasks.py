"""Choosing the tasks a command works on, and installing a domain's data on first use.

Every command that takes ``--robots/--tasks``, ``--split`` or ``--robots-dir/--tasks-dir`` selects its tasks with
``select_tasks``:

* ``--tasks-dir DIR`` (alias ``--robots-dir``): the tasks of a folder of task files, added to the domain with
  ``Domain.add_task_folder`` (UNIMAL: a folder of robot XML + metadata files); ``--robots`` then picks among them;
* ``--robots a,b``: those tasks, checked against every split;
* ``--split NAME`` (or ``all``): a split's tasks.

Before the domain's own splits are read, ``ensure_data`` installs the domain's data when none is found (a
``MissingDataError``), with a progress bar, exactly as ``kdistill data fetch`` would.
"""

from __future__ import annotations

from typing import Any, Sequence

from kdistill.errors import DataError, KdistillError, MissingDataError


def _names(robots: str | Sequence[str] | None) -> list[str] | None:
    if robots is None:
        return None
    parts = robots.split(",") if isinstance(robots, str) else [p for r in robots for p in str(r).split(",")]
    names = [n.strip() for n in parts if n.strip()]
    return names or None


def ensure_data(domain, quiet: bool = False) -> None:
    """Install ``domain``'s data if none is found (``Domain.fetch_data``, with a progress bar on stderr).

    Data that is present but damaged is not touched: its error stands. Without a network the download's one-line
    error says how to install from a local archive instead.
    """
    from kdistill.domain import Domain

    try:
        domain.splits()
        return
    except MissingDataError as exc:
        if type(domain).fetch_data is Domain.fetch_data:  # nothing to fetch: the error stands
            raise
        missing = str(exc)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kdistill.cli.options import err_console

    if not quiet:
        err_console.print(f"{missing.split(';')[0]}: installing the {domain.name} data (first use)",
                          highlight=False, soft_wrap=True)
    bars: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, disable=quiet) as progress:

        def report(description: str, completed: int, total: int | None) -> None:
            if description not in bars:
                bars[description] = progress.add_task(description, total=total)
            progress.update(bars[description], completed=completed, total=total)

        try:
            result = domain.fetch_data(None, progress=report)
        except DataError as err:
            raise DataError(f"{missing.rstrip('.')}. Installing it on first use failed: {err}") from None
    if not quiet:
        err_console.print(f"installed {domain.name} data in {result.get('path')} ({result.get('files')} files checked)",
                          highlight=False, soft_wrap=True)


def select_tasks(domain, robots: str | Sequence[str] | None = None, split: str | None = None,
                 num_tasks: int | None = None, tasks_dir: str | None = None, default_split: str | None = "train",
                 quiet: bool = False) -> list[str]:
    """The tasks named by ``--robots``, ``--split`` or ``--tasks-dir`` (see the module docstring), optionally only
    the first ``num_tasks``. ``default_split`` is used when nothing is given. One-line errors for bad input."""
    names = _names(robots)
    if num_tasks is not None and num_tasks <= 0:
        raise KdistillError(f"--num-tasks must be positive, got {num_tasks}.")
    if tasks_dir is not None:
        if split:
            raise KdistillError("pass either --robots-dir or --split, not both (the folder is the task set).")
        try:
            folder = list(domain.add_task_folder(tasks_dir))
        except NotImplementedError:
            raise KdistillError(f"domain {domain.name!r} does not read task folders (--robots-dir).") from None
        if names:
            unknown = [n for n in names if n not in folder]
            if unknown:
                from kdistill.errors import unknown_name

                raise unknown_name(f"task of {tasks_dir}", unknown[0], folder)
            tasks = names
        else:
            tasks = folder
    else:
        if names and split:
            raise KdistillError("pass either --robots or --split, not both.")
        ensure_data(domain, quiet=quiet)
        tasks = domain.tasks(split=split or (None if names else default_split), names=names)
    if num_tasks is not None:
        tasks = tasks[:num_tasks]
    if not tasks:
        raise KdistillError(f"no tasks selected in domain {domain.name!r}; check --robots/--split/--robots-dir.")
    return list(tasks)


def resolve_tasks(domain, robots: str | None, split: str | None, num_tasks: int | None,
                  tasks_dir: str | None = None) -> list[str]:
    """Tasks named by ``--robots a,b``, a ``--split`` or a ``--robots-dir``, optionally only the first ``--num-tasks``
    (``kdistill.tasks.select_tasks``: installs the domain's data on first use)."""
    return select_tasks(domain, robots=robots, split=split, num_tasks=num_tasks, tasks_dir=tasks_dir,
                        default_split=None)
