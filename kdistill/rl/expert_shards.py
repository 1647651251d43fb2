"""Per-task experts sharded over an executor's workers (``kdistill experts train --executor ray --workers N``).

The tasks are cut into N contiguous shards; each worker trains its shard as an ordinary expert run, a batched trainer
of its own (``kdistill.rl.experts``), in ``RUN/shards/shard-<k>``, and ``RUN/shards.json`` records the run's settings
and each shard's tasks. Tasks never share a statistic, so a task trains the same in a shard as in one process
(``tests/test_experts.py::test_batched_run_equals_separate_runs``). A shard whose worker dies is run again by the
executor and continues from its newest checkpoint, as ``--resume`` would; the driver waits for every shard.

On a cluster the run folder must be on storage every node sees: each shard writes its own checkpoints.
``kdistill experts export`` and ``status`` read a sharded run as one (``kdistill.rl.experts.load_sharded``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np

from kdistill.errors import CheckpointError, KdistillError
from kdistill.executors import DomainRef, Executor
from kdistill.io import atomic_write_json, claim_folder, latest_checkpoint
from kdistill.rl.experts import (
    SHARDS_FILE,
    ExpertConfig,
    ExpertRunSettings,
    check_budget,
    is_sharded,
    read_shard_plan,
    shard_dir,
    start_or_resume,
    stop_after,
)

FORMAT = "kdistill-expert-shards/1"


def split_tasks(tasks: Sequence[str], shards: int) -> list[list[str]]:
    """``tasks`` cut into at most ``shards`` contiguous pieces whose sizes differ by at most one."""
    tasks = list(tasks)
    n = max(1, min(shards, len(tasks)))
    sizes = [len(tasks) // n + (1 if i < len(tasks) % n else 0) for i in range(n)]
    bounds = np.cumsum([0, *sizes])
    return [tasks[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@attrs.frozen
class ShardJob:
    """Train one shard to its end (or ``max_updates`` more updates): fresh, or from its newest checkpoint."""

    domain: DomainRef
    settings: dict = attrs.field(eq=False)  # ExpertRunSettings.to_dict() of the whole run
    run: str
    threads: int = 1
    max_updates: int | None = None

    def __call__(self, item: tuple[int, list[str]]) -> dict[str, Any]:
        import torch

        torch.set_num_threads(self.threads)
        k, tasks = item
        domain = self.domain.build()
        settings = ExpertRunSettings(**{**self.settings, "tasks": tasks})
        run_dir = shard_dir(self.run, k)
        # an attempt after a lost worker, or a resumed run, continues from the shard's newest checkpoint
        resume = run_dir.is_dir() and latest_checkpoint(run_dir) is not None
        trainer = start_or_resume(domain, settings, ExpertConfig.presets()[settings.preset], run_dir, resume)
        try:
            last = trainer.train(should_stop=stop_after(self.max_updates))
            return {"shard": k, "tasks": trainer.task_table(), "env_steps": int(trainer.env_steps.sum()),
                    "updates": trainer.updates, "wall_s": trainer.wall_s, "active_tasks": int(trainer.active.sum()),
                    "steps_per_s": last.get("steps_per_s")}
        finally:
            trainer.close()


def train_sharded(domain, settings: ExpertRunSettings, run: str | Path, executor: Executor, resume: bool = False,
                  threads: int = 1, max_updates: int | None = None,
                  on_shard: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``settings.tasks`` in ``executor.workers`` shards under ``run`` (see the module docstring); a resumed run
    keeps its own shards, whatever the number of workers. Returns the summary of every shard, merged."""
    run = Path(run)
    plan_path = run / SHARDS_FILE
    if is_sharded(run):
        if not resume:
            raise KdistillError(f"{run} already holds a sharded expert run; pass --resume to continue it or choose a "
                                f"new --out folder.")
        plan = read_shard_plan(run)
        saved = dict(plan["settings"])
        raised = check_budget(saved.pop("steps_per_task", None), settings.steps_per_task)
        if saved != {k: v for k, v in settings.to_dict().items() if k != "steps_per_task"}:
            raise CheckpointError(f"{run} was started with other settings ({plan_path}); resume with the run's own "
                                  f"settings or choose a new --out folder.")
        shards = plan["shards"]
        if raised is not None:  # each shard raises its own budget when it resumes
            atomic_write_json(plan_path, {**plan, "settings": settings.to_dict()})
    else:
        if resume:
            raise KdistillError(f"{run} holds no sharded expert run to resume; drop --resume to start one.")
        claim_folder(run, "experts-sharded")
        shards = split_tasks(settings.tasks, executor.workers)
        atomic_write_json(plan_path, {"format": FORMAT, "settings": settings.to_dict(), "shards": shards})
    job = ShardJob(DomainRef.of(domain), settings.to_dict(), str(run.resolve()), threads, max_updates)
    results: list[Any] = [None] * len(shards)
    for k, result in executor.imap_unordered(job, list(enumerate(shards))):
        results[k] = result
        if on_shard is not None:
            on_shard(result)
    table = [row for r in results for row in r["tasks"]]
    best = [row["best_return"] for row in table if row["best_return"] is not None]
    return {"run": str(run), "shards": len(shards), "env_steps": sum(r["env_steps"] for r in results),
            "wall_s": max(r["wall_s"] for r in results), "active_tasks": sum(r["active_tasks"] for r in results),
            "mean_best_return": float(np.mean(best)) if best else None, "tasks": table,
            "per_shard": [{k: v for k, v in r.items() if k != "tasks"} for r in results]}
