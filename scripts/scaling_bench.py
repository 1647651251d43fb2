"""1 against 2 Ray workers, back to back, for evaluation and expert collection on the 100 UNIMAL training robots
(docs/scaling.md). Runs: local, ray x1, ray x2, ray x2, ray x1 (the repeats in reverse order, so a load that drifts
during the run weighs on both worker counts alike); checks that every run's results are identical; prints one JSON
document with the wall times, env steps per second and speed-ups.

    .venv/bin/python scripts/scaling_bench.py --out /tmp/kdistill-scaling [--episodes 4] [--samples 4000 --envs 16]
    [--only eval|collect]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KDISTILL = [sys.executable, "-m", "kdistill"]
TEACHER = ROOT / "domains/unimal/pretrained/teacher-cpu10"
ORDER = [("local", 1), ("ray", 1), ("ray", 2), ("ray", 2), ("ray", 1)]


def run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def executor_args(name: str, workers: int) -> list[str]:
    return ["--executor", name, "--workers", str(workers)]


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "shards").iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--split", default="train")
    ap.add_argument("--num-tasks", type=int, default=None, help="only the first N tasks (a quick check of the script)")
    ap.add_argument("--only", choices=("eval", "collect"), default=None, help="run one of the two stages")
    args = ap.parse_args()
    first = ["--num-tasks", str(args.num_tasks)] if args.num_tasks else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg(), "eval": [], "collect": []}

    stages = [args.only] if args.only else ["eval", "collect"]
    reference = None
    for k, (name, workers) in enumerate(ORDER if "eval" in stages else []):
        cmd = [*KDISTILL, "eval", "unimal", "--policy", str(TEACHER), "--split", args.split, "--episodes",
               str(args.episodes), "--json", *first, *executor_args(name, workers)]
        seconds, stdout = run(cmd)
        result = json.loads(stdout)
        steps = sum(sum(r["lengths"]) + sum(r.get("random_lengths", [])) for r in result["tasks"])
        if reference is None:
            reference = result["tasks"]
        report["eval"].append({"run": k, "executor": name, "workers": workers, "seconds": seconds,
                               "env_steps": steps, "env_steps_per_s": steps / seconds,
                               "identical": result["tasks"] == reference, "load": os.getloadavg()[0]})
        print(json.dumps(report["eval"][-1]), file=sys.stderr)

    reference = None
    for k, (name, workers) in enumerate(ORDER if "collect" in stages else []):
        folder = out / f"data-{k}-{name}{workers}"
        cmd = [*KDISTILL, "expert", "collect", "unimal", "--teacher", str(TEACHER), "--split", args.split,
               "--samples-per-task", str(args.samples), "--envs", str(args.envs), "--out", str(folder), "--json",
               *first, *executor_args(name, workers)]
        seconds, stdout = run(cmd)
        summary = json.loads(stdout)
        shards = shard_hashes(folder)
        shutil.rmtree(folder)  # 100 shards per run; the hashes are what is compared
        if reference is None:
            reference = shards
        report["collect"].append({"run": k, "executor": name, "workers": workers, "seconds": seconds,
                                  "rows": summary["samples"], "rows_per_s": summary["samples"] / seconds,
                                  "identical": shards == reference, "load": os.getloadavg()[0]})
        print(json.dumps(report["collect"][-1]), file=sys.stderr)

    for what in stages:
        rows = report[what]
        one = [r["seconds"] for r in rows if r["executor"] == "ray" and r["workers"] == 1]
        two = [r["seconds"] for r in rows if r["executor"] == "ray" and r["workers"] == 2]
        report[f"{what}_speedup_2_over_1"] = (sum(one) / len(one)) / (sum(two) / len(two))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
