"""The reference evaluation protocol (reference section 6.1), for any policy and domain.

Per task: ``episodes`` envs of that task, each playing exactly one episode from its own reset seed;
the policy acts on the batch of envs still running (the deterministic mean action by default);
returns are raw and undiscounted. A task's score is the mean over its episodes, the summary the mean
over tasks. A random policy (actions uniform in [-1, 1]) plays the same envs from the same seeds.
Every draw of a task (resets, stochastic actions, the random policy) is seeded by ``(seed, task position)``, so
tasks can run on any executor's workers (``kdistill.executors``) with the same results.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import numpy as np

from kdistill.domain import domain_label
from kdistill.errors import CheckpointError
from kdistill.executors import DomainRef, Executor, LocalExecutor, PolicyRef
from kdistill.rl.vec import stack_obs


def play_episodes(envs: Sequence[Any], seeds: Sequence[int], act: Callable[[dict[str, np.ndarray]], np.ndarray]):
    """Each env plays one episode from ``seeds[i]``; returns ``(returns, lengths)`` as lists."""
    n = len(envs)
    obs = [env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)]
    returns, lengths = np.zeros(n), np.zeros(n, np.int64)
    active = list(range(n))
    while active:
        actions = np.asarray(act(stack_obs([obs[i] for i in active])), np.float32)
        still = []
        for row, i in enumerate(active):
            obs[i], reward, terminated, truncated, _ = envs[i].step(actions[row])
            returns[i] += float(reward)
            lengths[i] += 1
            if not (terminated or truncated):
                still.append(i)
        active = still
    return returns.tolist(), lengths.tolist()


def evaluate_task(domain, policy, task: str, index: int, episodes: int = 16, seed: int = 0, deterministic: bool = True,
                  random_baseline: bool = True) -> dict[str, Any]:
    """One task's row of ``evaluate_policy``; ``index`` is the task's position in the evaluated list. Every random
    draw comes from ``(seed, index)``, so the row is the same whichever executor runs it and in whatever order."""
    seeds = task_seeds(seed, index, episodes)
    envs = [domain.make_env(task) for _ in range(episodes)]
    try:
        policy.prepare(task, domain.context(task))
        policy.reseed([seed, index])
        returns, lengths = play_episodes(envs, seeds, lambda o: policy.act(o, deterministic=deterministic))
        row: dict[str, Any] = {"name": task, "returns": returns, "lengths": lengths, "mean": float(np.mean(returns))}
        if random_baseline:
            rng = np.random.default_rng([seed, index, 1])
            num_actions = domain.layout.num_actions
            rand, rand_len = play_episodes(
                envs, seeds, lambda o, n=num_actions: rng.uniform(-1.0, 1.0, (o["obs"].shape[0], n)))
            row.update(random_returns=rand, random_lengths=rand_len, random_mean=float(np.mean(rand)))
    finally:
        for env in envs:
            env.close()
    return row


def task_seeds(seed: int, index: int, episodes: int) -> list[int]:
    """The reset seeds of the task at ``index`` of an evaluated list."""
    return [int(s) for s in np.random.SeedSequence([seed, index]).generate_state(episodes)]


def evaluate_together(domain, policy, tasks: Sequence[str], episodes: int = 1, seed: int = 0) -> dict[str, float]:
    """Each task's mean deterministic return, with every task's episodes played in one batch (one ``act`` per step
    over all of them): for a policy that reads its task from the observations and needs no ``prepare``, such as a
    teacher. Each task's episodes start from the seeds ``evaluate_task`` gives it; the actions can differ from its in
    the last bits, since the batch differs."""
    envs, seeds = [], []
    try:
        for index, task in enumerate(tasks):
            seeds += task_seeds(seed, index, episodes)
            envs += [domain.make_env(task) for _ in range(episodes)]
        returns, _ = play_episodes(envs, seeds, lambda o: policy.act(o, deterministic=True))
    finally:
        for env in envs:
            env.close()
    return {task: float(np.mean(returns[i * episodes:(i + 1) * episodes])) for i, task in enumerate(tasks)}


@attrs.frozen
class EvalJob:
    """``evaluate_task`` for an executor whose workers are other processes: the domain and the policy by reference."""

    domain: DomainRef
    policy: PolicyRef
    episodes: int
    seed: int
    deterministic: bool
    random_baseline: bool
    threads: int = 1

    def __call__(self, item: tuple[int, str]) -> dict[str, Any]:
        import torch

        torch.set_num_threads(self.threads)
        index, task = item
        return evaluate_task(self.domain.build(), self.policy.build(), task, index, self.episodes, self.seed,
                             self.deterministic, self.random_baseline)


def evaluate_policy(domain, policy, tasks: Sequence[str], episodes: int = 16, seed: int = 0,
                    deterministic: bool = True, random_baseline: bool = True,
                    on_task: Callable[[dict[str, Any]], None] | None = None, executor: Executor | None = None,
                    threads: int = 1) -> dict[str, Any]:
    """Evaluate ``policy`` (a ``kdistill.policy.Policy``) on ``tasks``; see the module docstring.

    ``executor``: where the tasks run (default: this process, in order); ``on_task`` sees each row as it finishes.
    ``threads``: torch threads of an executor's workers."""
    if policy.layout != domain.layout:
        raise CheckpointError(f"the policy's layout {policy.layout.to_dict()} differs from domain {domain.name!r}'s "
                              f"{domain.layout.to_dict()}; it was trained for another version of the domain.")
    executor = executor or LocalExecutor()
    if executor.in_process:
        job = lambda item: evaluate_task(domain, policy, item[1], item[0], episodes, seed, deterministic, random_baseline)
    else:
        job = EvalJob(DomainRef.of(domain), PolicyRef.of(policy), episodes, seed, deterministic, random_baseline, threads)
    rows: list[Any] = [None] * len(tasks)
    for index, row in executor.imap_unordered(job, list(enumerate(tasks))):
        rows[index] = row
        if on_task is not None:
            on_task(row)
    summary: dict[str, Any] = {"mean_return": float(np.mean([r["mean"] for r in rows])) if rows else None,
                               "tasks": len(rows), "episodes": episodes, "deterministic": deterministic, "seed": seed}
    if random_baseline:
        summary["random_mean_return"] = float(np.mean([r["random_mean"] for r in rows])) if rows else None
    return {"summary": summary, "tasks": rows}


def compare_policies(domain, policies: dict[str, Any], splits: dict[str, list[str]], episodes: int = 16, seed: int = 0,
                     deterministic: bool = True, random_baseline: bool = True, on_task=None,
                     executor: Executor | None = None, threads: int = 1) -> dict[str, Any]:
    """Evaluate every policy on every split's tasks (same envs, same reset seeds) and tabulate mean returns.
    ``executor``, ``threads``: as in ``evaluate_policy``."""
    returns: dict[str, dict[str, float | None]] = {}
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for split, tasks in splits.items():
        returns[split], per_task[split] = {}, {t: {} for t in tasks}
        for k, (name, policy) in enumerate(policies.items()):
            with_random = random_baseline and k == 0  # the random policy plays the same seeds whoever runs it
            result = evaluate_policy(domain, policy, tasks, episodes=episodes, seed=seed, deterministic=deterministic,
                                     random_baseline=with_random, executor=executor, threads=threads,
                                     on_task=(lambda row, n=name, s=split: on_task(s, n, row)) if on_task else None)
            returns[split][name] = result["summary"]["mean_return"]
            for row in result["tasks"]:
                per_task[split][row["name"]][name] = row["mean"]
                if with_random:
                    per_task[split][row["name"]]["random"] = row["random_mean"]
            if with_random:
                returns[split]["random"] = result["summary"]["random_mean_return"]
    out: dict[str, Any] = {"domain": domain_label(domain), "episodes": episodes, "seed": seed, "deterministic": deterministic,
                           "tasks": {s: list(t) for s, t in splits.items()}, "returns": returns, "per_task": per_task}
    if "teacher" in policies:
        # a fraction of a non-positive return means nothing, so it is left out (None)
        out["fraction_of_teacher"] = {
            s: {n: (r / row["teacher"] if r is not None and (row.get("teacher") or 0) > 0 else None)
                for n, r in row.items() if n not in ("teacher", "random")}
            for s, row in returns.items()}
    return out


def comparison_markdown(result: dict[str, Any]) -> str:
    """``compare_policies``'s result as markdown: the mean per split (with the fraction of the teacher's), then one
    table per split with every task's mean return per policy, ready to paste into a report."""
    seen = list(dict.fromkeys(n for means in result["returns"].values() for n in means))
    names = [n for n in seen if n != "random"] + [n for n in seen if n == "random"]
    fractions = result.get("fraction_of_teacher", {})

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    def text(name: str) -> str:  # task, split and policy names may hold a table's separator
        return str(name).replace("|", "\\|")

    kind = "mean action" if result.get("deterministic", True) else "stochastic"
    lines = [f"Mean return over tasks, {result['episodes']} episodes per task ({kind}), domain `{result['domain']}`.", "",
             "| policy | " + " | ".join(f"{text(s)} ({len(result['tasks'][s])})" + (f" | {text(s)} / teacher" if fractions else "")
                                      for s in result["returns"]) + " |",
             "|---|" + "---|" * (len(result["returns"]) * (2 if fractions else 1))]
    for name in names:
        cells = []
        for split, means in result["returns"].items():
            cells.append(cell(means.get(name)))
            if fractions:
                frac = fractions.get(split, {}).get(name)
                cells.append("-" if frac is None else f"{frac:.2f}x")
        lines.append(f"| {text(name)} | " + " | ".join(cells) + " |")
    for split, rows in result["per_task"].items():
        lines += ["", f"Per task, {text(split)} ({len(rows)}):", "", "| task | " + " | ".join(map(text, names)) + " |",
                  "|---|" + "---|" * len(names)]
        lines += [f"| {text(task)} | " + " | ".join(cell(row.get(n)) for n in names) + " |" for task, row in rows.items()]
    return "\n".join(lines) + "\n"
