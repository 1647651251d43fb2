"""PPO rollouts only: the learner's own rollout against 1 and 2 Ray rollout workers (docs/scaling.md).

A ``PPOTrainer`` of the first N UNIMAL training robots rolls out with fixed weights: one warm-up rollout (envs built,
workers started), then ``--reps`` timed ones, for the learner, ray x1, ray x2, ray x2 and ray x1 (the repeats in
reverse order, so a load that drifts weighs on both worker counts alike). It checks that 1 and 2 Ray workers give the
same batches and prints one JSON document with the times and ratios.

    KDISTILL_UNIMAL_DIR=... .venv/bin/python scripts/rollout_bench.py [--num-tasks 2] [--reps 4] [--preset cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

ORDER = [("learner", 0), ("ray", 1), ("ray", 2), ("ray", 2), ("ray", 1)]


def rollouts(trainer, reps: int) -> tuple[list[float], list[dict]]:
    trainer.rollout()
    times, batches = [], []
    for _ in range(reps):
        start = time.perf_counter()
        batch, _ = trainer.rollout()
        times.append(time.perf_counter() - start)
        batches.append(batch)
        trainer.iteration += 1  # each rollout draws from its own iteration's seeds, as in training
    return times, batches


def same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def main() -> None:
    from kdistill.plugins import get_domain, get_plugins
    from kdistill.rl.ppo import PPOConfig
    from kdistill.rl.trainer import PPOTrainer, RunSettings
    from kdistill_ray.executor import RayExecutor

    ap = argparse.ArgumentParser()
    ap.add_argument("--num-tasks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--preset", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    domain = get_domain("unimal")
    spec = get_plugins().teachers.get(domain.default_teacher)
    config = PPOConfig.presets()[args.preset]
    settings = RunSettings(domain="unimal", tasks=domain.tasks("train")[: args.num_tasks], teacher=domain.default_teacher,
                           preset=args.preset, seed=0, total_steps=config.batch_size * 1000, checkpoint_every=1000)
    report: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg(), "steps_per_rollout": config.batch_size, "runs": []}
    seen: dict[int, list[dict]] = {}
    for name, workers in ORDER:
        executor = RayExecutor(workers=workers) if name == "ray" else None
        trainer = PPOTrainer(domain, settings, spec, spec.config_cls.presets()[args.preset], config, executor=executor)
        try:
            times, batches = rollouts(trainer, args.reps)
        finally:
            trainer.close()
            if executor is not None:
                executor.close()
        if name == "ray":
            seen.setdefault(workers, batches)
            report.setdefault("repeats_identical", True)
            report["repeats_identical"] &= same(seen[workers], batches)
        report["runs"].append({"rollout": name, "workers": workers, "seconds": times,
                               "env_steps_per_s": config.batch_size * len(times) / sum(times)})
    total = {w: sum(sum(r["seconds"]) for r in report["runs"] if r["rollout"] == "ray" and r["workers"] == w) for w in (1, 2)}
    learner = sum(report["runs"][0]["seconds"])
    report.update(ray1_equals_ray2=same(seen[1], seen[2]), speedup_2_over_1=total[1] / total[2],
                  ray1_over_learner=2 * learner / total[1], load_after=os.getloadavg())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
