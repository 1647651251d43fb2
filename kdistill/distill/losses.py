"""Distillation losses, registered by name: ``fn(student_mu (B, T*A), batch) -> scalar tensor``.

``batch`` holds ``mu`` (teacher mean action), ``action`` (the teacher's sampled action) and ``act_mask``
(True = padded action slot), all ``(B, T*A)``, and optionally ``action_std`` (default 0.9). Both losses
are *balanced*: each row is averaged over its own valid action dims before the batch mean, so tasks with
few action dims weigh as much as tasks with many.
"""

from __future__ import annotations

import math

import torch

from kdistill.rl.distributions import ACTION_STD


def _valid(batch) -> tuple[torch.Tensor, torch.Tensor]:
    valid = (~batch["act_mask"].bool()).to(torch.float32)
    return valid, valid.sum(-1).clamp(min=1.0)


def mse_loss(student_mu: torch.Tensor, batch) -> torch.Tensor:
    """The reference's balanced KL on means: ``0.5 * sum_d (mu_s - mu_t)^2 / n_valid``, batch mean.

    With the same fixed std for both Gaussians this is KL(teacher || student) times std^2.
    """
    valid, n_valid = _valid(batch)
    sq = (student_mu - batch["mu"]).pow(2) * valid
    return (0.5 * sq.sum(-1) / n_valid).mean()


def logp_loss(student_mu: torch.Tensor, batch) -> torch.Tensor:
    """Balanced negative log-likelihood of the teacher's sampled action under ``N(mu_s, std)``."""
    std = float(batch.get("action_std", ACTION_STD)) if hasattr(batch, "get") else ACTION_STD
    valid, n_valid = _valid(batch)
    z = (batch["action"] - student_mu) / std
    nll = 0.5 * z.pow(2) + math.log(std) + 0.5 * math.log(2 * math.pi)
    return ((nll * valid).sum(-1) / n_valid).mean()


LOSSES = {"mse": mse_loss, "logp": logp_loss}
