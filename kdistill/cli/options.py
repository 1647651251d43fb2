"""What every command shares: the consoles, ``--json`` output and the common options."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdistill.errors import KdistillError
from kdistill.io import dumps_strict
from kdistill.progress import Progress as ProgressFn

# markup off: paths, task names and messages are user text, and "[/x]" in one must print as written
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def print_json(obj: Any) -> None:
    """Machine-readable output for ``--json``: exactly one strict JSON document on stdout (NaN and
    infinity become null)."""
    sys.stdout.write(dumps_strict(obj, indent=2) + "\n")
    sys.stdout.flush()


class AliasOption(click.Option):
    """An option whose names after the first are aliases kept for existing scripts (e.g. ``--robots`` for
    ``--tasks``): they work, and ``--help`` shows only the first name."""

    def get_help_record(self, ctx):
        names, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = names


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout instead of tables.")
tasks_dir_option = click.option(
    "--tasks-dir", "--robots-dir", "tasks_dir", cls=AliasOption, default=None, type=click.Path(file_okay=False),
    help="A folder of task files to use as the task set (the domain reads its own file format, e.g. your own "
         "designs); each file is validated first. With --split: the split's tasks and the folder's.")


def tasks_option(help: str = "Comma-separated tasks (instead of --split).", **kwargs):
    """``--tasks a,b`` (alias ``--robots``), passed to the command as ``task_names``."""
    return click.option("--tasks", "--robots", "task_names", cls=AliasOption, default=None, help=help, **kwargs)


def task_option(help: str, **kwargs):
    """``--task NAME`` (alias ``--robot``), passed to the command as ``task``."""
    return click.option("--task", "--robot", "task", cls=AliasOption, help=help, **kwargs)


# ``--task`` elsewhere names one task; here it stays an alias for scripts written before ``--kind``
task_kind_option = click.option(
    "--kind", "--task", "task_kind", cls=AliasOption, default=None, metavar="KIND",
    help="The kind of task, for a domain that offers several (its task_kinds in `kdistill domains`), the same as "
         "DOMAIN:KIND (e.g. unimal:vt, which every command takes); default: the domain's own.")


def progress_lines(quiet: bool = False) -> ProgressFn | None:
    """A ``kdistill.progress`` callback that prints a line on stderr for each new piece of work (stdout, which
    ``--json`` owns, stays clean); None (silence) when ``quiet``."""
    if quiet:
        return None
    started: set[str] = set()

    def report(description: str, completed: int, total: int | None) -> None:
        if description not in started:
            started.add(description)
            err_console.print(description, highlight=False, soft_wrap=True)

    return report


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressFn]:
    """A ``kdistill.progress`` callback drawn as bars on stderr while the block runs: a call whose count goes back
    or whose total changes starts a new bar; otherwise it advances the current one (and updates its description)."""
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, disable=not enabled) as bars:
        current: dict[str, Any] = {}

        def report(description: str, completed: int, total: int | None) -> None:
            if not current or completed < current["completed"] or total != current["total"]:
                current["id"] = bars.add_task(description, total=total)
            current.update(completed=completed, total=total)
            bars.update(current["id"], description=description, completed=completed, total=total)

        yield report
data_dir_option = click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                               help="Data folder for domains that read data (else the domain's env var / cache).")


def parse_policies(spec: str) -> dict[str, str]:
    """``"teacher=runs/t,hnmlp=runs/h"`` -> ``{"teacher": "runs/t", "hnmlp": "runs/h"}``."""
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


def executor_options(f):
    """``--executor NAME --workers N --address ADDR``: where the per-task work runs (``kdistill.executors``)."""
    f = click.option("--address", default=None,
                     help="With --executor ray: the Ray cluster to join (host:port, or auto). [default: start a local one]")(f)
    f = click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
                     help="Workers that run tasks at once (--executor processes or ray; the local executor runs one).")(f)
    f = click.option("--executor", "executor_name", default="local", show_default=True,
                     help="Where the tasks run: local (this process), processes (a pool of worker processes on this machine) "
                          "or ray (kdistill[ray]), or a plugin's executor.")(f)
    return f


def open_executor(name: str, workers: int, address: str | None):
    """The executor the options ask for (close it after use, e.g. ``with open_executor(...) as ex``)."""
    from kdistill.executors import get_executor

    return get_executor(name, workers=workers, address=address)


def evaluation_options(command):
    """The options every command that plays policies for returns shares: episodes, seed, random row, device, threads."""
    for option in reversed([
        click.option("--episodes", type=click.IntRange(1), default=16, show_default=True,
                     help="Episodes per task (one per env)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the episodes' resets."),
        click.option("--stochastic", is_flag=True, help="Sample actions with the policy's std instead of the mean action."),
        click.option("--no-random", is_flag=True, help="Skip the random-policy row."),
        click.option("--device", default="cpu", show_default=True, help="Torch device: cpu or cuda."),
        click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
                     help="Torch CPU threads. More threads are much slower while the envs step on the same cores "
                          "(measured 7-13x slower with 2 on 2 cores): the batches here are small."),
    ]):
        command = option(command)
    return command

