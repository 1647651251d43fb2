"""Running observation/reward normalisation (the VecNormalize scheme), reusable by any domain.

Statistics are kept per slot and per feature of an array observation (e.g. ``(T, F)``), updated with
the parallel-variance formula from a count of 1e-4, applied as ``clip((x - mean) / sqrt(var + eps), ±clip)``
and frozen for evaluation. Their state is plain arrays, saved with a policy.
"""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    def __init__(self, shape=(), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = float(epsilon)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        batch_mean, batch_var, batch_count = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state(self) -> dict:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}

    def load_state(self, state: dict) -> None:
        self.mean = np.asarray(state["mean"], np.float64)
        self.var = np.asarray(state["var"], np.float64)
        self.count = float(state["count"])


class ObsNormalizer:
    """Normalises one array observation per slot and feature; ``training=False`` freezes the stats."""

    def __init__(self, shape, clip: float = 10.0, epsilon: float = 1e-8):
        self.shape = tuple(shape)
        self.rms = RunningMeanStd(self.shape)
        self.clip = float(clip)
        self.epsilon = float(epsilon)
        self.training = True

    def __call__(self, x: np.ndarray, update: bool | None = None) -> np.ndarray:
        """Normalise a batch ``(N, *shape)``; update the stats first when training."""
        if (self.training if update is None else update):
            self.rms.update(x)
        return self.normalize(x)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        out = (x - self.rms.mean) / np.sqrt(self.rms.var + self.epsilon)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, offset)`` with ``normalize(x) == clip(x * scale + offset)``: for folding into exports."""
        scale = 1.0 / np.sqrt(self.rms.var + self.epsilon)
        return scale.astype(np.float32), (-self.rms.mean * scale).astype(np.float32)

    def state(self) -> dict:
        return {"shape": list(self.shape), "clip": self.clip, "epsilon": self.epsilon, **self.rms.state()}

    @classmethod
    def from_state(cls, state: dict) -> "ObsNormalizer":
        norm = cls(state["shape"], clip=state["clip"], epsilon=state["epsilon"])
        norm.rms.load_state(state)
        norm.training = False
        return norm


class RewardNormalizer:
    """Scales rewards by the running std of the discounted return (reset on episode end), clipped."""

    def __init__(self, num_envs: int, gamma: float = 0.99, clip: float = 10.0, epsilon: float = 1e-8):
        self.rms = RunningMeanStd(())
        self.ret = np.zeros(num_envs, np.float64)
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + rewards
        self.rms.update(self.ret)
        out = np.clip(rewards / np.sqrt(self.rms.var + self.epsilon), -self.clip, self.clip)
        self.ret[dones] = 0.0
        return out.astype(np.float32)

    def state(self) -> dict:
        return {**self.rms.state(), "ret": self.ret.tolist()}

    def load_state(self, state: dict) -> None:
        self.rms.load_state(state)
        self.ret = np.asarray(state["ret"], np.float64)
