"""What every command shares: the consoles, ``--json`` output and the common options."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from kdistill.errors import KdistillError
from kdistill.io import dumps_strict

# markup off: paths, task names and messages are user text, and "[/x]" in one must print as written
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def print_json(obj: Any) -> None:
    """Machine-readable output for ``--json``: exactly one strict JSON document on stdout (NaN and
    infinity become null)."""
    sys.stdout.write(dumps_strict(obj, indent=2) + "\n")
    sys.stdout.flush()


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout instead of tables.")
tasks_dir_option = click.option(
    "--tasks-dir", "--robots-dir", "tasks_dir", default=None, type=click.Path(file_okay=False),
    help="A folder of task files to use as the task set instead of a split (UNIMAL: robot XML + metadata files, "
         "e.g. your own designs or `kdistill unimal mutate` output); each file is validated first.")
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
