"""PPO math for any domain: the settings (``PPOConfig``), the learning-rate schedule, GAE and one update.

The algorithm is the HyperDistill / MetaMorph one (reference section 3.3): a Gaussian policy with a
fixed std (``kdistill.rl.distributions``), GAE in which a time-limit step's return is its own value (no
bootstrap from the final observation), clipped surrogate and clipped value loss, a KL early stop that ends
the whole update, cosine learning rate with a linear warm-up and gradient clipping. The loop that collects
rollouts, normalises and checkpoints is ``kdistill.rl.trainer``.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Sequence

import attrs
import numpy as np
import torch

from kdistill.rl.distributions import gaussian_log_prob

_pos = attrs.validators.gt(0)
_nonneg = attrs.validators.ge(0)


@attrs.frozen
class PPOConfig:
    """PPO settings. ``paper`` = reference 3.3 (flat terrain); ``cpu`` = smaller batches for 2 cores."""

    num_envs: int = attrs.field(default=32, validator=_pos)
    num_steps: int = attrs.field(default=2560, validator=_pos)  # per env per iteration
    epochs: int = attrs.field(default=8, validator=_pos)
    minibatch_size: int = attrs.field(default=5120, validator=_pos)
    gamma: float = attrs.field(default=0.99, validator=[_nonneg, attrs.validators.le(1)])
    gae_lambda: float = attrs.field(default=0.95, validator=[_nonneg, attrs.validators.le(1)])
    clip_eps: float = attrs.field(default=0.2, validator=_pos)  # policy ratio and value clipping
    value_coef: float = attrs.field(default=0.5, validator=_nonneg)
    lr: float = attrs.field(default=3e-4, validator=_pos)
    min_lr: float = attrs.field(default=0.0, validator=_nonneg)
    warmup_iterations: int = attrs.field(default=5, validator=_nonneg)
    warmup_factor: float = attrs.field(default=0.1, validator=_pos)
    max_grad_norm: float = attrs.field(default=0.5, validator=_pos)
    adam_eps: float = attrs.field(default=1e-5, validator=_pos)
    kl_target_coef: float | None = attrs.field(default=5.0)  # stop the update when approx KL > coef * 0.01; None = never
    normalize_reward: bool = True
    obs_clip: float = attrs.field(default=10.0, validator=_pos)
    reward_clip: float = attrs.field(default=10.0, validator=_pos)
    task_sampling: str = attrs.field(default="balanced", validator=attrs.validators.in_(("balanced", "uniform")))
    sampling_alpha: float = attrs.field(default=1.0, validator=_nonneg)
    sampling_warmup_iterations: int = attrs.field(default=30, validator=_nonneg)

    def __attrs_post_init__(self):
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size {self.minibatch_size} exceeds the batch of {self.batch_size} samples "
                             f"(num_envs x num_steps)")
        if self.kl_target_coef is not None and self.kl_target_coef <= 0:
            raise ValueError("kl_target_coef must be positive or None")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @classmethod
    def presets(cls) -> dict[str, "PPOConfig"]:
        return {
            "paper": cls(),
            # 2 cores: the transformer update, not the simulator, is the cost, so fewer epochs over a
            # 4096-sample batch in 512-sample minibatches: 32 gradient steps per iteration instead of
            # the paper's 128 on 20x more data, and a policy refreshed every 256 env steps per env.
            "cpu": cls(num_envs=16, num_steps=256, epochs=4, minibatch_size=512),
            # a many-core machine with a GPU: 4x the envs of `cpu` (simulation spread over worker
            # processes), the same number of gradient steps per sample, larger GPU-friendly minibatches.
            "gpu": cls(num_envs=64, num_steps=128, epochs=4, minibatch_size=1024),
        }

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# the math ---------------------------------------------------------------------------------------------

def learning_rate(cfg: PPOConfig, iteration: int, max_iterations: int) -> float:
    """Cosine decay from ``lr`` to ``min_lr`` over the run, times a linear warm-up from ``warmup_factor``."""
    cos = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iterations) / max(max_iterations, 1)))
    lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * cos
    if iteration < cfg.warmup_iterations:
        alpha = iteration / cfg.warmup_iterations
        lr *= cfg.warmup_factor * (1.0 - alpha) + alpha
    return lr


def compute_gae(rewards, values, dones, timeouts, last_value, gamma: float, lam: float):
    """Returns and advantages, all ``(S, N)``.

    ``dones[t]``: the episode ended at step t (after its action); ``timeouts[t]``: it ended by the time
    limit. At a time-limit step the TD error and the trace are zero, so its return is its own value.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    gae = torch.zeros_like(last_value)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = (rewards[t] + gamma * next_value * alive - values[t]) * (1.0 - timeouts[t])
        gae = delta + gamma * lam * alive * gae
        advantages[t] = gae
    return advantages + values, advantages


def ppo_update(model, optimizer, batch: dict[str, torch.Tensor], obs_keys: Sequence[str], cfg: PPOConfig,
               generator: torch.Generator, kickstart_coef: float = 0.0) -> dict[str, float]:
    """Epochs of minibatch steps over ``batch`` (flat, on the model's device). Returns statistics.

    ``kickstart_coef`` > 0 adds that times KL(expert || actor) to the loss, the experts' mean actions being
    ``batch["expert_mu"]``: for two Gaussians of the same fixed std, the squared distance of the means over
    ``2 std^2``, summed over the action dims like the log-probability."""
    adv = batch["returns"] - batch["values"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-5)  # buffer-wide normalisation
    n, mb, eps = adv.shape[0], cfg.minibatch_size, cfg.clip_eps
    stats = collections.defaultdict(list)
    early_stop = False
    for _epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=generator).to(adv.device)
        for start in range(0, n - mb + 1, mb):  # drop the last partial minibatch
            idx = order[start:start + mb]
            mu, value = model({k: batch[k][idx] for k in obs_keys})
            logp = gaussian_log_prob(mu, model.action_std, batch["actions"][idx], batch["act_mask"][idx])
            approx_kl = (batch["logp"][idx] - logp).mean()
            if cfg.kl_target_coef is not None and approx_kl.item() > cfg.kl_target_coef * 0.01:
                early_stop = True  # the reference abandons the rest of the update, not only this epoch
                break
            ratio = torch.exp(logp - batch["logp"][idx])
            a = adv[idx]
            pg_loss = -torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a).mean()
            old_v, ret = batch["values"][idx], batch["returns"][idx]
            clipped_v = old_v + (value - old_v).clamp(-eps, eps)
            v_loss = 0.5 * torch.max((value - ret) ** 2, (clipped_v - ret) ** 2).mean()
            loss = pg_loss + cfg.value_coef * v_loss
            if kickstart_coef > 0:
                gap = ((mu - batch["expert_mu"][idx]) / model.action_std) ** 2
                kick_kl = 0.5 * gap.masked_fill(batch["act_mask"][idx], 0.0).sum(-1).mean()
                loss = loss + kickstart_coef * kick_kl
                stats["kickstart_kl"].append(kick_kl.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            for k, v in (("pg_loss", pg_loss), ("v_loss", v_loss), ("approx_kl", approx_kl), ("grad_norm", grad_norm),
                         ("clip_frac", ((ratio - 1).abs() > eps).float().mean())):
                stats[k].append(v.item())
        if early_stop:
            break
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["minibatches"] = len(stats["pg_loss"])
    out["early_stop"] = early_stop
    return out
