"""The policy interface: trained policies used the same way whatever they are (``kdistill.loading`` reads them).

Use: ``policy.prepare(task, context)`` once per task, then
``policy.act(obs_batch, deterministic=True)`` every step. A teacher ignores ``prepare``; a student
writes its per-task weights there, so one evaluation loop serves both and charges the student's
hypernetwork once per task, as deployment would.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdistill.domain import Layout, TaskContext
from kdistill.rl.distributions import sample_actions
from kdistill.rl.normalise import ObsNormalizer


class Policy:
    """Base interface (see the module docstring)."""

    kind: str = ""
    domain: str = ""
    layout: Layout
    meta: dict[str, Any]

    def prepare(self, task: str, context: TaskContext) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        raise NotImplementedError

    def reseed(self, seed) -> None:
        """Restart the sampling of stochastic actions from ``seed`` (an int or a sequence of ints): evaluation
        reseeds per task, so a task's result does not depend on which tasks ran before it, or where."""
        self.rng = np.random.default_rng(seed)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "domain": self.domain, "arch": self.meta.get("arch"),
                "env_steps": self.meta.get("counters", {}).get("env_steps")}


class TeacherPolicy(Policy):
    """A teacher actor with its frozen observation normaliser."""

    kind = "teacher"

    def __init__(self, model, normalizer, meta: dict[str, Any], device: str = "cpu", seed: int = 0):
        import torch

        self.model = model.to(device).eval()
        self.normalizer = normalizer
        self.normalizer.training = False
        self.meta = meta
        self.domain = meta["domain"]
        self.layout = Layout.from_dict(meta["layout"])
        self.device = torch.device(device)
        self.std = float(model.action_std)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        import torch

        feed = {k: torch.from_numpy(np.ascontiguousarray(obs[k])).to(self.device)
                for k in ("obs_mask", "act_mask", "context", "extero") if k in obs}
        feed["obs"] = torch.from_numpy(self.normalizer.normalize(obs["obs"])).to(self.device)
        with torch.inference_mode():
            mu = self.model.mu(feed).float().cpu().numpy()
        if deterministic:
            return mu
        return sample_actions(mu, self.std, self.rng)


def checked_normalizer(state: Any, shape: tuple[int, ...]):
    """An ObsNormalizer from saved state, checked: the layout's shape, finite statistics, a sane clip."""

    if not isinstance(state, dict):
        raise ValueError("the normaliser state is not a JSON object")
    norm = ObsNormalizer.from_state(state)
    mean, var = np.asarray(norm.rms.mean), np.asarray(norm.rms.var)
    if tuple(norm.shape) != tuple(shape) or mean.shape != tuple(shape) or var.shape != tuple(shape):
        raise ValueError(f"the normaliser has shape {mean.shape}, expected {tuple(shape)} for the policy's layout")
    if not (np.isfinite(mean).all() and np.isfinite(var).all() and (var >= 0).all()):
        raise ValueError("the normaliser holds NaN, infinite or negative statistics")
    if not (np.isfinite(norm.clip) and norm.clip > 0 and np.isfinite(norm.epsilon) and norm.epsilon >= 0):
        raise ValueError("the normaliser's clip or epsilon is not a valid number")
    return norm
