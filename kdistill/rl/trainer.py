"""The PPO trainer for any domain: a vector env plus an actor-critic that follows docs/design.md.

The algorithm is the HyperDistill / MetaMorph one (reference section 3.3): a Gaussian policy with a
fixed std, GAE in which a time-limit step's return is its own value (no bootstrap from the final
observation), clipped surrogate and clipped value loss, a KL early stop that ends the whole update,
cosine learning rate with a linear warm-up, gradient clipping, observation and reward
normalisation and balanced task sampling. ``kdistill.rl.ppo`` holds the math.

Resuming is exact. Every checkpoint is taken at an iteration boundary, and right after it (and at
the start of a run) all envs are reset with a seed derived from (run seed, iteration). A resumed run
therefore needs no env state: it resets the same way an uninterrupted run does at that point. The
price is that episodes running at a checkpoint are cut short; their samples are still used, with the
value bootstrap of an ordinary rollout end.

With an ``EvalSchedule`` the trainer also measures the deterministic actor on the run's tasks every few iterations,
in fresh envs of its own, and keeps the best so far as a teacher folder ``best/`` in the run: a policy's
deterministic return can swing between updates while the training return barely moves. The measurement draws
from no generator of the run, so a run with it trains exactly as one without it.

Given an executor, the rollouts run on its pinned workers instead, each stepping a slice of the envs with a CPU copy
of the policy (``kdistill.rl.rollout_workers``); the update is the same. Resuming is exact there too.
"""

from __future__ import annotations

import collections
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import torch

from kdistill.domain import Layout, check_task_kind, task_kind_meta
from kdistill.errors import CheckpointError, KdistillError
from kdistill.executors import DomainRef
from kdistill.io import NonFiniteError, append_jsonl, latest_checkpoint, load_checkpoint, load_run_checkpoint, save_run_checkpoint, truncate_jsonl
from kdistill.rl.distributions import gaussian_log_prob
from kdistill.rl.normalise import ObsNormalizer, RewardNormalizer
from kdistill.rl.ppo import PPOConfig, compute_gae, learning_rate, ppo_update
from kdistill.rl.rollout_workers import OBS_KEYS, RolloutJob, merge_slices, plan_slices, policy_weights
from kdistill.rl.sampling import BalancedSampler, UniformSampler
from kdistill.rl.vec import make_vec_env
from kdistill.state import MODEL_PREFIX, load_model_state, load_optimizer, model_tensors, optimizer_tensors

_pos = attrs.validators.gt(0)


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
    init: str = ""  # the teacher whose weights and observation statistics the run started from ("" = fresh weights)
    critic_warmup: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # first iterations: the critic alone learns
    lr: float | None = None  # the PPO preset's peak learning rate, replaced (None = the preset's)
    freeze_obs_norm: bool = False  # keep the observation statistics the run started with (from --init)
    # the fixed action std PPO samples with, replaced (None = the teacher preset's); an --init actor that never acted
    # under noise loses most of its return under the presets' 0.9
    action_std: float | None = attrs.field(default=None, validator=attrs.validators.optional(_pos))
    # per-task experts (or one teacher) whose actions the actor is also pulled towards on the states it visits (kickstarting):
    # PPO's loss gains kickstart_coef x KL(expert || actor) under the run's fixed action std
    kickstart: str = ""
    kickstart_coef: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    # env steps over which the coefficient falls linearly to 0, so PPO's return takes over (0 = it stays constant)
    kickstart_decay: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    # how the envs ran ("env-processes:N", N = 0 in this process; "rollout-workers" of an executor, any number): it
    # decides their seeds, so a run continues exactly only the same way ("" = not recorded)
    rollout: str = ""
    # the task folder (--tasks-dir) the tasks come from and its kdistill.tasks.task_folder_digest ("" = the domain's own)
    tasks_dir: str = ""
    tasks_dir_sha256: str = ""

    def ppo_config(self, presets: dict[str, PPOConfig]) -> PPOConfig:
        """The PPO config of this run: its preset, with the learning rate it was given."""
        config = presets[self.preset]
        return config if self.lr is None else attrs.evolve(config, lr=self.lr)

    def teacher_config(self, presets: dict[str, Any]) -> Any:
        """The teacher config of this run: its preset, with the action std it was given."""
        config = presets[self.teacher_preset or self.preset]
        return config if self.action_std is None else attrs.evolve(config, action_std=self.action_std)

    def kickstart_weight(self, env_steps: int) -> float:
        """The kickstart coefficient after ``env_steps`` env steps of the run."""
        if not self.kickstart_decay:
            return self.kickstart_coef
        return self.kickstart_coef * max(0.0, 1.0 - env_steps / self.kickstart_decay)

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["tasks"] = list(self.tasks)
        return d


@attrs.frozen
class EvalSchedule:
    """Deterministic evaluation during a run: every ``every`` iterations, ``episodes`` per task from reset seeds
    drawn from ``seed`` (kept apart from the seeds ``kdistill eval`` and ``compare`` use by default, so a report of
    the kept policy does not reuse the starts it was picked on)."""

    every: int = attrs.field(validator=_pos)
    episodes: int = attrs.field(default=1, validator=_pos)
    seed: int = 1_000_003


# the kept best policy of a run with an EvalSchedule
BEST_DIR = "best"

# episodes per task behind the metric task_mean_return
RECENT_PER_TASK = 10


def _reset_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


class PPOTrainer:
    """Trains a teacher with PPO on ``domain``'s tasks; checkpoints into ``run_dir`` when given.

    Build it, optionally ``restore()`` a checkpoint, then ``train()``. ``workers``: env worker processes of the
    learner's own rollout. ``executor``: roll out on its pinned workers instead, ``rollout_workers`` of them (default:
    the executor's ``workers``), each stepping a slice of the envs (``kdistill.rl.rollout_workers``).
    """

    def __init__(self, domain, settings: RunSettings, teacher_spec, teacher_config, config: PPOConfig,
                 device: str = "cpu", workers: int = 0, run_dir: str | Path | None = None, executor=None,
                 rollout_workers: int | None = None, evaluation: EvalSchedule | None = None):

        self.domain, self.settings, self.config = domain, settings, config
        self.evaluation = evaluation
        self.best_eval: dict[str, Any] | None = None  # the kept best: its return, env steps and episodes per task
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
        self.executor, self.envs, self.pool = executor, None, None
        if executor is None:
            # envs before the model: worker processes are forked before torch starts its thread pools
            self.envs = make_vec_env(domain, tasks, config.num_envs, seed=settings.seed, sampler=self.sampler, workers=workers)
        else:
            self.slices = plan_slices(config.num_envs, rollout_workers or executor.workers)
            self.pool = executor.pinned(len(self.slices))
            self._run_key = uuid.uuid4().hex  # names this trainer's envs in the workers
            self._fresh = True  # the next rollout restarts every episode

        torch.manual_seed(settings.seed)
        self.model = teacher_spec.build(self.layout, teacher_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=config.adam_eps)
        self.generator = torch.Generator().manual_seed(settings.seed)  # action noise and minibatch order
        self.obs_norm = ObsNormalizer((self.layout.max_tokens, self.layout.obs_features), clip=config.obs_clip)
        self.obs_norm.training = not settings.freeze_obs_norm
        self.reward_norm = RewardNormalizer(config.num_envs, gamma=config.gamma, clip=config.reward_clip)
        self.iteration = 0
        self.env_steps = 0
        self.episodes = 0
        self.recent_returns: collections.deque = collections.deque(maxlen=100)
        self.recent_lengths: collections.deque = collections.deque(maxlen=100)
        # the last episodes of each task: once the balanced sampler favours the hard tasks, the mean of the last 100
        # episodes is mostly theirs, while the mean over tasks of each one's recent return weighs all tasks alike
        self.recent_by_task: dict[str, collections.deque] = {}
        self.unstable: collections.Counter = collections.Counter()  # episodes ended unstable, per task, since this trainer started
        self._obs: dict[str, np.ndarray] | None = None
        self._raw: dict[str, np.ndarray] | None = None  # the same observations before normalisation
        self.kickstart, self._kick_rows = self._load_kickstart() if settings.kickstart else (None, {})

    def _load_kickstart(self):
        """The policy that labels the visited states: per-task experts with each task's row among them, or one
        teacher (rows None), which reads each state's task from its observation."""
        from kdistill.loading import load_policy

        if self.executor is not None:
            raise KdistillError("kickstarting needs the learner's own rollout; drop --executor (env worker processes "
                                "with --workers are fine).")
        policy = load_policy(self.settings.kickstart, self.domain)
        if hasattr(policy, "act_tasks"):
            return policy, {task: policy.task_row(task) for task in self.settings.tasks}
        if policy.kind != "teacher":
            raise KdistillError(f"--kickstart {self.settings.kickstart} is a {policy.kind!r} policy; pass per-task "
                                f"experts (kdistill experts export) or a teacher.")
        if policy.layout != self.layout:
            raise KdistillError(f"--kickstart {self.settings.kickstart} was made for another layout of "
                                f"{policy.domain!r} tasks than {self.settings.domain!r} has; pass a teacher of this domain.")
        return policy, None

    # checkpoints ----------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "kind": "teacher",
            "domain": self.settings.domain,
            **task_kind_meta(self.domain),
            "arch": self.settings.teacher,
            "config": self.teacher_config.to_dict(),
            "ppo": self.config.to_dict(),
            "run": self.settings.to_dict(),
            **({"kickstart_sha256": self.kickstart.meta.get("weights_sha256")} if self.kickstart is not None else {}),
            "layout": self.layout.to_dict(),
            "normalizer": self.obs_norm.state(),
            "reward_normalizer": self.reward_norm.state(),
            "sampler": self.sampler.state(),
            "optimizer_groups": [{k: v for k, v in g.items() if k != "params"}
                                 for g in self.optimizer.state_dict()["param_groups"]],
            "counters": {"iteration": self.iteration, "env_steps": self.env_steps, "episodes": self.episodes,
                         "max_iterations": self.max_iterations},
            "recent": {"returns": list(self.recent_returns), "lengths": list(self.recent_lengths),
                       "by_task": {t: list(r) for t, r in self.recent_by_task.items()}},
            **({"best_eval": self.best_eval} if self.best_eval is not None else {}),
        }

    def _task_returns(self, task: str) -> collections.deque:
        return self.recent_by_task.setdefault(task, collections.deque(maxlen=RECENT_PER_TASK))

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {**model_tensors(self.model), **optimizer_tensors(self.optimizer)}
        out["rng.torch"] = self.generator.get_state()
        return out

    def save(self, with_episodes: bool = False) -> Path | None:
        if self.run_dir is None:
            return None
        tensors = self.tensors()
        if with_episodes:
            tensors.update(self._episode_tensors())
        return save_run_checkpoint(self.run_dir, self.env_steps, tensors, self.meta())

    def _episode_tensors(self) -> dict[str, Any]:
        """The running episodes (the vector env's ``get_state``, the observations the policy acts on next, raw and
        normalised), for a checkpoint off the periodic schedule; empty where they cannot be saved (rollout workers, a
        vector env without ``get_state``)."""
        if self.executor is not None or self._obs is None:
            return {}
        state = self.envs.get_state()
        if state is None:
            return {}
        out: dict[str, Any] = {f"episodes.env.{k}": v for k, v in state.items()}
        out.update({f"episodes.raw.{k}": v for k, v in self._raw.items()})
        out.update({f"episodes.obs.{k}": v for k, v in self._obs.items()})
        return out

    def _continue_saved_episodes(self, tensors: dict[str, Any]) -> None:
        parts: dict[str, dict[str, np.ndarray]] = {"env": {}, "raw": {}, "obs": {}}
        for key, v in tensors.items():
            head, _, rest = key.partition(".")
            if head == "episodes":
                part, _, name = rest.partition(".")
                parts[part][name] = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        self.envs.set_state(parts["env"])
        self._raw, self._obs = parts["raw"], parts["obs"]
        self._fresh = False

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        check_compatible(meta, self.settings, self.teacher_config, self.config)
        if self.kickstart is not None and meta.get("kickstart_sha256") != self.kickstart.meta.get("weights_sha256"):
            raise CheckpointError(f"the policy in {self.settings.kickstart} (--kickstart) is not the one the run "
                                  f"started with; restore them, or start a new run.")
        load_model_state(self.model, tensors)
        groups = [dict(g, params=list(range(len(self.optimizer.param_groups[0]["params"]))))
                  for g in meta["optimizer_groups"]]
        load_optimizer(self.optimizer, tensors, groups)
        self.generator.set_state(tensors["rng.torch"])
        self.obs_norm.rms.load_state(meta["normalizer"])
        self.reward_norm.load_state(meta["reward_normalizer"])
        self.sampler.load_state(meta["sampler"])
        self._sync_sampler()
        counters = meta["counters"]
        self.iteration, self.env_steps, self.episodes = counters["iteration"], counters["env_steps"], counters["episodes"]
        self.recent_returns.extend(meta["recent"]["returns"])
        self.recent_lengths.extend(meta["recent"]["lengths"])
        for task, returns in meta["recent"].get("by_task", {}).items():  # absent from runs saved before it existed
            self._task_returns(task).extend(returns)
        # best/ can be newer than the checkpoint resumed from: its own record is the one to beat
        kept = latest_checkpoint(self.run_dir / BEST_DIR) if self.run_dir is not None else None
        self.best_eval = meta.get("best_eval")
        if kept is not None:
            self.best_eval = json.loads((kept / "meta.json").read_text()).get("best_eval", self.best_eval)
        self._obs = None
        self._fresh = True
        if self.executor is None and any(k.startswith("episodes.") for k in tensors):
            self._continue_saved_episodes(tensors)

    def start_from(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str) -> None:
        """Begin a new run from another teacher's weights and observation statistics: a transformer distilled from
        experts (``kdistill distill --student metamorph``) or an earlier PPO run. Everything else (optimiser,
        counters, reward statistics, task sampler) starts fresh; the critic is trained on as it is.

        A teacher of the same domain made on a kind of task without exteroception (e.g. flat ground) may start a
        run on a kind that has it (terrain): the architecture grows the exteroception encoder so that the new model
        first acts exactly as the source (``load_state_adding_extero``)."""
        if meta.get("kind") != "teacher":
            raise CheckpointError(f"--init {source} is a {meta.get('kind')!r} policy, not a teacher; pass a teacher run or "
                                  f"a distilled transformer.")
        # the action std is a setting of the run (--action-std), not of the weights
        if (meta.get("arch") != self.settings.teacher
                or _without(_jsonable(meta.get("config")), "action_std") != _without(_jsonable(self.teacher_config.to_dict()), "action_std")):
            raise CheckpointError(f"--init {source} holds a {meta.get('arch')!r} teacher whose config differs from this run's "
                                  f"{self.settings.teacher!r} (preset {self.settings.teacher_preset or self.settings.preset!r}); "
                                  f"pass the --arch and --teacher-preset it was made with.")
        try:
            saved = Layout.from_dict(meta["layout"])  # a layout saved before exteroception existed has none
        except (KeyError, TypeError, ValueError):
            saved = None
        adds_extero = (saved is not None and self.layout.extero_features > 0 and saved.extero_features == 0
                       and attrs.evolve(saved, extero_features=self.layout.extero_features) == self.layout)
        if not adds_extero:
            if saved != self.layout:
                raise CheckpointError(f"--init {source} was made for another layout of {meta.get('domain')!r} tasks than "
                                      f"{self.settings.domain!r} has; pass a teacher of this domain.")
            check_task_kind(meta, self.domain, f"--init {source}")
            load_model_state(self.model, tensors)
        else:
            grow = getattr(self.model, "load_state_adding_extero", None)
            if grow is None:
                raise CheckpointError(f"--init {source} reads no exteroception, and the {self.settings.teacher!r} teacher "
                                      f"cannot add it to a trained model; pass a teacher made on this kind of task.")
            try:
                grow({k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)})
            except ValueError as e:
                raise CheckpointError(f"--init {source}: {e}; it was saved with another architecture or config.") from None
        self.obs_norm.rms.load_state(meta["normalizer"])

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
        self._raw, self._obs = raw, self._normalise(raw)
        self.reward_norm.ret[:] = 0.0

    def _check_obs(self, obs: dict[str, np.ndarray]) -> None:
        n, lay = self.config.num_envs, self.layout
        want = {"obs": (n, lay.max_tokens, lay.obs_features), "obs_mask": (n, lay.max_tokens),
                "act_mask": (n, lay.num_actions)}
        if lay.extero_features:
            want["extero"] = (n, lay.extero_features)
        for key, shape in want.items():
            got = None if key not in obs else tuple(obs[key].shape)
            if got != shape:
                raise KdistillError(f"domain {self.settings.domain!r} envs return {key} of shape {got}, but its layout "
                                    f"says {shape}; fix the domain's env or layout.")

    def rollout(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.executor is not None:
            return self._rollout_on_workers()
        cfg, n, s = self.config, self.config.num_envs, self.config.num_steps
        if self._obs is None:
            self._reset_envs()
        keys = [k for k in self._obs if k in ("obs", "obs_mask", "act_mask", "context", "extero")]
        buf = {k: torch.empty((s, *self._obs[k].shape), dtype=torch.from_numpy(self._obs[k][:1]).dtype) for k in keys}
        buf.update({k: torch.empty((s, n)) for k in ("rewards", "dones", "timeouts", "values", "logp")})
        buf["actions"] = torch.empty((s, n, self.layout.num_actions))
        # the experts label the rollout's states after it, in one call (one matmul per task, not per task and step)
        visited: list[dict[str, np.ndarray]] = []
        visited_rows: list[np.ndarray] = []
        returns: list[float] = []
        lengths: list[int] = []
        tasks: list[str] = []
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
            if self.kickstart is not None:
                visited.append({k: v.copy() for k, v in self._raw.items()})  # a vector env may reuse its arrays
                if self._kick_rows is not None:
                    visited_rows.append(np.array([self._kick_rows[task] for task in self.envs.slot_tasks]))
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
                    tasks.append(ep["task"])
            self._raw, self._obs = raw, self._normalise(raw)
        if self.kickstart is not None:
            states = {k: np.concatenate([v[k] for v in visited]) for k in visited[0]}
            mu = (self.kickstart.act(states, deterministic=True) if self._kick_rows is None
                  else self.kickstart.act_tasks(states, np.concatenate(visited_rows)))
            buf["expert_mu"] = torch.from_numpy(mu).reshape(s, n, -1)
        with torch.inference_mode():
            last_value = self.model.value(self._to_torch({k: self._obs[k] for k in keys})).float().cpu()
        return self._batch(buf, last_value), {"episode_returns": returns, "episode_lengths": lengths,
                                              "episode_tasks": tasks, "keys": keys}

    def _batch(self, buf: dict[str, torch.Tensor], last_value: torch.Tensor) -> dict[str, torch.Tensor]:
        """GAE returns added, then ``(steps, envs, ...)`` flattened onto the model's device."""
        cfg, n, s = self.config, self.config.num_envs, self.config.num_steps
        ret, adv = compute_gae(buf["rewards"], buf["values"], buf["dones"], buf["timeouts"], last_value,
                               cfg.gamma, cfg.gae_lambda)
        buf["returns"] = ret
        return {k: v.reshape(s * n, *v.shape[2:]).to(self.device) for k, v in buf.items()}

    def _rollout_on_workers(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The rollout on the executor's workers; rewards, statistics and the sampler are updated here, in the order
        the learner's own rollout updates them (step, then slot)."""
        cfg, s = self.config, self.config.num_steps
        in_process = self.executor.in_process
        job = RolloutJob(self.domain if in_process else DomainRef.of(self.domain), tuple(self.settings.tasks),
                         {"arch": self.settings.teacher, "config": self.teacher_config.to_dict(),
                          "layout": self.layout.to_dict(), "domain": self.settings.domain},
                         policy_weights(self.model), self.obs_norm.state(), tuple(self.sampler.probs().tolist()),
                         self._run_key, self.settings.seed, self.iteration, s, self._fresh,
                         threads=None if in_process else 1)
        got = merge_slices(self.pool.map(job, self.slices), self.slices)
        self._fresh = False
        obs, arrays = got.obs, got.arrays
        self._check_obs({k: v[0] for k, v in obs.items()})
        keys = [k for k in obs if k in OBS_KEYS]
        policy_norm = ObsNormalizer.from_state(job.obs_norm)  # what the workers' policy saw
        buf = {k: torch.from_numpy(policy_norm.normalize(v[:s]) if k == "obs" else v[:s].copy())
               for k, v in obs.items() if k in keys}
        if job.reset:
            if self.obs_norm.training:
                self.obs_norm.rms.update(obs["obs"][0])
            self.reward_norm.ret[:] = 0.0
        else:
            self.reward_norm.ret[got.fresh] = 0.0  # slices whose worker was replaced restarted their episodes
        dones = arrays["terminated"] | arrays["truncated"]
        rewards = np.empty_like(arrays["rewards"])
        for t in range(s):
            rewards[t] = self.reward_norm(arrays["rewards"][t], dones[t]) if cfg.normalize_reward else arrays["rewards"][t]
            if self.obs_norm.training:
                self.obs_norm.rms.update(obs["obs"][t + 1])
        for _t, _slot, task in got.unstable:
            self.unstable[task] += 1
        for _t, _slot, task, _return, length in got.episodes:
            self.sampler.update(task, length)
        buf.update(rewards=torch.from_numpy(rewards), dones=torch.from_numpy(dones.astype(np.float32)),
                   timeouts=torch.from_numpy((arrays["truncated"] & ~arrays["terminated"]).astype(np.float32)),
                   values=torch.from_numpy(arrays["values"]), logp=torch.from_numpy(arrays["logp"]),
                   actions=torch.from_numpy(arrays["actions"]))
        info = {"episode_returns": [e[3] for e in got.episodes], "episode_lengths": [e[4] for e in got.episodes],
                "episode_tasks": [e[2] for e in got.episodes], "keys": keys}
        return self._batch(buf, torch.from_numpy(got.last_value)), info

    def train(self, on_iteration: Callable[[dict[str, Any]], None] | None = None,
              stop_at_iteration: int | None = None, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Run iterations until ``total_steps`` (or ``stop_at_iteration``); returns the last metrics.

        ``should_stop`` is asked after every iteration; when it says yes the run writes a checkpoint (if that
        iteration did not) and returns, with ``last["stopped_on_request"]``. Like every checkpoint, that one starts
        fresh episodes, so the resumed run matches a run that checkpointed at the same iteration."""
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
            # an actor from elsewhere (--init) keeps its weights until the critic has learnt its values
            frozen = self._actor_parameters() if self.iteration < self.settings.critic_warmup else []
            for p in frozen:
                p.requires_grad_(False)
            kick = self.settings.kickstart_weight(self.env_steps) if self.kickstart is not None else 0.0
            try:
                stats = ppo_update(self.model, self.optimizer, batch, info["keys"], cfg, self.generator,
                                   kickstart_coef=kick)
            finally:
                for p in frozen:
                    p.requires_grad_(True)
            t2 = time.perf_counter()
            self._check_finite(stats)
            self.iteration += 1
            self.env_steps += cfg.batch_size
            self.episodes += len(info["episode_returns"])
            self.recent_returns.extend(info["episode_returns"])
            self.recent_lengths.extend(info["episode_lengths"])
            for task, ret in zip(info["episode_tasks"], info["episode_returns"]):
                self._task_returns(task).append(ret)
            self.sampler.next_iteration()
            self._sync_sampler()
            probs = self.sampler.probs()
            last = {
                "iteration": self.iteration, "env_steps": self.env_steps, "episodes": self.episodes, "lr": lr,
                **({"kickstart_coef": kick} if self.kickstart is not None else {}),
                "mean_return": float(np.mean(self.recent_returns)) if self.recent_returns else None,
                "mean_length": float(np.mean(self.recent_lengths)) if self.recent_lengths else None,
                "task_mean_return": (float(np.mean([np.mean(self.recent_by_task[t]) for t in sorted(self.recent_by_task)]))
                                     if self.recent_by_task else None),
                "tasks_with_episodes": len(self.recent_by_task),
                "iteration_episodes": len(info["episode_returns"]),
                "iteration_mean_return": float(np.mean(info["episode_returns"])) if info["episode_returns"] else None,
                "rollout_s": t1 - t0, "update_s": t2 - t1, "steps_per_s": cfg.batch_size / (t2 - t0),
                "sampler_max_prob": float(probs.max()), "sampler_min_prob": float(probs.min()),
                **stats,
            }
            if self.executor is not None:
                last["rollout_workers"] = len(self.slices)
            if self.evaluation is not None and self.iteration % self.evaluation.every == 0:
                last.update(self._evaluate())
            if metrics_path is not None:
                append_jsonl(metrics_path, last)
            requested = should_stop is not None and should_stop()
            periodic = self.iteration % self.settings.checkpoint_every == 0 or self.iteration == self.max_iterations
            if periodic or requested:
                # a periodic checkpoint restarts the episodes (in a resumed run too); a stop request's checkpoint
                # off that schedule saves them, so the resumed run goes on as if never stopped
                self.save(with_episodes=not periodic)
                if periodic:
                    self._obs = None
                    self._fresh = True
                last["checkpoint"] = True
            if on_iteration is not None:
                on_iteration(last)
            if requested:
                last["stopped_on_request"] = True
                break
        return last

    def _evaluate(self) -> dict[str, Any]:
        """Measure the deterministic actor (``EvalSchedule``); keep it in best/ when it beats the kept one."""
        from kdistill.evaluate import evaluate_together
        from kdistill.policy import TeacherPolicy

        t0 = time.perf_counter()
        policy = TeacherPolicy(self.model, ObsNormalizer.from_state(self.obs_norm.state()), self.meta(), device=str(self.device))
        per_task = evaluate_together(self.domain, policy, self.settings.tasks, self.evaluation.episodes, self.evaluation.seed)
        score = float(np.mean(list(per_task.values())))
        out: dict[str, Any] = {"eval_return": score, "eval_s": time.perf_counter() - t0}
        if self.best_eval is None or score > self.best_eval["return"]:
            self.best_eval = {"return": score, "env_steps": self.env_steps, "iteration": self.iteration,
                              "episodes": self.evaluation.episodes, "seed": self.evaluation.seed}
            if self.run_dir is not None:
                save_run_checkpoint(self.run_dir / BEST_DIR, self.env_steps, self.tensors(), self.meta(), keep=1)
            out["eval_best"] = True
        return out

    def _actor_parameters(self) -> list[torch.nn.Parameter]:
        actor = getattr(self.model, "actor", None)
        if not isinstance(actor, torch.nn.Module):
            raise KdistillError(f"teacher {self.settings.teacher!r} has no separate actor module, so its critic cannot "
                                f"be warmed up alone; drop --critic-warmup.")
        return list(actor.parameters())

    def _check_finite(self, stats: dict[str, Any]) -> None:
        """Stop before a diverged model reaches a checkpoint: the newest checkpoint stays the last good one."""
        losses = {k: stats.get(k) for k in ("pg_loss", "v_loss")}
        bad = [k for k, v in losses.items() if v is not None and not math.isfinite(v)]
        if not bad and all(torch.isfinite(p).all() for p in self.model.parameters()):
            return

        what = f"the {bad[0].replace('_', ' ')} is {losses[bad[0]]}" if bad else "the weights hold NaN or infinity"
        kept = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        keep = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written"
        raise NonFiniteError(f"training diverged at iteration {self.iteration + 1}: {what}; stopped, and {keep} "
                             f"(resume from it with --resume, or start a new run with another --seed).")

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
        if self.pool is not None:
            self.pool.close()


# helpers shared with resume and policy loading -----------------------------------------------------------

def check_compatible(meta: dict[str, Any], settings: RunSettings, teacher_config, config: PPOConfig) -> None:
    """Raise ``CheckpointError`` unless ``meta`` is a teacher run of the same domain, teacher and configs."""
    if meta.get("kind") != "teacher":
        raise CheckpointError(f"the checkpoint is a {meta.get('kind')!r} policy, not a teacher run; pass a teacher run folder.")
    run = meta.get("run", {})
    checks = [
        ("domain", meta.get("domain"), settings.domain),
        ("teacher", meta.get("arch"), settings.teacher),
        ("teacher config", meta.get("config"), teacher_config.to_dict()),
        ("PPO config", _without(meta.get("ppo"), "entropy_coef"), config.to_dict()),
        ("tasks", run.get("tasks"), list(settings.tasks)),
        ("seed", run.get("seed"), settings.seed),
    ]
    for what, saved, wanted in checks:
        if _jsonable(saved) != _jsonable(wanted):
            hint = f" (preset {run.get('preset')!r})" if what.endswith("config") else ""
            raise CheckpointError(
                f"the checkpoint's {what}{hint} differs from this run's: it was trained on domain {meta.get('domain')!r} "
                f"with teacher {meta.get('arch')!r}; resume with the run's own settings or write to a new --out folder.")


def _without(config: Any, key: str) -> Any:
    """A saved config less ``key``: checkpoints written before a never-read setting was removed still resume."""
    return {k: v for k, v in config.items() if k != key} if isinstance(config, dict) else config


def _jsonable(x):
    return json.loads(json.dumps(x, default=list))


def start_or_resume(domain, settings: RunSettings, teacher_spec, teacher_config, config: PPOConfig, run_dir,
                    resume: bool, device: str = "cpu", workers: int = 0, executor=None,
                    rollout_workers: int | None = None, evaluation: EvalSchedule | None = None) -> PPOTrainer:
    """A trainer for ``run_dir``: fresh, or continued from its newest complete checkpoint. The rollout options
    (``workers``, ``executor``, ``rollout_workers``) and ``evaluation`` may differ from the run's earlier parts: they
    are not run settings."""
    run_dir = Path(run_dir)
    existing = latest_checkpoint(run_dir) if run_dir.exists() else None
    if existing is not None and not resume:
        raise KdistillError(f"{run_dir} already holds a run (checkpoint {existing.name}); pass --resume to continue it "
                            f"or choose a new --out folder.")
    trainer = PPOTrainer(domain, settings, teacher_spec, teacher_config, config, device=device, workers=workers,
                         run_dir=run_dir, executor=executor, rollout_workers=rollout_workers, evaluation=evaluation)
    try:
        if existing is None and settings.init:
            tensors, meta = load_checkpoint(latest_checkpoint(settings.init) or settings.init)
            trainer.start_from(tensors, meta, settings.init)
        if existing is not None:
            tensors, meta = load_run_checkpoint(run_dir)
            check_task_kind(meta, domain, str(run_dir))
            trainer.restore(tensors, meta)
            # metrics logged after that checkpoint belong to work that is being redone
            truncate_jsonl(run_dir / "metrics.jsonl", lambda r: r.get("iteration", 0) <= trainer.iteration)
        elif (run_dir / "metrics.jsonl").exists():
            truncate_jsonl(run_dir / "metrics.jsonl", lambda r: False)
    except BaseException:
        trainer.close()
        raise
    return trainer


# progress of a run, read while it trains ---------------------------------------------------------------

STATUS_RATE_WINDOW = 20  # iterations whose mean rate gives the status's steps/s and time left


def run_status(run_dir) -> dict[str, Any]:
    """Where teacher run ``run_dir`` stands: its newest complete checkpoint's counters and per-task episode
    record, with the rate and the latest metrics from ``metrics.jsonl``. Reads JSON only (never the weights), so
    it is safe while the run trains."""
    from kdistill.io import read_json_object, read_jsonl
    from kdistill.progress import recent_rate

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is None:
        raise KdistillError(f"{run_dir} holds no teacher checkpoint yet; pass a teacher run folder "
                            f"(or wait for its first checkpoint).")
    meta = read_json_object(ckpt / "meta.json")
    if meta.get("kind") != "teacher":
        raise KdistillError(f"{run_dir} holds a checkpoint of kind {meta.get('kind')!r}, not a teacher run; pass the "
                            f"folder of a `kdistill teacher train` run.")
    counters, run, sampler = meta.get("counters", {}), meta.get("run", {}), meta.get("sampler", {})
    if "env_steps" not in counters or not run:
        raise KdistillError(f"{run_dir} holds a teacher without a PPO run record (a distilled or shipped one); "
                            f"`kdistill eval` measures it.")
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "env_steps" in m]
    last = metrics[-1] if metrics else {}
    rate = recent_rate(metrics, ("rollout_s", "update_s"), STATUS_RATE_WINDOW)
    env_steps = int(counters["env_steps"])
    logged = int(last.get("env_steps", env_steps))
    total = int(run.get("total_steps") or 0)
    recent = meta.get("recent", {}).get("by_task", {})
    kept = latest_checkpoint(run_dir / BEST_DIR)
    best = read_json_object(kept / "meta.json").get("best_eval") if kept is not None else None
    evals = [m["eval_return"] for m in metrics if m.get("eval_return") is not None]
    sampled = dict(zip(sampler.get("tasks", []), zip(sampler.get("episodes", []), sampler.get("mean_length", []),
                                                   sampler.get("probs", []))))
    per_task = []
    for task in run.get("tasks", []):
        returns = recent.get(task, [])
        episodes, mean_length, prob = sampled.get(task, (None, None, None))
        per_task.append({"task": task, "episodes": episodes, "mean_length": mean_length, "sampling_prob": prob,
                         "recent_return": float(np.mean(returns)) if returns else None, "recent_episodes": len(returns)})
    return {
        "run": str(run_dir), "checkpoint": ckpt.name, "domain": meta.get("domain"), "teacher": meta.get("arch"),
        "preset": run.get("preset"), "teacher_preset": run.get("teacher_preset"), "init": run.get("init") or None,
        "tasks": len(run.get("tasks", [])), "env_steps": env_steps, "logged_env_steps": logged, "total_steps": total,
        "iteration": counters.get("iteration"), "max_iterations": counters.get("max_iterations"),
        "episodes": counters.get("episodes"), "done": bool(total) and env_steps >= total,
        "steps_per_s": rate, "eta_s": (total - logged) / rate if rate and total > logged else (0.0 if total else None),
        "lr": last.get("lr"), "mean_return": last.get("mean_return"), "task_mean_return": last.get("task_mean_return"),
        "tasks_with_episodes": sum(t["recent_episodes"] > 0 for t in per_task),
        "last_eval_return": evals[-1] if evals else None,
        "best": {**best, "folder": str(run_dir / BEST_DIR)} if isinstance(best, dict) else None,
        "per_task": per_task,
    }

