"""The one action distribution of kdistill: a diagonal Gaussian with a fixed std around the policy's mean.

Teachers, students and PPO all use it; ``ACTION_STD`` is the default std (a domain's teacher may choose another,
carried as the model's ``action_std``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the module stays torch-free: numpy callers (policies, expert data) import it too
    import torch

ACTION_STD = 0.9


def gaussian_log_prob(mu: torch.Tensor, std: float, actions: torch.Tensor, act_mask: torch.Tensor) -> torch.Tensor:
    """Joint log-density of ``actions`` under ``Normal(mu, std)``, summed over non-padded dims."""
    logp = -0.5 * ((actions - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.masked_fill(act_mask, 0.0).sum(-1)


def action_std_of(model) -> float:
    """The std a model acts with: its ``action_std`` attribute, else ``ACTION_STD``."""
    return float(getattr(model, "action_std", ACTION_STD))


def sample_actions(mu: np.ndarray, std: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mu`` plus Gaussian noise of ``std`` (numpy; expert data and stochastic acting)."""
    return add_noise(mu, std, rng.standard_normal(mu.shape))


def add_noise(mu: np.ndarray, std: float | np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``sample_actions`` with its standard normal draws (``noise``, of ``mu``'s shape) made beforehand."""
    return (mu + std * noise).astype(np.float32)
