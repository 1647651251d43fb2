"""The ``kdistill`` command line: the group, its own verbs (``plugins``, ``domains``) and ``main``, which turns every
error into one line. Sub-commands come from plugins through ``register_commands``.

Commands that report results take ``--json`` and then print exactly one JSON document on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from kdistill.cli.options import console, data_dir_option, err_console, json_option, print_json
from kdistill.errors import KdistillError


class LazyGroup(click.Group):
    """Adds plugin commands on first use, so ``--help`` lists them and import errors surface cleanly."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from kdistill.plugins import get_plugins

        for entry in get_plugins().commands:
            if not isinstance(entry.obj, click.Command):
                raise KdistillError(f"plugin {entry.plugin!r} registered command {entry.name!r}, which is not a click command.")
            if entry.name in self.commands:
                raise KdistillError(f"plugin {entry.plugin!r} registered command {entry.name!r}, which kdistill already has.")
            self.add_command(entry.obj, entry.name)

    def list_commands(self, ctx):
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._load()
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="kdistill")
def app(debug: bool) -> None:
    """kdistill: knowledge-decoupled distillation.

    Train a context-reading teacher, distill it into a hypernetwork that writes a small policy per
    task, evaluate, export and benchmark. Domains and extras come from plugins (`kdistill plugins`).
    """
    if debug:
        os.environ["KDISTILL_DEBUG"] = "1"


@app.command("plugins")
@json_option
def plugins_cmd(as_json: bool) -> None:
    """List loaded plugins, their versions and what each registers.

    \b
    Example:
      kdistill plugins
      kdistill plugins --json          # for scripts
      KDISTILL_PLUGINS=my_plugin kdistill plugins   # load a plugin module without installing it
    """
    from kdistill.plugins import get_plugins

    plugins = get_plugins()
    rows = [{"name": name, "version": info.version, "source": info.source, "registers": plugins.registered_by(name)}
            for name, info in plugins.info.items()]
    if as_json:
        print_json({"plugins": rows})
        return
    table = Table(title="kdistill plugins")
    for col in ("plugin", "version", "registers", "source"):
        table.add_column(col)
    for r in rows:
        regs = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in r["registers"].items()) or "-"
        table.add_row(r["name"], r["version"], regs, r["source"])
    console.print(table)


@app.command("domains")
@json_option
@data_dir_option
def domains_cmd(as_json: bool, data_dir: str | None) -> None:
    """List domains with their splits and task counts.

    \b
    Example:
      kdistill domains
      kdistill domains --data-dir ~/robots --json
    """
    from kdistill.plugins import get_plugins

    rows = []
    for entry in get_plugins().domains:
        row: dict[str, Any] = {"name": entry.name, "plugin": entry.plugin}
        try:
            row.update(entry.obj(data_dir=data_dir).describe())
            row["error"] = None
        except KdistillError as exc:
            row.update({"description": "", "splits": {}, "error": str(exc)})
        rows.append(row)
    if as_json:
        print_json({"domains": rows})
        return
    table = Table(title="kdistill domains")
    for col in ("domain", "plugin", "splits (tasks)", "description"):
        table.add_column(col)
    for r in rows:
        splits = (", ".join(f"{k} ({v})" for k, v in r["splits"].items()) if not r["error"]
                  else Text(r["error"], style="red"))
        table.add_row(r["name"], r["plugin"], splits, r.get("description", ""))
    console.print(table)


def one_line(message: str) -> str:
    """A message on one line: newlines and runs of spaces collapse to single spaces."""
    return " ".join(str(message).split())


def report_error(message: str, as_json: bool) -> None:
    """An error as one line on stderr (user text printed as is, never read as markup); with ``--json``
    also ``{"error": ...}`` on stdout, so a caller reading stdout always gets a JSON document."""
    from rich.text import Text

    line = one_line(message)
    if as_json:
        sys.stdout.write(json.dumps({"error": line}) + "\n")
        sys.stdout.flush()
    err_console.print(Text.assemble(("error: ", "bold red"), line), soft_wrap=True, highlight=False)


def _os_error_message(exc: OSError) -> str:
    import errno

    where = f" {exc.filename}" if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device while writing{where}; free some space and run the command again "
                f"(a run resumes from its last checkpoint with --resume).")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write or read{where} ({what}); choose a location you can write to."
    return f"{what}{':' if where else ''}{where}."


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KDISTILL_DEBUG") == "1"
    if "--debug" in argv:  # an option of the top command, taken wherever it is written (as the error lines say)
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    as_json = "--json" in argv
    from kdistill.procs import kill_children_with_parent

    kill_children_with_parent()
    try:
        rc = app.main(args=argv, prog_name="kdistill", standalone_mode=False)
    except KdistillError as exc:
        if debug:
            raise
        report_error(str(exc), as_json)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:  # a group called without a command: its help
        click.echo(exc.ctx.get_help(), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        if debug:
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        report_error(exc.format_message() + hint, as_json)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted; finished work is kept (use --resume to continue).", markup=False)
        sys.exit(130)
    except OSError as exc:
        if debug:
            raise
        report_error(_os_error_message(exc), as_json)
        sys.exit(2)
    except Exception as exc:  # a bug, not bad input: still one line, the traceback is behind --debug
        if debug:
            raise
        report_error(f"unexpected {type(exc).__name__}: {exc}; run again with --debug for the traceback and "
                     f"report it.", as_json)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)

