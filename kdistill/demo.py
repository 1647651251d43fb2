"""The whole pipeline on one domain with small defaults, ending in a report folder (``kdistill demo``).

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

from kdistill.domain import Domain, check_task_kind, domain_label
from kdistill.errors import KdistillError
from kdistill.io import atomic_write_json, atomic_write_text, claim_folder, folder_owner, load_run_checkpoint
from kdistill.progress import Progress

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
    "train_tasks": None,  # None: every task the teacher trained on; N: the first N of them
    "bench_preset": "quick",
}

# what a demo report folder holds (a folder with these and no ownership mark is an older demo's)
REPORT_ENTRIES = {"steps", "teacher", "expert", "hnmlp", "blind", "compare-train", "compare-test", "export", "bench",
                  "report.md", "demo.json"}


class Steps:
    """Runs pipeline steps: each a kdistill command whose JSON result is kept in OUT/steps/<name>.json."""

    def __init__(self, out: Path, env: dict[str, str], quiet: bool, progress: Progress | None):
        self.out, self.env, self.quiet, self.progress = out, env, quiet, progress
        self.timings: dict[str, float] = {}

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line, len(self.timings), None)

    def __call__(self, name: str, args: list[str], title: str) -> dict[str, Any]:
        record = self.out / "steps" / f"{name}.json"
        pinned = [a for a in args if a != "--resume"]  # what the step computes from, whichever run of the demo did it
        if record.exists():
            result = json.loads(record.read_text())
            if "_args" in result and result["_args"] != pinned:
                raise KdistillError(f"demo step {name!r} in {self.out} was done with other options (kdistill "
                                    f"{' '.join(result['_args'])}); re-run the demo with the same options, or pass "
                                    f"--fresh or another --out.")
            self.timings[name] = result.get("_wall_s", 0.0)
            self._say(f"- {title}: done earlier ({record})")
            return result
        self._say(f"- {title}  kdistill {' '.join(args)}")
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
        result["_wall_s"], result["_args"] = wall, pinned
        self.timings[name] = wall
        atomic_write_json(record, result)
        return result


def demo_settings(domain: Domain, overrides: dict[str, Any]) -> dict[str, Any]:
    """The core's defaults, then the domain's ``demo_defaults()``, then the caller's non-None overrides."""
    settings = dict(DEMO_KEYS)
    settings.update({k: v for k, v in domain.demo_defaults().items() if k in DEMO_KEYS})
    settings.update({k: v for k, v in overrides.items() if k in DEMO_KEYS and v is not None})
    return settings


def is_unmarked_demo(path: Path) -> bool:
    """A report folder of a demo run before folders carried ownership marks: its step records are there."""
    try:
        entries = {p.name for p in path.iterdir()}
    except OSError:
        return False
    return "steps" in entries and (path / "steps").is_dir() and entries <= REPORT_ENTRIES


def check_teacher_run(teacher_run: str, domain: Domain) -> None:
    _, given = load_run_checkpoint(teacher_run, as_torch=False)
    if given.get("kind") != "teacher" or given.get("domain") != domain.name:
        raise KdistillError(f"--teacher {teacher_run} holds a {given.get('domain')!r} {given.get('kind')!r} run, "
                            f"not a {domain.name!r} teacher; pass a teacher run from `kdistill teacher train`.")
    check_task_kind(given, domain, f"--teacher {teacher_run}")


def prepare_report_folder(out: Path, fresh: bool) -> None:
    """Claim ``out`` for the demo; with ``fresh``, first delete it, but only if an earlier demo wrote it."""
    if fresh and out.exists():
        if not out.is_dir() or (folder_owner(out) != "demo" and not is_unmarked_demo(out)):
            raise KdistillError(f"--fresh would delete {out}, which is not a folder written by `kdistill demo`; "
                                f"nothing was deleted. Choose another --out.")
        shutil.rmtree(out)
    claim_folder(out, "demo", legacy=is_unmarked_demo)


def _splits(domain: Domain, step: Steps, data_args: list[str]) -> dict[str, list[str]]:
    """The domain's splits; domains that read data fetch it when it is missing."""
    try:
        return domain.splits()
    except KdistillError:
        if type(domain).fetch_data is Domain.fetch_data:  # nothing to fetch: the error stands
            raise
        step("fetch", ["data", "fetch", domain_label(domain), *data_args], "fetch the domain's data")
        return domain.splits()


def _teacher(domain: Domain, out: Path, settings: dict[str, Any], teacher_run: str | None, step: Steps,
             data_args: list[str]) -> tuple[str, dict[str, Any]]:
    """The teacher to distil (given, shipped, or trained here) and its checkpoint meta."""
    teacher = teacher_run or domain.pretrained_teacher()
    if teacher is None:
        args = ["teacher", "train", domain_label(domain), "--out", str(out / "teacher"), "--preset", settings["ppo_preset"],
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
    _, meta = load_run_checkpoint(teacher, as_torch=False)
    if meta.get("domain") != domain.name:
        raise KdistillError(f"teacher {teacher} is for domain {meta.get('domain')!r}, not {domain.name!r}.")
    check_task_kind(meta, domain, f"teacher {teacher}")
    return teacher, meta


def _demo_tasks(splits: dict[str, list[str]], teacher_meta: dict[str, Any], test_tasks: int | None,
                domain: Domain, train_tasks: int | None = None) -> tuple[list[str], list[str]]:
    """Training tasks (the teacher's own when it saw a prefix of the split, at most ``train_tasks``) and the held-out
    tasks evaluated."""
    train_split = list(splits.get("train", []))
    teacher_tasks = list((teacher_meta.get("run") or {}).get("tasks") or train_split)
    n_train = len(teacher_tasks) if teacher_tasks == train_split[:len(teacher_tasks)] else len(train_split)
    n_train = min(n_train, train_tasks or n_train)
    test_split = list(splits.get("test", []))
    n_test = min(test_tasks or len(test_split), len(test_split))
    if not n_train or not n_test:
        raise KdistillError(f"domain {domain.name!r} needs non-empty train and test splits for the demo.")
    return train_split[:n_train], test_split[:n_test]


def _distill_students(domain: Domain, out: Path, teacher: str, settings: dict[str, Any], n_train: int, step: Steps,
                      data_args: list[str]) -> None:
    expert = out / "expert"
    step("collect", ["expert", "collect", domain_label(domain), "--teacher", teacher, "--split", "train", "--num-tasks", str(n_train),
                     "--samples-per-task", str(settings["samples_per_task"]), "--envs", str(settings["collect_envs"]),
                     "--out", str(expert), *data_args], "collect expert data from the teacher")
    students = {"hnmlp": settings["student"], "blind": settings["blind_student"]}
    for label, arch in students.items():
        args = ["distill", domain_label(domain), "--data", str(expert), "--student", arch, "--preset", settings["distill_preset"],
                "--epochs", str(settings["distill_epochs"]), "--out", str(out / label)]
        if arch == settings["student"]:
            args += ["--student-preset", settings["student_preset"]]
        if (out / label / "latest.json").exists():
            args.append("--resume")
        step(f"distill-{label}", args, f"distill the {label} student ({arch})")


def _render_clip(domain: Domain, out: Path, teacher: str, task: str, step: Steps, data_args: list[str]) -> str | None:
    """A short clip of teacher and student side by side on an unseen task; None where nothing can render."""
    try:
        step("render", ["render", domain_label(domain), "--policy", f"teacher={teacher},student={out / 'hnmlp'}",
                        "--task", task, "--out", str(out / "clip.gif"), "--steps", "150", "--every", "3",
                        "--overwrite", *data_args], f"render teacher and student on the unseen task {task}")
        return "clip.gif"
    except KdistillError as exc:
        step._say(f"  no clip: {exc}")
        return None


def _summarise(compared: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, float | None]]]:
    """Mean returns per split and policy, and the students' returns normalised between random and teacher."""
    returns: dict[str, dict[str, float | None]] = {}
    normalised: dict[str, dict[str, float | None]] = {}
    for split, result in compared.items():
        row = result["returns"][split]
        returns[split] = {"teacher": row.get("teacher"), "hnmlp": row.get("hnmlp"), "blind": row.get("blind"), "random": row.get("random")}
        normalised[split] = {k: _normalised(returns[split][k], row.get("teacher"), row.get("random"))
                             for k in ("hnmlp", "blind")}
    return returns, normalised


def run_demo(domain: Domain, out: Path, settings: dict[str, Any], teacher_run: str | None = None,
             data_dir: str | None = None, bench: bool = True, quiet: bool = False,
             progress: Progress | None = None) -> dict[str, Any]:
    """Run (or continue) the demo into the claimed folder ``out``; returns the outcome also saved as demo.json."""
    data_args = ["--data-dir", data_dir] if data_dir else []
    step = Steps(out, dict(os.environ), quiet, progress)
    started = time.perf_counter()
    splits = _splits(domain, step, data_args)
    teacher, teacher_meta = _teacher(domain, out, settings, teacher_run, step, data_args)
    train_tasks, test_tasks = _demo_tasks(splits, teacher_meta, settings["test_tasks"], domain, settings["train_tasks"])
    _distill_students(domain, out, teacher, settings, len(train_tasks), step, data_args)

    policies = f"teacher={teacher},hnmlp={out / 'hnmlp'},blind={out / 'blind'}"
    compared = {}
    for split, n in (("train", len(train_tasks)), ("test", len(test_tasks))):
        compared[split] = step(f"compare-{split}", [
            "compare", domain_label(domain), "--policies", policies, "--split", split, "--num-tasks", str(n),
            "--episodes", str(settings["eval_episodes"]), "--out", str(out / f"compare-{split}"), *data_args],
            f"evaluate teacher, students and random on {split} tasks")
    clip = _render_clip(domain, out, teacher, test_tasks[0], step, data_args)

    task = train_tasks[0]
    exported = step("export", ["export", domain_label(domain), "--student", str(out / "hnmlp"), "--task", task,
                               "--out", str(out / "export" / "policy"), *data_args], f"export the generated MLP of {task}")
    benched = None
    if bench:
        benched = step("bench", ["bench", domain_label(domain), "--teacher", teacher, "--student", str(out / "hnmlp"), "--task", task,
                                 "--preset", settings["bench_preset"], "--out", str(out / "bench"), *data_args],
                       "benchmark teacher against the generated student")

    returns, normalised = _summarise(compared)
    outcome: dict[str, Any] = {
        "domain": domain_label(domain), "out": str(out), "teacher": teacher, "settings": settings,
        "tasks": {"train": train_tasks, "test": test_tasks},
        "returns": returns, "normalised": normalised,
        "export": {"task": task, "file": (exported.get("files") or [None])[0],
                   "max_abs_diff": (exported.get("check") or {}).get("max_abs_diff")},
        "bench": (benched or {}).get("ratios"), "clip": clip,
        "wall_s": {**step.timings, "total": time.perf_counter() - started},
    }
    outcome["report"] = str(write_report(out, outcome))
    atomic_write_json(out / "demo.json", outcome)
    return outcome


def _normalised(value: float | None, teacher: float | None, random: float | None) -> float | None:
    if value is None or teacher is None or random is None or abs(teacher - random) < 1e-9:
        return None
    return (value - random) / (teacher - random)


def format_number(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def write_report(out: Path, outcome: dict[str, Any]) -> Path:
    """A markdown report beside the PNGs the steps wrote."""
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
        lines.append(f"| {split} | {format_number(row['teacher'])} | {format_number(row['hnmlp'])} | {format_number(row['blind'])} | "
                     f"{format_number(row['random'])} | {format_number(norm['hnmlp'], 3)} | {format_number(norm['blind'], 3)} |")
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
