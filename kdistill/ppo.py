"""PPO for any domain: a vector env plus an actor-critic that follows docs/design.md.

The algorithm is the HyperDistill / MetaMorph one (reference section 3.3): a Gaussian policy with a
fixed std, GAE in which a time-limit step's return is its own value (no bootstrap from the final
observation), clipped surrogate and clipped value loss, a KL early stop that ends the whole update,
cosine learning rate with a linear warm-up, gradient clipping, observation and reward
normalisation and balanced task sampling. ``compute_gae`` and ``ppo_update`` hold the math.

Resuming is exact. Every checkpoint is taken at an iteration boundary, and right after it (and at
the start of a run) all envs are reset with a seed derived from (run seed, iteration). A resumed run
therefore needs no env state: it resets the same way an uninterrupted run does at that point. The
price is that episodes running at a checkpoint are cut short; their samples are still used, with the
value bootstrap of an ordinary rollout end.
"""

from __future__ import annotations

import collections
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np
import torch

from kdistill.errors import CheckpointError, KdistillError
from kdistill.io import (append_jsonl, latest_checkpoint, load_run_checkpoint, save_run_checkpoint,
                         truncate_jsonl)
from kdistill.normalize import ObsNormalizer, RewardNormalizer
from kdistill.sampling import BalancedSampler, UniformSampler

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
    entropy_coef: float = attrs.field(default=0.0, validator=_nonneg)
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


def gaussian_log_prob(mu: torch.Tensor, std: float, actions: torch.Tensor, act_mask: torch.Tensor) -> torch.Tensor:
    """Joint log-density of ``actions`` under ``Normal(mu, std)``, summed over non-padded dims."""
    logp = -0.5 * ((actions - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.masked_fill(act_mask, 0.0).sum(-1)


def ppo_update(model, optimizer, batch: dict[str, torch.Tensor], obs_keys: Sequence[str], cfg: PPOConfig,
               generator: torch.Generator) -> dict[str, float]:
    """Epochs of minibatch steps over ``batch`` (flat, on the model's device). Returns statistics."""
    adv = batch["returns"] - batch["values"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-5)  # buffer-wide normalisation
    n, mb, eps = adv.shape[0], cfg.minibatch_size, cfg.clip_eps
    stats = collections.defaultdict(list)
    early_stop = False
    for epoch in range(cfg.epochs):
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


# the trainer ------------------------------------------------------------------------------------------

@attrs.frozen
class RunSettings:
    """What defines a run besides the configs; stored in every checkpoint and reused by ``--resume``."""

    domain: str
    tasks: tuple[str, ...] = attrs.field(converter=tuple)
    teacher: str
    preset: str  # PPO preset
    seed: int
    total_steps: int
    checkpoint_every: int = attrs.field(default=10, validator=_pos)
    teacher_preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["tasks"] = list(self.tasks)
        return d


def _reset_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


class PPOTrainer:
    """Trains a teacher with PPO on ``domain``'s tasks; checkpoints into ``run_dir`` when given.

    Build it, optionally ``restore()`` a checkpoint, then ``train()``.
    """

    def __init__(self, domain, settings: RunSettings, teacher_spec, teacher_config, config: PPOConfig,
                 device: str = "cpu", workers: int = 0, run_dir: str | Path | None = None):
        from kdistill.vec import make_vec_env

        self.domain, self.settings, self.config = domain, settings, config
        self.teacher_spec, self.teacher_config = teacher_spec, teacher_config
        self.device = torch.device(device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.layout = domain.layout
        self.max_iterations = max(1, settings.total_steps // config.batch_size)

        tasks = list(settings.tasks)
        if config.task_sampling == "balanced":
            self.sampler = BalancedSampler(tasks, alpha=config.sampling_alpha,
                                           warmup_iterations=config.sampling_warmup_iterations)
        else:
            self.sampler = UniformSampler(tasks)
        # envs before the model: worker processes are forked before torch starts its thread pools
        self.envs = make_vec_env(domain, tasks, config.num_envs, seed=settings.seed, sampler=self.sampler, workers=workers)

        torch.manual_seed(settings.seed)
        self.model = teacher_spec.build(self.layout, teacher_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=config.adam_eps)
        self.generator = torch.Generator().manual_seed(settings.seed)  # action noise and minibatch order
        self.obs_norm = ObsNormalizer((self.layout.max_tokens, self.layout.obs_features), clip=config.obs_clip)
        self.reward_norm = RewardNormalizer(config.num_envs, gamma=config.gamma, clip=config.reward_clip)
        self.iteration = 0
        self.env_steps = 0
        self.episodes = 0
        self.recent_returns: collections.deque = collections.deque(maxlen=100)
        self.recent_lengths: collections.deque = collections.deque(maxlen=100)
        self.unstable: collections.Counter = collections.Counter()  # episodes ended unstable, per task, this session
        self._obs: dict[str, np.ndarray] | None = None

    # checkpoints ----------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "kind": "teacher",
            "domain": self.settings.domain,
            "arch": self.settings.teacher,
            "config": self.teacher_config.to_dict(),
            "ppo": self.config.to_dict(),
            "run": self.settings.to_dict(),
            "layout": self.layout.to_dict(),
            "normalizer": self.obs_norm.state(),
            "reward_normalizer": self.reward_norm.state(),
            "sampler": self.sampler.state(),
            "optimizer_groups": [{k: v for k, v in g.items() if k != "params"}
                                 for g in self.optimizer.state_dict()["param_groups"]],
            "counters": {"iteration": self.iteration, "env_steps": self.env_steps, "episodes": self.episodes,
                         "max_iterations": self.max_iterations},
            "recent": {"returns": list(self.recent_returns), "lengths": list(self.recent_lengths)},
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for pid, state in self.optimizer.state_dict()["state"].items():
            for name, value in state.items():
                out[f"optim.{pid}.{name}"] = torch.as_tensor(value)
        out["rng.torch"] = self.generator.get_state()
        return out

    def save(self) -> Path | None:
        if self.run_dir is None:
            return None
        return save_run_checkpoint(self.run_dir, self.env_steps, self.tensors(), self.meta())

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        check_compatible(meta, self.settings, self.teacher_config, self.config)
        load_model_state(self.model, tensors)
        optim_state: dict[int, dict[str, torch.Tensor]] = collections.defaultdict(dict)
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                optim_state[int(pid)][name] = value
        groups = [dict(g, params=list(range(len(self.optimizer.param_groups[0]["params"]))))
                  for g in meta["optimizer_groups"]]
        self.optimizer.load_state_dict({"state": dict(optim_state), "param_groups": groups})
        self.generator.set_state(tensors["rng.torch"])
        self.obs_norm.rms.load_state(meta["normalizer"])
        self.reward_norm.load_state(meta["reward_normalizer"])
        self.sampler.load_state(meta["sampler"])
        self._sync_sampler()
        counters = meta["counters"]
        self.iteration, self.env_steps, self.episodes = counters["iteration"], counters["env_steps"], counters["episodes"]
        self.recent_returns.extend(meta["recent"]["returns"])
        self.recent_lengths.extend(meta["recent"]["lengths"])
        self._obs = None

    # training -------------------------------------------------------------------------------------
    def _sync_sampler(self) -> None:
        sync = getattr(self.envs, "sync_sampler", None)  # domains' own vector envs may share the sampler
        if sync is not None:
            sync()

    def _to_torch(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in obs.items()}

    def _normalise(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(obs)
        out["obs"] = self.obs_norm(obs["obs"])
        return out

    def _reset_envs(self) -> None:
        raw = self.envs.reset(seed=_reset_seed(self.settings.seed, self.iteration))
        self._check_obs(raw)
        self._obs = self._normalise(raw)
        self.reward_norm.ret[:] = 0.0

    def _check_obs(self, obs: dict[str, np.ndarray]) -> None:
        n, lay = self.config.num_envs, self.layout
        want = {"obs": (n, lay.max_tokens, lay.obs_features), "obs_mask": (n, lay.max_tokens),
                "act_mask": (n, lay.num_actions)}
        for key, shape in want.items():
            got = None if key not in obs else tuple(obs[key].shape)
            if got != shape:
                raise KdistillError(f"domain {self.settings.domain!r} envs return {key} of shape {got}, but its layout "
                                    f"says {shape}; fix the domain's env or layout.")

    def rollout(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        cfg, n, s = self.config, self.config.num_envs, self.config.num_steps
        if self._obs is None:
            self._reset_envs()
        keys = [k for k in self._obs if k in ("obs", "obs_mask", "act_mask", "context")]
        buf = {k: torch.empty((s, *self._obs[k].shape), dtype=torch.from_numpy(self._obs[k][:1]).dtype) for k in keys}
        buf.update({k: torch.empty((s, n)) for k in ("rewards", "dones", "timeouts", "values", "logp")})
        buf["actions"] = torch.empty((s, n, self.layout.num_actions))
        returns: list[float] = []
        lengths: list[int] = []
        std = self.model.action_std
        self.model.eval()
        for t in range(s):
            obs_t = self._to_torch({k: self._obs[k] for k in keys})
            with torch.inference_mode():
                mu, value = self.model(obs_t)
            mu, value = mu.float().cpu(), value.float().cpu()
            actions = mu + std * torch.randn(mu.shape, generator=self.generator)
            logp = gaussian_log_prob(mu, std, actions, obs_t["act_mask"].cpu())
            for k in keys:
                buf[k][t] = torch.from_numpy(self._obs[k])
            buf["actions"][t], buf["values"][t], buf["logp"][t] = actions, value, logp
            raw, rewards, terminated, truncated, infos = self.envs.step(actions.numpy())
            dones = terminated | truncated
            scaled = self.reward_norm(rewards, dones) if cfg.normalize_reward else rewards.astype(np.float32)
            buf["rewards"][t] = torch.from_numpy(scaled)
            buf["dones"][t] = torch.from_numpy(dones.astype(np.float32))
            buf["timeouts"][t] = torch.from_numpy((truncated & ~terminated).astype(np.float32))
            for info in infos:
                if info.get("unstable"):
                    self.unstable[info.get("task", "?")] += 1
                ep = info.get("episode")
                if ep is not None:
                    self.sampler.update(ep["task"], ep["length"])
                    returns.append(ep["return"])
                    lengths.append(ep["length"])
            self._obs = self._normalise(raw)
        with torch.inference_mode():
            last_value = self.model.value(self._to_torch({k: self._obs[k] for k in keys})).float().cpu()
        ret, adv = compute_gae(buf["rewards"], buf["values"], buf["dones"], buf["timeouts"], last_value,
                               cfg.gamma, cfg.gae_lambda)
        buf["returns"] = ret
        flat = {k: v.reshape(s * n, *v.shape[2:]).to(self.device) for k, v in buf.items()}
        return flat, {"episode_returns": returns, "episode_lengths": lengths, "keys": keys}

    def train(self, on_iteration: Callable[[dict[str, Any]], None] | None = None,
              stop_at_iteration: int | None = None) -> dict[str, Any]:
        """Run iterations until ``total_steps`` (or ``stop_at_iteration``); returns the last metrics."""
        cfg = self.config
        last: dict[str, Any] = {}
        metrics_path = self.run_dir / "metrics.jsonl" if self.run_dir is not None else None
        end = self.max_iterations if stop_at_iteration is None else min(stop_at_iteration, self.max_iterations)
        while self.iteration < end:
            t0 = time.perf_counter()
            lr = learning_rate(cfg, self.iteration, self.max_iterations)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch, info = self.rollout()
            t1 = time.perf_counter()
            self.model.train()
            stats = ppo_update(self.model, self.optimizer, batch, info["keys"], cfg, self.generator)
            t2 = time.perf_counter()
            self._check_finite(stats)
            self.iteration += 1
            self.env_steps += cfg.batch_size
            self.episodes += len(info["episode_returns"])
            self.recent_returns.extend(info["episode_returns"])
            self.recent_lengths.extend(info["episode_lengths"])
            self.sampler.next_iteration()
            self._sync_sampler()
            probs = self.sampler.probs()
            last = {
                "iteration": self.iteration, "env_steps": self.env_steps, "episodes": self.episodes, "lr": lr,
                "mean_return": float(np.mean(self.recent_returns)) if self.recent_returns else None,
                "mean_length": float(np.mean(self.recent_lengths)) if self.recent_lengths else None,
                "iteration_episodes": len(info["episode_returns"]),
                "iteration_mean_return": float(np.mean(info["episode_returns"])) if info["episode_returns"] else None,
                "rollout_s": t1 - t0, "update_s": t2 - t1, "steps_per_s": cfg.batch_size / (t2 - t0),
                "sampler_max_prob": float(probs.max()), "sampler_min_prob": float(probs.min()),
                **stats,
            }
            if metrics_path is not None:
                append_jsonl(metrics_path, last)
            if self.iteration % self.settings.checkpoint_every == 0 or self.iteration == self.max_iterations:
                self.save()
                self._obs = None  # episodes restart after a checkpoint, in a resumed run too
                last["checkpoint"] = True
            if on_iteration is not None:
                on_iteration(last)
        return last

    def _check_finite(self, stats: dict[str, Any]) -> None:
        """Stop before a diverged model reaches a checkpoint: the newest checkpoint stays the last good one."""
        losses = {k: stats.get(k) for k in ("pg_loss", "v_loss")}
        bad = [k for k, v in losses.items() if v is not None and not math.isfinite(v)]
        if not bad and all(torch.isfinite(p).all() for p in self.model.parameters()):
            return
        from kdistill.io import NonFiniteError

        what = f"the {bad[0].replace('_', ' ')} is {losses[bad[0]]}" if bad else "the weights hold NaN or infinity"
        kept = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        keep = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written"
        raise NonFiniteError(f"training diverged at iteration {self.iteration + 1}: {what}; stopped, and {keep} "
                             f"(resume from it with --resume, or start a new run with another --seed).")

    def close(self) -> None:
        self.envs.close()


# helpers shared with resume and policy loading -----------------------------------------------------------

def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "model.") -> None:
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                else f"shape mismatch in {bad[:3]}")
        raise CheckpointError(f"checkpoint weights do not fit this model ({what}); it was saved with another architecture or config.")
    model.load_state_dict(state)


def check_compatible(meta: dict[str, Any], settings: RunSettings, teacher_config, config: PPOConfig) -> None:
    """Raise ``CheckpointError`` unless ``meta`` is a teacher run of the same domain, teacher and configs."""
    if meta.get("kind") != "teacher":
        raise CheckpointError(f"the checkpoint is a {meta.get('kind')!r} policy, not a teacher run; pass a teacher run folder.")
    run = meta.get("run", {})
    checks = [
        ("domain", meta.get("domain"), settings.domain),
        ("teacher", meta.get("arch"), settings.teacher),
        ("teacher config", meta.get("config"), teacher_config.to_dict()),
        ("PPO config", meta.get("ppo"), config.to_dict()),
        ("tasks", run.get("tasks"), list(settings.tasks)),
        ("seed", run.get("seed"), settings.seed),
    ]
    for what, saved, wanted in checks:
        if _jsonable(saved) != _jsonable(wanted):
            hint = f" (preset {run.get('preset')!r})" if what.endswith("config") else ""
            raise CheckpointError(
                f"the checkpoint's {what}{hint} differs from this run's: it was trained on domain {meta.get('domain')!r} "
                f"with teacher {meta.get('arch')!r}; resume with the run's own settings or write to a new --out folder.")


def _jsonable(x):
    import json

    return json.loads(json.dumps(x, default=list))


def find_teacher_spec(domain, name: str | None):
    """The TeacherSpec called ``name`` (or the domain's default teacher)."""
    from kdistill.errors import unknown_name
    from kdistill.plugins import get_plugins

    own = dict(domain.teachers())
    registry = get_plugins().teachers
    if name is None:
        name = domain.default_teacher or (next(iter(own)) if own else None)
        if name is None:
            domain_plugin = get_plugins().domains.entry(domain.name).plugin
            candidates = sorted(e.name for e in registry if e.plugin == domain_plugin)
            if not candidates:
                raise KdistillError(f"domain {domain.name!r} offers no teacher; register one with register_teachers.")
            name = candidates[0]
    if name in own:
        return name, own[name]
    if name in registry:
        return name, registry.get(name)
    raise unknown_name("teacher", name, set(own) | set(registry.names()))


def start_or_resume(domain, settings: RunSettings, teacher_spec, teacher_config, config: PPOConfig, run_dir,
                    resume: bool, device: str = "cpu", workers: int = 0) -> PPOTrainer:
    """A trainer for ``run_dir``: fresh, or continued from its newest complete checkpoint."""
    run_dir = Path(run_dir)
    existing = latest_checkpoint(run_dir) if run_dir.exists() else None
    if existing is not None and not resume:
        raise KdistillError(f"{run_dir} already holds a run (checkpoint {existing.name}); pass --resume to continue it "
                            f"or choose a new --out folder.")
    trainer = PPOTrainer(domain, settings, teacher_spec, teacher_config, config, device=device, workers=workers,
                         run_dir=run_dir)
    try:
        if existing is not None:
            tensors, meta = load_run_checkpoint(run_dir)
            trainer.restore(tensors, meta)
            # metrics logged after that checkpoint belong to work that is being redone
            truncate_jsonl(run_dir / "metrics.jsonl", lambda r: r.get("iteration", 0) <= trainer.iteration)
        elif (run_dir / "metrics.jsonl").exists():
            truncate_jsonl(run_dir / "metrics.jsonl", lambda r: False)
    except BaseException:
        trainer.close()
        raise
    return trainer
