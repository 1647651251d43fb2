"""UNIMAL-only commands: ``kdistill unimal mutate`` (new robots from existing ones)."""

from __future__ import annotations

from pathlib import Path

import click

from kdistill.cli.options import AliasOption, console, data_dir_option, err_console, json_option, print_json, progress_lines


@click.group("unimal")
def unimal_group() -> None:
    """Commands of the UNIMAL domain."""


@unimal_group.command("mutate")
@click.option("--from", "source", required=True, metavar="SPLIT|DIR",
              help="The robots to start from: a split of the robot set (train, test, all) or a folder of robot files.")
@click.option("--per-robot", type=click.IntRange(1), default=2, show_default=True, help="Variations made of each robot.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every draw.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for xml/, metadata/ and mutations.json (usable as --robots-dir).")
# the generic commands' --tasks and --num-tasks name the same selections
@click.option("--robots", "--tasks", "robots", cls=AliasOption, default=None,
              help="Only these robots of --from (comma-separated).")
@click.option("--num-robots", "--num-tasks", "num_robots", cls=AliasOption, type=click.IntRange(1), default=None,
              help="Only the first N robots of --from.")
@click.option("--operators", default=",".join(__import__("kdistill_unimal.mutate", fromlist=["OPERATORS"]).OPERATORS),
              show_default=True, help="Mutation operators to draw from (comma-separated).")
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True,
              help="Random-action steps every product must run without instability.")
@json_option
@data_dir_option
def mutate_cmd(source: str, per_robot: int, seed: int, out: str, robots: str | None, num_robots: int | None,
               operators: str, steps: int, as_json: bool, data_dir: str | None) -> None:
    """Make new UNIMAL robots from existing ones: grow or delete a limb, change a joint range, the degrees of
    freedom, a limb's density, a motor's gear or a limb's size.

    Every product is checked (it loads, its metadata agrees with it, nothing touches at spawn, and --steps
    random steps run with no instability); its file name carries the operator, and mutations.json records
    what changed. Use the folder with --robots-dir, e.g. for zero-shot evaluation.

    \b
    Example:
      kdistill unimal mutate --from train --num-robots 10 --per-robot 2 --seed 0 --out mutants
      kdistill eval unimal --policy runs/hnmlp --robots-dir mutants
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kdistill.errors import KdistillError, unknown_name
    from kdistill.io import atomic_write_json, claim_folder
    from kdistill.tasks import select_tasks
    from kdistill_unimal.domain import UnimalDomain
    from kdistill_unimal.mutate import OPERATORS, mutate_robot

    ops = tuple(o.strip() for o in operators.split(",") if o.strip())
    for o in ops:
        if o not in OPERATORS:
            raise unknown_name("mutation operator", o, OPERATORS)
    if not ops:
        raise KdistillError("--operators is empty; pass some of " + ", ".join(OPERATORS) + ".")
    domain = UnimalDomain(data_dir=data_dir)
    if Path(source).is_dir():
        names = select_tasks(domain, tasks=robots, tasks_dir=source, num_tasks=num_robots,
                             progress=progress_lines(as_json))
    elif "/" in source or source.startswith("."):
        raise KdistillError(f"--from {source}: no such folder; pass a split (train, test, all) or a folder of robot files.")
    else:
        names = select_tasks(domain, tasks=robots, split=None if robots else source, num_tasks=num_robots,
                             progress=progress_lines(as_json))
    out_path = claim_folder(out, "unimal-mutants")
    records = []
    with Progress(TextColumn("[bold]mutate[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("robots"),
                  TimeElapsedColumn(), TextColumn("{task.fields[last]}", markup=False), console=err_console,
                  disable=as_json) as progress:
        bar = progress.add_task("mutate", total=len(names), last="")
        for name in names:
            xml, meta = domain.library.paths(name)
            made = mutate_robot(xml, meta, name, per_robot, seed, out_path, ops, steps=steps, workdir=out_path)
            records.extend(made)
            progress.update(bar, advance=1, last=", ".join(r["operator"] for r in made))
    doc = {"source": source, "seed": seed, "per_robot": per_robot, "operators": list(ops), "steps": steps,
           "parents": names, "robots": records}
    atomic_write_json(out_path / "mutations.json", doc)
    if as_json:
        print_json(doc)
        return
    from rich.table import Table

    table = Table(title=f"{len(records)} robots in {out_path} (seed {seed})")
    for col in ("robot", "operator", "limbs", "dof", "what changed"):
        table.add_column(col, overflow="fold")
    for r in records:
        change = ", ".join(f"{k}={v}" for k, v in r["change"].items() if not isinstance(v, (list, dict)))
        table.add_row(r["name"], r["operator"], str(r["num_limbs"]), str(r["dof"]), change)
    console.print(table)
    console.print(f"wrote {out_path / 'mutations.json'}; use the folder with --robots-dir {out_path}")
