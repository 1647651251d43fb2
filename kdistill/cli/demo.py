"""``kdistill demo``: the whole pipeline on one domain with small defaults, ending in a report folder.

teacher (shipped, or trained) -> expert collect -> distill HN-MLP and a context-blind MLP -> compare on train and
held-out tasks -> export one task's generated MLP -> bench. Each step is the ordinary CLI command, run as a
child process with ``--json``, so the demo exercises exactly what users run; finished steps are skipped on a
re-run, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from kdistill.cli.options import console, data_dir_option, err_console, json_option, print_json
from kdistill.errors import KdistillError

# What a domain's ``demo_defaults()`` may set; anything missing takes these values.
DEMO_KEYS: dict[str, Any] = {
    "teacher": None,  # teacher architecture when one must be trained (None: the domain's default)
    "teacher_preset": None,
    "ppo_preset": "cpu",
    "teacher_steps": 400_000,
    "samples_per_task": 4000,
    "collect_envs": 16,
    "student": "hnmlp",
    "blind_student": "mlp",  # a student that never sees the context
    "student_preset": "paper",
    "distill_preset": "demo",
    "distill_epochs": 15,
    "eval_episodes": 8,
    "test_tasks": None,  # None: every task of the test split
    "bench_preset": "quick",
}


class Step:
    """One pipeline step: a kdistill command whose JSON result is kept in OUT/steps/<name>.json."""

    def __init__(self, out: Path, env: dict[str, str], quiet: bool):
        self.out, self.env, self.quiet = out, env, quiet
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, args: list[str], title: str) -> dict[str, Any]:
        record = self.out / "steps" / f"{name}.json"
        if record.exists():
            result = json.loads(record.read_text())
            self.timings[name] = result.get("_wall_s", 0.0)
            err_console.print(f"- {title}: done earlier ({record})", style="dim")
            return result
        err_console.print(Text.assemble((f"- {title}", "bold"), "  ", (f"kdistill {' '.join(args)}", "dim")))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "kdistill.cli", *args, "--json"], env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if self.quiet else None, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            try:
                why = f" ({json.loads(proc.stdout)['error']})"
            except (ValueError, KeyError, TypeError):
                why = ""
            raise KdistillError(f"demo step {name!r} failed (exit {proc.returncode}){why}: kdistill {' '.join(args)}; "
                                f"run it alone to see more, then re-run the demo to continue.")
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise KdistillError(f"demo step {name!r} printed no JSON result; run `kdistill {' '.join(args)} --json` alone.") from None
        result["_wall_s"] = wall
        self.timings[name] = wall
        from kdistill.io import atomic_write_json

        atomic_write_json(record, result)
        return result


def _normalised(value: float | None, teacher: float | None, random: float | None) -> float | None:
    if value is None or teacher is None or random is None or abs(teacher - random) < 1e-9:
        return None
    return (value - random) / (teacher - random)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def write_report(out: Path, outcome: dict[str, Any]) -> Path:
    """A markdown report beside the PNGs the steps wrote."""
    from kdistill.io import atomic_write_text

    r = outcome["returns"]
    lines = [f"# kdistill demo: {outcome['domain']}", "",
             f"Teacher: `{outcome['teacher']}`. Training tasks: {len(outcome['tasks']['train'])}; held-out tasks: "
             f"{len(outcome['tasks']['test'])}. Protocol: mean action, one episode per env, "
             f"{outcome['settings']['eval_episodes']} episodes per task, raw returns averaged over episodes then tasks.", "",
             "## Returns", "",
             "| split | teacher | HN-MLP | blind MLP | random | HN-MLP normalised | blind normalised |",
             "|---|---|---|---|---|---|---|"]
    for split in ("train", "test"):
        row, norm = r[split], outcome["normalised"][split]
        lines.append(f"| {split} | {_fmt(row['teacher'])} | {_fmt(row['hnmlp'])} | {_fmt(row['blind'])} | "
                     f"{_fmt(row['random'])} | {_fmt(norm['hnmlp'], 3)} | {_fmt(norm['blind'], 3)} |")
    lines += ["", "Normalised = (student - random) / (teacher - random).", "",
              "![train](compare-train/compare.png) ![test](compare-test/compare.png)", "",
              "## Distillation", "", "![HN-MLP loss](hnmlp/loss_curve.png) ![MLP loss](blind/loss_curve.png)", ""]
    if outcome.get("clip"):
        lines += ["## Teacher and student on an unseen task", "", f"![teacher and student]({outcome['clip']})", ""]
    bench = outcome.get("bench") or {}
    if bench:
        lines += ["## Cost per step (teacher / fastest student)", "", "| measure | ratio |", "|---|---|"]
        for k, v in bench.items():
            if isinstance(v, (int, float)):
                lines.append(f"| {k} | {v:,.1f}x |")
        lines += ["", "![latency](bench/bench.png)", ""]
    exp = outcome.get("export") or {}
    if exp:
        lines += ["## Export", "", f"Task `{exp.get('task')}` folded into a dense MLP: `{exp.get('file')}`; "
                  f"largest difference from the student on random observations: {exp.get('max_abs_diff')}.", ""]
    lines += ["## Wall time per step (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in outcome["wall_s"].items()]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _is_unmarked_demo(path: Path) -> bool:
    """A report folder of a demo run before folders carried ownership marks: its step records are there."""
    try:
        entries = {p.name for p in path.iterdir()}
    except OSError:
        return False
    return "steps" in entries and (path / "steps").is_dir() and entries <= {
        "steps", "teacher", "expert", "hnmlp", "blind", "compare-train", "compare-test", "export", "bench",
        "report.md", "demo.json"}


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
@click.option("--no-bench", is_flag=True, help="Skip the cost benchmark.")
@click.option("--fresh", is_flag=True, help="Delete the report folder first instead of continuing it.")
@click.option("--quiet", is_flag=True, help="Hide the steps' own progress output.")
@json_option
@data_dir_option
def demo_cmd(domain_name: str, out_dir: str | None, teacher_run: str | None, samples_per_task: int | None,  # noqa: C901 (the pipeline, one step after another)
             epochs: int | None, episodes: int | None, test_tasks: int | None, no_bench: bool, fresh: bool, quiet: bool,
             as_json: bool, data_dir: str | None) -> None:
    """Run the whole pipeline on DOMAIN and write a report (markdown + PNGs).

    Steps: teacher (shipped or trained) -> expert collect -> distill an HN-MLP and a context-blind MLP ->
    compare on training and held-out tasks -> export one task -> bench. Re-running continues an interrupted demo.

    \b
    Examples:
      kdistill demo unimal                      # the shipped teacher, the domain's data
      kdistill demo DOMAIN --json               # a domain with no shipped teacher trains one first
    """
    from kdistill.io import claim_folder, folder_owner
    from kdistill.plugins import get_domain

    # everything is checked before the report folder is touched
    out = Path(out_dir or f"runs/demo-{domain_name}")
    domain = get_domain(domain_name, data_dir=data_dir)
    settings = dict(DEMO_KEYS)
    settings.update({k: v for k, v in domain.demo_defaults().items() if k in DEMO_KEYS})
    for key, value in (("samples_per_task", samples_per_task), ("distill_epochs", epochs),
                       ("eval_episodes", episodes), ("test_tasks", test_tasks)):
        if value is not None:
            settings[key] = value
    if teacher_run is not None:
        from kdistill.io import load_run_checkpoint

        _, given = load_run_checkpoint(teacher_run, as_torch=False)
        if given.get("kind") != "teacher" or given.get("domain") != domain.name:
            raise KdistillError(f"--teacher {teacher_run} holds a {given.get('domain')!r} {given.get('kind')!r} run, "
                                f"not a {domain.name!r} teacher; pass a teacher run from `kdistill teacher train`.")
    if fresh and out.exists():
        if not out.is_dir() or (folder_owner(out) != "demo" and not _is_unmarked_demo(out)):
            raise KdistillError(f"--fresh would delete {out}, which is not a folder written by `kdistill demo`; "
                                f"nothing was deleted. Choose another --out.")
        shutil.rmtree(out)
    claim_folder(out, "demo", legacy=_is_unmarked_demo)

    env = dict(os.environ)
    data_args = ["--data-dir", data_dir] if data_dir else []
    step = Step(out, env, quiet or as_json)
    started = time.perf_counter()

    # the data: domains that read data fetch it when it is missing
    try:
        splits = domain.splits()
    except KdistillError:
        from kdistill.domain import Domain

        if type(domain).fetch_data is Domain.fetch_data:  # nothing to fetch: the error stands
            raise
        step("fetch", ["data", "fetch", domain_name, *data_args], "fetch the domain's data")
        splits = domain.splits()

    # the teacher
    teacher = teacher_run or domain.pretrained_teacher()
    if teacher is None:
        args = ["teacher", "train", domain_name, "--out", str(out / "teacher"), "--preset", settings["ppo_preset"],
                "--steps", str(settings["teacher_steps"]), "--split", "train", *data_args]
        if settings["teacher"]:
            args += ["--teacher", settings["teacher"]]
        if settings["teacher_preset"]:
            args += ["--teacher-preset", settings["teacher_preset"]]
        if (out / "teacher" / "latest.json").exists():
            args.append("--resume")
        step("teacher", args, "train a teacher with PPO")
        teacher = out / "teacher"
    teacher = str(teacher)
    from kdistill.io import load_run_checkpoint

    _, teacher_meta = load_run_checkpoint(teacher, as_torch=False)
    if teacher_meta.get("domain") != domain.name:
        raise KdistillError(f"teacher {teacher} is for domain {teacher_meta.get('domain')!r}, not {domain.name!r}.")
    train_split = list(splits.get("train", []))
    teacher_tasks = list((teacher_meta.get("run") or {}).get("tasks") or train_split)
    n_train = len(teacher_tasks) if teacher_tasks == train_split[:len(teacher_tasks)] else len(train_split)
    train_tasks = train_split[:n_train]
    test_split = list(splits.get("test", []))
    n_test = min(settings["test_tasks"] or len(test_split), len(test_split))
    if not train_tasks or not n_test:
        raise KdistillError(f"domain {domain.name!r} needs non-empty train and test splits for the demo.")

    # expert data and the two students
    expert = out / "expert"
    step("collect", ["expert", "collect", domain_name, "--teacher", teacher, "--split", "train", "--num-tasks", str(n_train),
                     "--samples-per-task", str(settings["samples_per_task"]), "--envs", str(settings["collect_envs"]),
                     "--out", str(expert), *data_args], "collect expert data from the teacher")
    students = {"hnmlp": settings["student"], "blind": settings["blind_student"]}
    for label, arch in students.items():
        args = ["distill", domain_name, "--data", str(expert), "--student", arch, "--preset", settings["distill_preset"],
                "--epochs", str(settings["distill_epochs"]), "--out", str(out / label)]
        if arch == settings["student"]:
            args += ["--student-preset", settings["student_preset"]]
        if (out / label / "latest.json").exists():
            args.append("--resume")
        step(f"distill-{label}", args, f"distill the {label} student ({arch})")

    # evaluation on training and held-out tasks
    policies = f"teacher={teacher},hnmlp={out / 'hnmlp'},blind={out / 'blind'}"
    compared = {}
    for split, n in (("train", n_train), ("test", n_test)):
        compared[split] = step(f"compare-{split}", [
            "compare", domain_name, "--policies", policies, "--split", split, "--num-tasks", str(n),
            "--episodes", str(settings["eval_episodes"]), "--out", str(out / f"compare-{split}"), *data_args],
            f"evaluate teacher, students and random on {split} tasks")

    # a short clip of teacher and student side by side on an unseen task (skipped where nothing can render)
    clip = None
    try:
        step("render", ["render", domain_name, "--policy", f"teacher={teacher},student={out / 'hnmlp'}",
                        "--task", test_split[0], "--out", str(out / "clip.gif"), "--steps", "150", "--every", "3",
                        "--overwrite", *data_args], f"render teacher and student on the unseen task {test_split[0]}")
        clip = "clip.gif"
    except KdistillError as exc:
        err_console.print(f"  no clip: {exc}", style="dim", markup=False)

    # export one task's generated MLP, then the cost benchmark
    task = train_tasks[0]
    exported = step("export", ["export", domain_name, "--student", str(out / "hnmlp"), "--task", task,
                               "--out", str(out / "export" / "policy"), *data_args], f"export the generated MLP of {task}")
    bench = None
    if not no_bench:
        bench = step("bench", ["bench", domain_name, "--teacher", teacher, "--student", str(out / "hnmlp"), "--task", task,
                               "--preset", settings["bench_preset"], "--out", str(out / "bench"), *data_args],
                     "benchmark teacher against the generated student")

    returns: dict[str, dict[str, float | None]] = {}
    normalised: dict[str, dict[str, float | None]] = {}
    for split, result in compared.items():
        row = result["returns"][split]
        returns[split] = {"teacher": row.get("teacher"), "hnmlp": row.get("hnmlp"), "blind": row.get("blind"), "random": row.get("random")}
        normalised[split] = {k: _normalised(returns[split][k], row.get("teacher"), row.get("random"))
                             for k in ("hnmlp", "blind")}
    outcome: dict[str, Any] = {
        "domain": domain.name, "out": str(out), "teacher": teacher, "settings": settings,
        "tasks": {"train": train_tasks, "test": test_split[:n_test]},
        "returns": returns, "normalised": normalised,
        "export": {"task": task, "file": (exported.get("files") or [None])[0],
                   "max_abs_diff": (exported.get("check") or {}).get("max_abs_diff")},
        "bench": (bench or {}).get("ratios"), "clip": clip,
        "wall_s": {**step.timings, "total": time.perf_counter() - started},
    }
    outcome["report"] = str(write_report(out, outcome))
    from kdistill.io import atomic_write_json

    atomic_write_json(out / "demo.json", outcome)
    if as_json:
        print_json(outcome)
        return
    from rich.table import Table

    table = Table(title=f"kdistill demo: {domain.name} (mean return; normalised in brackets)")
    for col in ("split", "teacher", "HN-MLP", "blind MLP", "random"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split in ("train", "test"):
        r, n = returns[split], normalised[split]
        table.add_row(f"{split} ({len(outcome['tasks'][split])})", _fmt(r["teacher"]),
                      f"{_fmt(r['hnmlp'])} ({_fmt(n['hnmlp'], 3)})", f"{_fmt(r['blind'])} ({_fmt(n['blind'], 3)})",
                      _fmt(r["random"]))
    console.print(table)
    console.print(f"report: {outcome['report']}  (total {outcome['wall_s']['total']:.0f} s)")
