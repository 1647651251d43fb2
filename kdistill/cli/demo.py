"""``kdistill demo``: the whole pipeline on one domain (``kdistill.demo``), printed as a table."""

from __future__ import annotations

from pathlib import Path

import click

from kdistill.cli.options import console, data_dir_option, json_option, print_json, progress_lines
from kdistill.demo import check_teacher_run, demo_settings, format_number, prepare_report_folder, run_demo
from kdistill.plugins import get_domain


@click.command("demo")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Report folder (every step's output lands here). [default: runs/demo-DOMAIN]")
@click.option("--teacher", "teacher_run", default=None, type=click.Path(exists=True),
              help="Teacher run to distil. [default: the domain's shipped teacher, else one is trained]")
@click.option("--samples-per-task", type=click.IntRange(1), default=None,
              help="Expert rows per task. [default: the domain's]")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Distillation epochs. [default: the domain's]")
@click.option("--episodes", type=click.IntRange(1), default=None,
              help="Evaluation episodes per task. [default: the domain's]")
@click.option("--test-tasks", type=click.IntRange(1), default=None,
              help="Held-out tasks evaluated. [default: the domain's]")
@click.option("--train-tasks", type=click.IntRange(1), default=None,
              help="Training tasks distilled and evaluated: the first N the teacher trained on. [default: the domain's]")
@click.option("--no-bench", is_flag=True, help="Skip the cost benchmark.")
@click.option("--fresh", is_flag=True, help="Delete the report folder first instead of continuing it.")
@click.option("--quiet", is_flag=True, help="Hide the steps' own progress output.")
@json_option
@data_dir_option
def demo_cmd(domain_name: str, out_dir: str | None, teacher_run: str | None, samples_per_task: int | None,
             epochs: int | None, episodes: int | None, test_tasks: int | None, no_bench: bool, fresh: bool, quiet: bool,
             as_json: bool, data_dir: str | None, train_tasks: int | None = None) -> None:
    """Run the whole pipeline on DOMAIN and write a report (markdown + PNGs).

    Steps: teacher (shipped or trained) -> expert collect -> distill an HN-MLP and a context-blind MLP ->
    compare on training and held-out tasks -> export one task -> bench. Re-running continues an interrupted demo.

    \b
    Examples:
      kdistill demo unimal                      # the shipped teacher, the domain's data
      kdistill demo DOMAIN --json               # a domain with no shipped teacher trains one first
    """
    # everything is checked before the report folder is touched
    out = Path(out_dir or f"runs/demo-{domain_name.replace(':', '-')}")  # unimal:vt -> runs/demo-unimal-vt
    domain = get_domain(domain_name, data_dir=data_dir)
    settings = demo_settings(domain, {"samples_per_task": samples_per_task, "distill_epochs": epochs,
                                      "eval_episodes": episodes, "test_tasks": test_tasks, "train_tasks": train_tasks})
    if teacher_run is not None:
        check_teacher_run(teacher_run, domain)
    prepare_report_folder(out, fresh)
    outcome = run_demo(domain, out, settings, teacher_run=teacher_run, data_dir=data_dir, bench=not no_bench,
                       quiet=quiet or as_json, progress=progress_lines(quiet=False))
    returns, normalised = outcome["returns"], outcome["normalised"]
    if as_json:
        print_json(outcome)
        return
    from rich.table import Table

    table = Table(title=f"kdistill demo: {domain.name} (mean return; normalised in brackets)")
    for col in ("split", "teacher", "HN-MLP", "blind MLP", "random"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split in ("train", "test"):
        r, n = returns[split], normalised[split]
        table.add_row(f"{split} ({len(outcome['tasks'][split])})", format_number(r["teacher"]),
                      f"{format_number(r['hnmlp'])} ({format_number(n['hnmlp'], 3)})",
                      f"{format_number(r['blind'])} ({format_number(n['blind'], 3)})", format_number(r["random"]))
    console.print(table)
    console.print(f"report: {outcome['report']}  (total {outcome['wall_s']['total']:.0f} s)")
