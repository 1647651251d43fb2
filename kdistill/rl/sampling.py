"""Which task a sub-environment plays next.

``BalancedSampler`` is MetaMorph's balanced scheme: a task whose episodes end early (an agent that
fails) yields few samples per episode, so it is drawn more often. Its probability is
``p_i ∝ (max_episode_length / ema_length_i) ** alpha``, where ``ema_length_i`` is an exponential
moving average of the task's episode lengths. Sampling is uniform for the first
``warmup_iterations`` iterations, and a task's average becomes an EMA only after ``min_episodes``
episodes (before that it is the plain mean of the lengths seen).

Probabilities change only in ``next_iteration()`` and stay fixed during an iteration, as in the
reference, where the sampled task list is rewritten once per iteration. That also lets worker
processes sample with a copy of ``probs()`` pushed to them each iteration.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kdistill.errors import CheckpointError, KdistillError


class TaskSampler:
    """Base interface: ``sample(rng, slot) -> task``; the rest is for samplers that learn from episodes.

    Vector envs pass the index of the sub-env slot that is starting an episode, so a sampler can pin
    tasks to slots (``PinnedSampler``); samplers that draw at random ignore it.
    """

    tasks: list[str]

    def sample(self, rng: np.random.Generator, slot: int | None = None) -> str:
        return self.tasks[int(rng.choice(len(self.tasks), p=self.probs()))]

    def probs(self) -> np.ndarray:
        raise NotImplementedError

    def update(self, task: str, episode_length: int) -> None:
        pass

    def next_iteration(self) -> None:
        pass

    def state(self) -> dict:
        return {"kind": type(self).__name__, "tasks": list(self.tasks)}

    def load_state(self, state: dict) -> None:
        if list(state.get("tasks", [])) != list(self.tasks):
            raise CheckpointError("the saved task sampler is for other tasks than this run; resume with the run's own tasks.")


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    tasks = list(tasks)
    if not tasks:
        raise KdistillError("no tasks to sample from; pass at least one task (e.g. --tasks NAME or --split train).")
    if len(set(tasks)) != len(tasks):
        raise KdistillError("the task list names a task twice; pass each task once.")
    return tasks


class UniformSampler(TaskSampler):
    """Every task equally likely, always."""

    def __init__(self, tasks: Sequence[str]):
        self.tasks = _check_tasks(tasks)

    def probs(self) -> np.ndarray:
        return np.full(len(self.tasks), 1.0 / len(self.tasks))


class PinnedSampler(TaskSampler):
    """Slot ``i`` always plays ``slot_tasks[i]``: one vector env holds every task's own envs.

    It consumes no randomness, so what a slot plays does not depend on the other slots.
    """

    def __init__(self, tasks: Sequence[str], slot_tasks: Sequence[str]):
        self.tasks = _check_tasks(tasks)
        known = set(self.tasks)
        unknown = [t for t in slot_tasks if t not in known]
        if unknown:
            raise KdistillError(f"slot task {unknown[0]!r} is not one of the sampler's tasks.")
        self.slot_tasks = list(slot_tasks)

    def sample(self, rng: np.random.Generator, slot: int | None = None) -> str:
        if slot is None or not 0 <= slot < len(self.slot_tasks):
            raise KdistillError(f"a pinned task sampler needs a slot index in [0, {len(self.slot_tasks)}), got {slot}; "
                                f"the vector env must pass slot= to sample().")
        return self.slot_tasks[slot]

    def probs(self) -> np.ndarray:
        counts = np.array([self.slot_tasks.count(t) for t in self.tasks], np.float64)
        return counts / counts.sum()


class FixedProbsSampler(TaskSampler):
    """Samples with probabilities set from outside (worker processes receive them each iteration)."""

    def __init__(self, tasks: Sequence[str], probs: Sequence[float] | None = None):
        self.tasks = _check_tasks(tasks)
        self._probs = np.full(len(self.tasks), 1.0 / len(self.tasks))
        if probs is not None:
            self.set_probs(probs)

    def set_probs(self, probs: Sequence[float]) -> None:
        p = np.asarray(probs, np.float64)
        if p.shape != (len(self.tasks),) or np.any(p < 0) or p.sum() <= 0:
            raise ValueError(f"probabilities must be {len(self.tasks)} non-negative numbers with a positive sum")
        self._probs = p / p.sum()

    def probs(self) -> np.ndarray:
        return self._probs.copy()


class BalancedSampler(TaskSampler):
    """MetaMorph's balanced task sampling (see the module docstring)."""

    def __init__(self, tasks: Sequence[str], alpha: float = 1.0, warmup_iterations: int = 30,
                 ema: float = 0.1, min_episodes: int = 10, max_episode_length: float = 1000.0):
        self.tasks = _check_tasks(tasks)
        self.alpha, self.warmup_iterations = float(alpha), int(warmup_iterations)
        self.ema, self.min_episodes = float(ema), int(min_episodes)
        self.max_episode_length = float(max_episode_length)
        self._index = {t: i for i, t in enumerate(self.tasks)}
        self.episodes = np.zeros(len(self.tasks), np.int64)
        self.mean_length = np.zeros(len(self.tasks), np.float64)
        self.iteration = 0
        self._probs = np.full(len(self.tasks), 1.0 / len(self.tasks))

    def update(self, task: str, episode_length: int) -> None:
        i = self._index[task]
        self.episodes[i] += 1
        n = self.episodes[i]
        if n <= self.min_episodes:  # plain mean until the EMA has enough history to start from
            self.mean_length[i] += (episode_length - self.mean_length[i]) / n
        else:
            self.mean_length[i] = self.ema * episode_length + (1.0 - self.ema) * self.mean_length[i]

    def next_iteration(self) -> None:
        self.iteration += 1
        self._probs = self._compute_probs()

    def _compute_probs(self) -> np.ndarray:
        n = len(self.tasks)
        if self.iteration < self.warmup_iterations or not self.episodes.any():
            return np.full(n, 1.0 / n)
        seen = self.episodes > 0
        weight = np.zeros(n)
        weight[seen] = (self.max_episode_length / np.maximum(self.mean_length[seen], 1.0)) ** self.alpha
        # a task with no finished episode yet is drawn as often as the most-favoured task, so it gets data
        weight[~seen] = weight[seen].max()
        return weight / weight.sum()

    def probs(self) -> np.ndarray:
        return self._probs.copy()

    def state(self) -> dict:
        return {**super().state(), "episodes": self.episodes.tolist(), "mean_length": self.mean_length.tolist(),
                "iteration": self.iteration, "probs": self._probs.tolist()}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.episodes = np.asarray(state["episodes"], np.int64)
        self.mean_length = np.asarray(state["mean_length"], np.float64)
        self.iteration = int(state["iteration"])
        self._probs = np.asarray(state["probs"], np.float64)
