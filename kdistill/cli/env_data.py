"""``kdistill env check D`` and ``kdistill data fetch D``: checking a domain's environments and
installing its data. Both work for any domain that implements ``Domain.check`` / ``Domain.fetch_data``.
"""

from __future__ import annotations

from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from kdistill.cli.options import (
    AliasOption,
    console,
    data_dir_option,
    err_console,
    json_option,
    print_json,
    progress_lines,
    task_kind_option,
    tasks_dir_option,
)
from kdistill.errors import KdistillError


def _domain(name: str, data_dir: str | None, task_kind: str | None = None):
    from kdistill.plugins import get_domain

    return get_domain(name, data_dir=data_dir, task_kind=task_kind)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=False)


# env ----------------------------------------------------------------------------------------------

@click.group("env")
def env_group() -> None:
    """Check a domain's environments."""


def _split_names(values: tuple[str, ...]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


@env_group.command("check")
@click.argument("domain")
@click.option("--split", default="all", show_default=True,
              help="Which tasks to check: a split name (e.g. train, test) or 'all'.")
@click.option("--tasks", "--robots", "names", cls=AliasOption, multiple=True, metavar="NAMES",
              help="Check only these tasks (repeat the option or separate names with commas).")
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(1),
              help="Random-action steps per task; episodes are reset when they end.")
@task_kind_option
@data_dir_option
@tasks_dir_option
@json_option
def env_check_cmd(domain: str, split: str, names: tuple[str, ...], steps: int, task_kind: str | None, data_dir: str | None,
                  tasks_dir: str | None, as_json: bool) -> None:
    """Load every task of DOMAIN and run random actions in it.

    Reports, per task, its size, env steps per second and any failure (a load error, an exception,
    a simulation that went unstable). Exits with status 1 if any task fails.

    \b
    Examples:
      kdistill env check unimal --split test --json
      kdistill env check unimal --kind vt --split all
      kdistill env check unimal --tasks-dir my-tasks
    """
    from kdistill.tasks import ensure_data, select_tasks

    dom = _domain(domain, data_dir, task_kind)
    wanted = _split_names(names)
    if wanted and click.get_current_context().get_parameter_source("split").name != "DEFAULT":
        raise KdistillError("pass either --tasks or --split, not both.")
    if tasks_dir is not None:
        pairs = [(t, None) for t in select_tasks(dom, tasks=wanted, tasks_dir=tasks_dir, progress=progress_lines())]
    elif wanted:
        ensure_data(dom, progress_lines())
        tasks = dom.tasks(names=wanted)
        pairs = [(t, None) for t in tasks]
    elif split == "all":
        ensure_data(dom, progress_lines())
        pairs = [(t, s) for s, ts in dom.splits().items() for t in ts]  # a task in two splits is checked in each
    else:
        ensure_data(dom, progress_lines())
        pairs = [(t, split) for t in dom.tasks(split)]

    rows: list[dict[str, Any]] = []
    with _progress() as progress:
        bar = progress.add_task(f"checking {domain}", total=len(pairs))
        for task, task_split in pairs:
            progress.update(bar, description=f"checking {task}")
            try:
                row = dom.check([task], steps)[0]
            except NotImplementedError:
                raise KdistillError(f"domain {domain!r} has no environment check.") from None
            if task_split is not None:
                row["split"] = task_split
            rows.append(row)
            progress.advance(bar)
        progress.update(bar, description=f"checked {domain}")

    failed = [r for r in rows if not r.get("ok")]
    if as_json:
        print_json({"domain": domain, "task_kind": getattr(dom, "task_kind", None), "steps": steps, "total": len(rows),
                    "passed": len(rows) - len(failed),
                    "failed": len(failed), "tasks": rows})
    else:
        kind = getattr(dom, "task_kind", None)
        title = f"{domain}" + (f" ({kind})" if kind and dom.task_kinds else "")
        table = Table(title=f"{title}: {len(rows) - len(failed)}/{len(rows)} tasks pass")
        table.add_column("task", overflow="fold")
        core = ("name", "split", "ok", "error", "steps", "episodes", "unstable", "steps_per_s")
        extra = list(dict.fromkeys(k for r in rows for k in r if k not in core))  # the domain's own columns
        for col in ("split", *extra, "steps/s", "episodes", "result"):
            table.add_column(col)
        for r in rows:
            result = Text("ok", style="green") if r.get("ok") else Text(str(r.get("error")), style="red")
            sps = r.get("steps_per_s")
            table.add_row(str(r["name"]), str(r.get("split", "")), *(str(r.get(k, "")) for k in extra),
                          f"{sps:,.0f}" if sps else "-", str(r.get("episodes", "")), result)
        console.print(table)
    if failed:
        raise click.exceptions.Exit(1)


# data ---------------------------------------------------------------------------------------------

@click.group("data")
def data_group() -> None:
    """Install the data a domain needs."""


@data_group.command("fetch")
@click.argument("domain")
@click.option("--from", "source", default=None, metavar="PATH_OR_ARCHIVE",
              help="Install from a local folder or .tar.gz/.zip archive instead of downloading.")
@data_dir_option
@json_option
def data_fetch_cmd(domain: str, source: str | None, data_dir: str | None, as_json: bool) -> None:
    """Download DOMAIN's data (or copy it from --from), check it and install it.

    Every file is checked against the manifest shipped with the domain before anything is
    installed; an interrupted fetch leaves no half-installed folder behind.

    \b
    Examples:
      kdistill data fetch unimal
      kdistill data fetch unimal --from Universal-Morphology-Control-18c0516.tar.gz --data-dir ./data
    """
    dom = _domain(domain, data_dir)
    with _progress() as progress:
        bars: dict[str, Any] = {}

        def report(description: str, completed: int, total: int | None) -> None:
            if description not in bars:
                bars[description] = progress.add_task(description, total=total)
            progress.update(bars[description], completed=completed, total=total)

        try:
            result = dom.fetch_data(source, progress=report)
        except NotImplementedError:
            raise KdistillError(f"domain {domain!r} has no data to fetch.") from None
    if as_json:
        print_json({"domain": domain, **result})
    else:
        console.print(f"installed {domain} data in {result.get('path')} ({result.get('files')} files checked)")
