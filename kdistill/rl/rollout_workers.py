"""PPO rollouts on an executor's pinned workers (``kdistill teacher train --executor ray --workers N``).

The learner's ``num_envs`` env slots are cut into ``N`` contiguous slices, one per worker. At each update the learner
sends every worker the same ``RolloutJob``: a CPU copy of the policy's weights (a state dict of numpy arrays), the
observation statistics, the task probabilities and the iteration. A worker builds its slice's envs and the policy
once and keeps them (``Executor.pinned``), so its episodes run on from one update to the next; it steps its slice for
``num_steps`` steps and returns the trajectories: raw observations (one more than the steps, for the bootstrap and the
statistics), actions, log-probabilities, values, raw rewards, terminations, truncations, the bootstrap values and the
episodes that ended. The learner then normalises rewards, updates the statistics and the task sampler, and computes
GAE exactly as for its own rollout (``kdistill.rl.trainer``).

What a slot plays and the noise on its actions come from ``(seed, iteration, slot)`` alone: envs restart from
per-slot seeds of ``(seed, iteration, slot)`` at the start of a run and after every checkpoint, and the noise of
each rollout is drawn per slot too. So any executor gives the same trajectories for the same slices, and how the
slots are cut into slices only changes how the policy's forward passes are batched (float rounding). The
observation statistics stay fixed during a rollout and take its observations afterwards, in step order.

A worker that lost its state (its process died and was replaced, or a job of another iteration reached it) restarts
its slice's episodes from the seeds of ``(seed, iteration, slot)``, as after a checkpoint, and says so (``fresh``);
the learner then zeroes those slots' discounted returns. Nothing is lost or counted twice: each slice's trajectories
come back once per update.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import attrs
import numpy as np

from kdistill.errors import KdistillError

OBS_KEYS = ("obs", "obs_mask", "act_mask", "context", "extero")  # what the policy reads


@attrs.frozen
class RolloutSlice:
    """Slots ``start`` to ``start + count - 1`` of the learner's envs, stepped by worker ``index``."""

    index: int
    start: int
    count: int


def plan_slices(num_envs: int, workers: int) -> list[RolloutSlice]:
    """``workers`` contiguous slices of ``num_envs`` slots, the first ones one slot longer when it does not divide."""
    if workers < 1:
        raise KdistillError(f"rollout workers must be at least 1, got {workers}.")
    if workers > num_envs:
        raise KdistillError(f"--workers {workers} exceeds the {num_envs} envs of the PPO preset: each rollout worker "
                            f"steps at least one env; pass --workers {num_envs} or fewer.")
    sizes = [num_envs // workers + (1 if k < num_envs % workers else 0) for k in range(workers)]
    starts = np.cumsum([0] + sizes[:-1])
    return [RolloutSlice(k, int(s), n) for k, (s, n) in enumerate(zip(starts, sizes))]


def slot_streams(seed: int, iteration: int, slot: int) -> tuple[int, np.random.Generator]:
    """A slot's env reset seed and its action-noise generator for the rollout of ``iteration``."""
    reset, noise = np.random.SeedSequence([seed, iteration, slot]).spawn(2)
    return int(reset.generate_state(1)[0]), np.random.default_rng(noise)


def policy_weights(model) -> dict[str, np.ndarray]:
    """A CPU copy of ``model``'s weights, as plain arrays (what a rollout job carries)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


@attrs.frozen(eq=False)
class RolloutJob:
    """One update's rollout of one slice (see the module docstring); ``job(slice, state)`` on a pinned worker.

    ``domain`` is a ``DomainRef`` for workers in other processes, or the domain itself in this one; ``teacher`` is
    what ``kdistill.teachers.lookup.build_teacher`` reads (arch, config, layout); ``threads`` sets the worker's torch
    threads (None in this process: the learner's own setting stays).
    """

    domain: Any
    tasks: tuple[str, ...]
    teacher: dict = attrs.field(repr=False)
    weights: dict = attrs.field(repr=False)
    obs_norm: dict = attrs.field(repr=False)
    probs: tuple[float, ...] = attrs.field(repr=False)
    run: str  # which trainer the envs belong to: a worker serves one run
    seed: int
    iteration: int
    num_steps: int
    reset: bool  # the learner restarts every episode (start of a run, after a checkpoint)
    threads: int | None = 1

    def __call__(self, part: RolloutSlice, state: dict) -> dict[str, Any]:
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        envs = self._envs(part, state)
        model = self._model(state)
        fresh = self.reset or state.get("iteration") != self.iteration
        if fresh:
            raw = envs.reset(seed=[slot_streams(self.seed, self.iteration, s)[0] for s in _slots(part)])
        else:
            raw = state["obs"]
        try:
            out = _step_slice(envs, model, raw, part, self)
        except BaseException:
            state.pop("iteration", None)  # the envs are mid-rollout: the next job restarts them
            raise
        state["obs"], state["iteration"] = out.pop("next_obs"), self.iteration + 1
        out["fresh"] = bool(fresh)
        return out

    def _envs(self, part: RolloutSlice, state: dict):
        from kdistill.executors import DomainRef, close_state
        from kdistill.rl.sampling import FixedProbsSampler

        if state.get("run") != (self.run, part):
            close_state(state)  # a worker keeps one run's envs: another run's are closed, not kept
            domain = self.domain.build() if isinstance(self.domain, DomainRef) else self.domain
            state["sampler"] = FixedProbsSampler(self.tasks)
            state["envs"] = domain.make_vec_env(list(self.tasks), part.count, sampler=state["sampler"],
                                                threads=self.threads or 1)
            state["run"] = (self.run, part)
        state["sampler"].set_probs(self.probs)
        return state["envs"]

    def _model(self, state: dict):
        import torch

        from kdistill.teachers.lookup import build_teacher

        key = json.dumps(self.teacher, sort_keys=True, default=list)
        if state.get("model_key") != key:
            with torch.random.fork_rng(devices=[]):  # in the learner's process, its random stream stays as it was
                state["model"] = build_teacher(self.teacher).eval()
            state["model_key"] = key
        model = state["model"]
        # a copy: arrays from Ray's object store are read-only, which torch.from_numpy warns about
        model.load_state_dict({k: torch.tensor(v) for k, v in self.weights.items()})
        return model


def _slots(part: RolloutSlice) -> range:
    return range(part.start, part.start + part.count)


def _step_slice(envs, model, raw: dict[str, np.ndarray], part: RolloutSlice, job: RolloutJob) -> dict[str, Any]:
    """Step the slice ``num_steps`` times with the job's policy and noise; arrays are ``(steps, count, ...)``."""
    import torch

    from kdistill.rl.distributions import gaussian_log_prob
    from kdistill.rl.normalise import ObsNormalizer

    steps, n = job.num_steps, part.count
    norm = ObsNormalizer.from_state(job.obs_norm)
    keys = [k for k in raw if k in OBS_KEYS]
    noise = np.stack([slot_streams(job.seed, job.iteration, s)[1].standard_normal(
        (steps, model.layout.num_actions), dtype=np.float32) for s in _slots(part)], axis=1)
    obs = {k: np.empty((steps + 1, *np.shape(raw[k])), np.asarray(raw[k]).dtype) for k in keys}
    out: dict[str, Any] = {
        "actions": np.empty((steps, n, model.layout.num_actions), np.float32),
        "values": np.empty((steps, n), np.float32), "logp": np.empty((steps, n), np.float32),
        "rewards": np.empty((steps, n), np.float32), "terminated": np.empty((steps, n), bool),
        "truncated": np.empty((steps, n), bool), "episodes": [], "unstable": [],
    }
    std = model.action_std

    def policy_input(o):
        return {k: torch.from_numpy(np.ascontiguousarray(norm.normalize(o[k]) if k == "obs" else o[k])) for k in keys}

    for t in range(steps):
        for k in keys:
            obs[k][t] = raw[k]
        obs_t = policy_input(raw)
        with torch.inference_mode():
            mu, value = model(obs_t)
        mu, value = mu.float(), value.float()
        actions = mu + std * torch.from_numpy(noise[t])
        logp = gaussian_log_prob(mu, std, actions, obs_t["act_mask"])
        out["actions"][t], out["values"][t], out["logp"][t] = actions.numpy(), value.numpy(), logp.numpy()
        raw, rewards, terminated, truncated, infos = envs.step(out["actions"][t])
        out["rewards"][t], out["terminated"][t], out["truncated"][t] = rewards, terminated, truncated
        for i, info in enumerate(infos):
            slot = part.start + i
            if info.get("unstable"):
                out["unstable"].append((t, slot, info.get("task", "?")))
            ep = info.get("episode")
            if ep is not None:
                out["episodes"].append((t, slot, ep["task"], float(ep["return"]), int(ep["length"])))
    for k in keys:
        obs[k][steps] = raw[k]
    with torch.inference_mode():
        out["last_value"] = model.value(policy_input(raw)).float().numpy().copy()
    out["obs"], out["next_obs"] = obs, raw
    return out


@attrs.frozen
class MergedRollout:
    """The slices' trajectories side by side, slot order; ``episodes``/``unstable`` in step, then slot order."""

    obs: dict[str, np.ndarray]  # (steps + 1, num_envs, ...)
    arrays: dict[str, np.ndarray]  # actions, values, logp, rewards, terminated, truncated: (steps, num_envs, ...)
    last_value: np.ndarray  # (num_envs,)
    fresh: np.ndarray  # (num_envs,) bool: the slot's episodes restarted at this rollout's start
    episodes: list[tuple[int, int, str, float, int]]
    unstable: list[tuple[int, int, str]]


def merge_slices(parts: Sequence[dict[str, Any]], slices: Sequence[RolloutSlice]) -> MergedRollout:
    obs = {k: np.concatenate([p["obs"][k] for p in parts], axis=1) for k in parts[0]["obs"]}
    arrays = {k: np.concatenate([p[k] for p in parts], axis=1)
              for k in ("actions", "values", "logp", "rewards", "terminated", "truncated")}
    fresh = np.concatenate([np.full(s.count, p["fresh"]) for p, s in zip(parts, slices)])
    return MergedRollout(obs, arrays, np.concatenate([p["last_value"] for p in parts]), fresh,
                         sorted(e for p in parts for e in p["episodes"]), sorted(u for p in parts for u in p["unstable"]))
