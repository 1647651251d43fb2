"""Per-task experts: one small MLP actor-critic per task, all trained together by PPO in one process.

Every task owns its rows of stacked parameters (a leading task axis on every weight), so a rollout
step and a gradient step are a handful of batched matmuls whatever the number of tasks. Tasks never
share a statistic: each has its own observation and reward normalisers, advantage normalisation,
learned log-std, gradient-norm clip, random generator and evaluation record, and the loss is the
sum of per-task losses, so every task follows the gradient of its own loss. A task trained alone
and the same task trained beside others therefore take the same steps from the same seeds.

The update is Stable-Baselines3's PPO for one task (clipped surrogate, unclipped value loss with
weight 0.5, minibatch advantage normalisation, no entropy bonus, Adam with eps 1e-5, global
gradient-norm clip 0.5, orthogonal initialisation), with the time-limit convention of
``kdistill.rl``'s GAE (a truncated step's return is its own value).

Experts read the state only: the features the domain's students read (``layout.student_features``)
of every token slot, flattened, with padded slots zeroed, followed on a layout with exteroception by the raw
``extero`` vector (e.g. a height map), normalised per task like the rest (``expert_inputs``). A task is evaluated
every ``eval_every`` env steps with the deterministic mean action on fixed starts; its best evaluated actor is kept, and
a task whose best return has not improved for ``patience`` evaluations stops, so the remaining wall
time goes to the tasks still learning.

Resume is exact in the way of ``kdistill.rl.trainer``: a checkpoint is taken at an update boundary, after
which every env is reset from seeds derived from (run seed, task, env, update). A checkpoint is
also taken whenever the set of training tasks changes.
"""

from __future__ import annotations

import collections
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np
import torch

from kdistill.domain import Layout, check_task_kind, task_kind_meta
from kdistill.errors import CheckpointError, KdistillError
from kdistill.io import (
    NonFiniteError,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    claim_folder,
    copy_folder,
    latest_checkpoint,
    load_run_checkpoint,
    read_json_object,
    read_jsonl,
    save_checkpoint,
    save_run_checkpoint,
    truncate_jsonl,
)
from kdistill.policy import Policy
from kdistill.progress import recent_rate
from kdistill.rl.ppo import compute_gae
from kdistill.rl.sampling import PinnedSampler
from kdistill.rl.vec import SubprocVecEnv
from kdistill.state import OPTIM_PREFIX, load_model_state, load_optimizer, model_tensors, optimizer_state, optimizer_tensors

_pos = attrs.validators.gt(0)
_nonneg = attrs.validators.ge(0)

# task groups a rollout alternates between (policy of one group while the other's envs step)
PIPELINE_GROUPS = 2


@attrs.frozen
class ExpertConfig:
    """Settings of the per-task PPO. ``sb3`` follows Stable-Baselines3's defaults for MuJoCo locomotion."""

    envs_per_task: int = attrs.field(default=2, validator=_pos)
    num_steps: int = attrs.field(default=2048, validator=_pos)  # per env per update
    epochs: int = attrs.field(default=10, validator=_pos)
    minibatch_size: int = attrs.field(default=64, validator=_pos)  # per task
    lr: float = attrs.field(default=3e-4, validator=_pos)
    gamma: float = attrs.field(default=0.99, validator=[_nonneg, attrs.validators.le(1)])
    gae_lambda: float = attrs.field(default=0.95, validator=[_nonneg, attrs.validators.le(1)])
    clip_eps: float = attrs.field(default=0.2, validator=_pos)
    value_coef: float = attrs.field(default=0.5, validator=_nonneg)
    max_grad_norm: float = attrs.field(default=0.5, validator=_pos)
    adam_eps: float = attrs.field(default=1e-5, validator=_pos)
    hidden: tuple[int, ...] = attrs.field(default=(64, 64), converter=tuple)
    init_log_std: float = 0.0
    obs_clip: float = attrs.field(default=10.0, validator=_pos)
    reward_clip: float = attrs.field(default=10.0, validator=_pos)
    eval_every: int = attrs.field(default=100_000, validator=_pos)  # env steps per task, rounded up to updates
    eval_episodes: int = attrs.field(default=5, validator=_pos)
    patience: int = attrs.field(default=5, validator=_nonneg)  # evaluations without improvement; 0 = never stop
    min_delta: float = attrs.field(default=0.05, validator=_nonneg)  # relative gain of the best return that counts
    min_steps: int = attrs.field(default=600_000, validator=_nonneg)  # no task stops before this many env steps
    # learning rate falls linearly from ``lr`` towards 0 over the task's step budget (CleanRL's default)
    anneal_lr: bool = False

    def __attrs_post_init__(self):
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"the per-task batch of {self.batch_size} samples (envs_per_task x num_steps) must be a "
                             f"multiple of minibatch_size {self.minibatch_size}")
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden must be positive layer widths, got {self.hidden}")

    @property
    def batch_size(self) -> int:
        """Samples per task per update."""
        return self.envs_per_task * self.num_steps

    @property
    def eval_every_updates(self) -> int:
        return max(1, math.ceil(self.eval_every / self.batch_size))

    @classmethod
    def presets(cls) -> dict[str, "ExpertConfig"]:
        return {
            "sb3": cls(),
            # sb3 with the learning rate annealed over the budget and a longer horizon (gamma 0.995): a final actor
            # that has settled, and a return that values staying upright past the next hundred steps
            "settled": cls(gamma=0.995, anneal_lr=True, patience=0),
            # seconds per update: for tests and smoke runs
            "tiny": cls(num_steps=64, epochs=2, minibatch_size=32, eval_every=128, eval_episodes=2, min_steps=0,
                        patience=0, hidden=(16, 16)),
        }

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def learning_rate(config: ExpertConfig, steps_per_task: int, updates_done: int) -> float:
    """A task's learning rate after ``updates_done`` updates: ``config.lr``, or with ``anneal_lr`` its linear fall
    towards 0 over the updates that ``steps_per_task`` buys."""
    if not config.anneal_lr:
        return config.lr
    total = math.ceil(steps_per_task / config.batch_size)
    return config.lr * max(0.0, 1.0 - updates_done / total)


@attrs.frozen
class ExpertRunSettings:
    """What defines an expert run besides its config; stored in every checkpoint and reused by ``--resume``."""

    domain: str
    tasks: tuple[str, ...] = attrs.field(converter=tuple)
    preset: str
    seed: int
    steps_per_task: int = attrs.field(validator=_pos)
    checkpoint_every: int = attrs.field(default=10, validator=_pos)  # updates
    # the task folder (--tasks-dir) the tasks come from and its kdistill.tasks.task_folder_digest ("" = the domain's own)
    tasks_dir: str = ""
    tasks_dir_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["tasks"] = list(self.tasks)
        return d


def expert_input_size(layout: Layout) -> int:
    """Inputs of an expert of ``layout``: the flat student view, then the exteroception (if any)."""
    return layout.max_tokens * len(layout.student_features) + layout.extero_features


def expert_inputs(obs: dict[str, np.ndarray], layout: Layout) -> np.ndarray:
    """``(N, D)`` float64 expert inputs of raw observations: the student features of every token (padded slots zeroed),
    flattened, then ``extero`` when the layout has it."""
    x = np.asarray(obs["obs"])[:, :, list(layout.student_features)].astype(np.float64)
    x[np.asarray(obs["obs_mask"], bool)] = 0.0
    x = x.reshape(len(x), -1)
    if layout.extero_features:
        x = np.concatenate([x, np.asarray(obs["extero"], np.float64).reshape(len(x), -1)], axis=1)
    return x


def task_key(task: str) -> int:
    """A stable integer per task name: a task's seeds do not depend on which other tasks run beside it."""
    return zlib.crc32(task.encode())


def _derived_seed(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


# the stacked actor-critic --------------------------------------------------------------------------

class StackedMLP(torch.nn.Module):
    """``K`` independent tanh MLPs: weights ``(K, in, out)``, inputs ``(K, B, in)``."""

    def __init__(self, num_tasks: int, sizes: Sequence[int]):
        super().__init__()
        self.sizes = list(sizes)
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.zeros(num_tasks, a, b)) for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        self.biases = torch.nn.ParameterList(
            torch.nn.Parameter(torch.zeros(num_tasks, 1, b)) for b in self.sizes[1:])

    def forward(self, x: torch.Tensor, first: int = 0, stop: int | None = None) -> torch.Tensor:
        """``x`` holds tasks ``first .. stop-1`` (default all); the slices are views, not copies."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b[first:stop], x, w[first:stop])
            if i < last:
                x = torch.tanh(x)
        return x

    @torch.no_grad()
    def init_task(self, k: int, generator: torch.Generator, out_gain: float, input_mask: torch.Tensor | None) -> None:
        """Orthogonal init (gain sqrt 2 for hidden layers, ``out_gain`` for the last), zero biases.

        Inputs that are always zero (padded slots, ``input_mask`` True) get zero weights: they would
        never receive a gradient, and zero rows keep checkpoints small and compressible.
        """
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            gain = out_gain if i == last else math.sqrt(2.0)
            fresh = torch.empty(w.shape[2], w.shape[1])  # (out, in), torch's layout
            torch.nn.init.orthogonal_(fresh, gain=gain, generator=generator)
            w[k] = fresh.t()
            if i == 0 and input_mask is not None:
                w[k, input_mask] = 0.0
            self.biases[i][k] = 0.0


class StackedActorCritic(torch.nn.Module):
    """Per task: a Gaussian actor (state-independent learned log-std) and a separate critic."""

    def __init__(self, num_tasks: int, in_features: int, num_actions: int, hidden: Sequence[int]):
        super().__init__()
        self.actor = StackedMLP(num_tasks, [in_features, *hidden, num_actions])
        self.critic = StackedMLP(num_tasks, [in_features, *hidden, 1])
        self.log_std = torch.nn.Parameter(torch.zeros(num_tasks, 1, num_actions))

    def init_task(self, k: int, generator: torch.Generator, init_log_std: float, input_mask: torch.Tensor) -> None:
        self.actor.init_task(k, generator, 0.01, input_mask)
        self.critic.init_task(k, generator, 1.0, input_mask)
        with torch.no_grad():
            self.log_std[k] = init_log_std

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)


def masked_gaussian_log_prob(mu: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor,
                             act_mask: torch.Tensor) -> torch.Tensor:
    """Log-density summed over the real action dims; ``act_mask`` ``(K, 1, A)`` is True where padded."""
    logp = -0.5 * ((actions - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return logp.masked_fill(act_mask, 0.0).sum(-1)


# per-task running statistics -----------------------------------------------------------------------

class StackedRunningMeanStd:
    """``RunningMeanStd`` with a leading task axis; ``update(x)`` takes ``(K, B, *shape)``."""

    def __init__(self, num_tasks: int, shape=(), epsilon: float = 1e-4):
        self.mean = np.zeros((num_tasks, *shape), np.float64)
        self.var = np.ones((num_tasks, *shape), np.float64)
        self.count = np.full(num_tasks, float(epsilon))

    def update(self, x: np.ndarray, rows: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        batch_mean, batch_var, n = x.mean(axis=1), x.var(axis=1), x.shape[1]
        mean, var, count = self.mean[rows], self.var[rows], self.count[rows]
        total = count + n
        c = count.reshape(-1, *([1] * (mean.ndim - 1)))
        t = total.reshape(c.shape)
        delta = batch_mean - mean
        self.mean[rows] = mean + delta * n / t
        self.var[rows] = (var * c + batch_var * n + delta**2 * c * n / t) / t
        self.count[rows] = total


# the trainer ---------------------------------------------------------------------------------------

class ExpertTrainer:
    """Trains one expert per task of ``settings.tasks``; checkpoints into ``run_dir`` when given."""

    def __init__(self, domain, settings: ExpertRunSettings, config: ExpertConfig, workers: int = 0,
                 run_dir: str | Path | None = None):
        self.domain, self.settings, self.config = domain, settings, config
        self.workers = int(workers)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.layout = layout = domain.layout
        self.tasks = list(settings.tasks)
        if len(set(self.tasks)) != len(self.tasks):
            raise KdistillError("the task list names a task twice; pass each task once.")
        self.features = np.asarray(layout.student_features, np.int64)
        self.in_features = expert_input_size(layout)
        self.num_actions = layout.num_actions
        K = len(self.tasks)

        # masks are constant per task: read them from the domain's context
        contexts = [domain.context(t) for t in self.tasks]
        self.token_mask = np.stack([np.asarray(c.mask, bool) for c in contexts])  # (K, T) True = padded
        self.act_mask = torch.from_numpy(np.stack([np.asarray(c.act_mask, bool) for c in contexts]))  # (K, A)
        input_mask = np.repeat(self.token_mask, len(self.features), axis=1)
        if layout.extero_features:  # exteroception inputs are never padding
            input_mask = np.concatenate([input_mask, np.zeros((K, layout.extero_features), bool)], axis=1)
        self.input_mask = torch.from_numpy(input_mask)  # (K, D)

        self.generators = [torch.Generator().manual_seed(_derived_seed(settings.seed, task_key(t), 1)) for t in self.tasks]
        full = StackedActorCritic(K, self.in_features, self.num_actions, config.hidden)
        for k in range(K):
            init_gen = torch.Generator().manual_seed(_derived_seed(settings.seed, task_key(self.tasks[k]), 0))
            full.init_task(k, init_gen, config.init_log_std, self.input_mask[k])
        self.obs_rms = StackedRunningMeanStd(K, (self.in_features,))
        self.rew_rms = StackedRunningMeanStd(K)
        self.rew_ret = np.zeros((K, config.envs_per_task))

        self.active = np.ones(K, bool)
        self.env_steps = np.zeros(K, np.int64)
        self.episodes = np.zeros(K, np.int64)
        self.updates = 0  # updates of the tasks still training (all active tasks share it)
        self.task_updates = np.zeros(K, np.int64)
        self.recent_returns = [collections.deque(maxlen=20) for _ in range(K)]
        self.evals: list[list[list[float]]] = [[] for _ in range(K)]  # per task: [env_steps, mean return]
        self.best_return = np.full(K, -np.inf)
        self.best_step = np.zeros(K, np.int64)
        self.since_best = np.zeros(K, np.int64)
        self.stop_reason: list[str | None] = [None] * K
        self.best_actor = {name: p.detach().clone() for name, p in full.actor.state_dict().items()}
        self.best_actor["log_std"] = full.log_std.detach().clone()
        self.best_obs_mean = self.obs_rms.mean.copy()
        self.best_obs_var = self.obs_rms.var.copy()
        self.wall_s = 0.0
        self.budget_raised_from: int | None = None  # set by a resume that raises steps_per_task

        self._rows = np.arange(K)
        self.model = full
        self.optimizer = self._new_optimizer()
        self.envs = None
        self._obs: np.ndarray | None = None  # normalised features of the running episodes, (n, E, D)
        self._saved_episodes: dict[str, Any] | None = None  # from a stop request's checkpoint, until the envs exist
        self._act_mask_rows = self.act_mask.unsqueeze(1)

    # the active set -------------------------------------------------------------------------------
    def _new_optimizer(self) -> torch.optim.Adam:
        # fused: one pass over the stacked weights instead of several (the update is dominated by it)
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr, eps=self.config.adam_eps, fused=True)

    def _narrow_to(self, rows: np.ndarray) -> None:
        """Keep training only ``rows`` (indices into the current active rows' model and optimiser)."""
        keep = torch.as_tensor(rows, dtype=torch.long)
        old_state = self.optimizer.state_dict()
        new_model = StackedActorCritic(len(rows), self.in_features, self.num_actions, self.config.hidden)
        with torch.no_grad():
            for (_name, p_new), p_old in zip(new_model.named_parameters(), self.model.parameters()):
                p_new.copy_(p_old.index_select(0, keep))
        self.model = new_model
        self.optimizer = self._new_optimizer()
        state = {}
        for pid, s in old_state["state"].items():
            state[pid] = {"step": s["step"].clone(), "exp_avg": s["exp_avg"].index_select(0, keep).clone(),
                          "exp_avg_sq": s["exp_avg_sq"].index_select(0, keep).clone()}
        self.optimizer.load_state_dict({"state": state, "param_groups": old_state["param_groups"]})

    def _rebuild_envs(self) -> None:
        self.close()
        n, E = len(self._rows), self.config.envs_per_task
        # two groups of tasks step in turn: while one group's envs step on a helper thread, this thread
        # runs the other group's policy, so policy time overlaps env time
        groups = np.array_split(np.arange(n), min(n, PIPELINE_GROUPS))
        self._groups = [(int(pos[0]), int(pos[-1]) + 1) for pos in groups]
        per_group_workers = max(1, self.workers // len(groups)) if self.workers > 0 else 0
        threads = 1 if len(groups) > 1 else None
        self.envs = [pinned_vec_env(self.domain, [self.tasks[k] for k in self._rows[a:b]], E, per_group_workers,
                                    threads=threads) for a, b in self._groups]
        self._stepper = ThreadPoolExecutor(len(groups), thread_name_prefix="experts-env")

    # observations ---------------------------------------------------------------------------------
    def _features(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``(m*E, T, F)`` raw observations -> ``(m, E, D)`` state features, padded slots zeroed."""
        return expert_inputs(obs, self.layout).reshape(-1, self.config.envs_per_task, self.in_features)

    def _normalise(self, x: np.ndarray, rows: np.ndarray, update: bool) -> np.ndarray:
        if update:
            self.obs_rms.update(x, rows)
        mean, var = self.obs_rms.mean[rows][:, None], self.obs_rms.var[rows][:, None]
        clip = self.config.obs_clip
        return np.clip((x - mean) / np.sqrt(var + 1e-8), -clip, clip).astype(np.float32)

    def _scale_rewards(self, rewards: np.ndarray, dones: np.ndarray, rows: np.ndarray) -> np.ndarray:
        ret = self.rew_ret[rows] * self.config.gamma + rewards
        self.rew_rms.update(ret, rows)
        out = np.clip(rewards / np.sqrt(self.rew_rms.var[rows][:, None] + 1e-8), -self.config.reward_clip,
                      self.config.reward_clip)
        ret[dones] = 0.0
        self.rew_ret[rows] = ret
        return out.astype(np.float32)

    def _reset_envs(self) -> None:
        E = self.config.envs_per_task
        self._obs = np.empty((len(self._rows), E, self.in_features), np.float32)
        for (a, b), envs in zip(self._groups, self.envs):
            rows = self._rows[a:b]
            seeds = [_derived_seed(self.settings.seed, task_key(self.tasks[k]), 2, e, self.updates)
                     for k in rows for e in range(E)]
            self._obs[a:b] = self._normalise(self._features(envs.reset(seed=seeds)), rows, update=True)
        self.rew_ret[self._rows] = 0.0

    def _episode_tensors(self) -> dict[str, Any]:
        """The running episodes (each env group's ``get_state``, the observations the policy acts on next), for a
        checkpoint off the periodic schedule; empty when an env cannot save its episodes."""
        if self.envs is None or self._obs is None:
            return {}
        states = [envs.get_state() for envs in self.envs]
        if any(state is None for state in states):
            return {}
        out: dict[str, Any] = {f"episodes.{g}.{key}": v for g, state in enumerate(states) for key, v in state.items()}
        out["episodes.obs"], out["episodes.rows"] = self._obs, self._rows.copy()
        return out

    def _continue_saved_episodes(self) -> None:
        saved, self._saved_episodes = self._saved_episodes, None
        if not np.array_equal(saved["rows"], self._rows):  # other training tasks now: their episodes restart
            return
        for g, envs in enumerate(self.envs):
            envs.set_state(saved["groups"][g])
        self._obs = saved["obs"].copy()

    # rollout and update ---------------------------------------------------------------------------
    def rollout(self) -> tuple[dict[str, torch.Tensor], list[list[float]]]:
        cfg, n, E, S = self.config, len(self._rows), self.config.envs_per_task, self.config.num_steps
        if self.envs is None:
            self._rebuild_envs()
        if self._obs is None and self._saved_episodes is not None:
            self._continue_saved_episodes()
        if self._obs is None:
            self._reset_envs()
        D, A = self.in_features, self.num_actions
        act_mask = self.act_mask[self._rows].unsqueeze(1)  # (n, 1, A)
        buf = {"obs": torch.empty(S, n, E, D), "actions": torch.empty(S, n, E, A)}
        for key in ("rewards", "dones", "timeouts", "values", "logp"):
            buf[key] = torch.empty(S, n, E)
        returns: list[list[float]] = [[] for _ in range(n)]
        gens = [self.generators[k] for k in self._rows]

        def act(t: int, a: int, b: int):
            x = torch.from_numpy(self._obs[a:b])
            with torch.no_grad():
                mu = self.model.actor(x, a, b)
                value = self.model.critic(x, a, b).squeeze(-1)
                log_std = self.model.log_std[a:b]
                noise = torch.stack([torch.randn((E, A), generator=g) for g in gens[a:b]])
                actions = mu + log_std.exp() * noise
                logp = masked_gaussian_log_prob(mu, log_std, actions, act_mask[a:b])
            buf["obs"][t, a:b], buf["actions"][t, a:b], buf["values"][t, a:b], buf["logp"][t, a:b] = x, actions, value, logp
            return actions.clamp(-1.0, 1.0).reshape((b - a) * E, A).numpy()

        def absorb(t: int, a: int, b: int, result) -> None:
            raw, rewards, terminated, truncated, infos = result
            rows = self._rows[a:b]
            dones = (terminated | truncated).reshape(b - a, E)
            scaled = self._scale_rewards(np.asarray(rewards, np.float64).reshape(b - a, E), dones, rows)
            buf["rewards"][t, a:b] = torch.from_numpy(scaled)
            buf["dones"][t, a:b] = torch.from_numpy(dones.astype(np.float32))
            buf["timeouts"][t, a:b] = torch.from_numpy((truncated & ~terminated).reshape(b - a, E).astype(np.float32))
            for slot, info in enumerate(infos):
                ep = info.get("episode")
                if ep is not None:
                    returns[a + slot // E].append(float(ep["return"]))
            self._obs[a:b] = self._normalise(self._features(raw), rows, update=True)

        pending: list[Any] = [None] * len(self._groups)
        for t in range(S):
            for g, ((a, b), envs) in enumerate(zip(self._groups, self.envs)):
                if pending[g] is not None:
                    absorb(t - 1, a, b, pending[g].result())
                pending[g] = self._stepper.submit(envs.step, act(t, a, b))
        for g, (a, b) in enumerate(self._groups):
            absorb(S - 1, a, b, pending[g].result())
        with torch.no_grad():
            last_value = self.model.value(torch.from_numpy(self._obs))
        flat = {k: v.reshape(S, n * E) for k, v in buf.items() if k in ("rewards", "dones", "timeouts", "values")}
        ret, _ = compute_gae(flat["rewards"], flat["values"], flat["dones"], flat["timeouts"],
                             last_value.reshape(n * E), cfg.gamma, cfg.gae_lambda)
        # per task, sample s*E + e: the order a single-task run has
        def per_task(v: torch.Tensor) -> torch.Tensor:
            return v.reshape(S, n, E, *v.shape[3:]).transpose(0, 1).reshape(n, S * E, *v.shape[3:])

        batch = {"obs": per_task(buf["obs"]), "actions": per_task(buf["actions"]), "logp": per_task(buf["logp"]),
                 "values": per_task(buf["values"]), "returns": per_task(ret.reshape(S, n, E))}
        return batch, returns

    def learning_rate(self) -> float:
        """The learning rate of the next update. Active tasks share their update count, so one rate serves them all."""
        done = int(self.task_updates[self._rows].max()) if len(self._rows) else 0
        return learning_rate(self.config, self.settings.steps_per_task, done)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        n, N = batch["obs"].shape[:2]
        mb = cfg.minibatch_size
        act_mask = self.act_mask[self._rows].unsqueeze(1)
        gens = [self.generators[k] for k in self._rows]
        rows = torch.arange(n).unsqueeze(1)
        advantages = batch["returns"] - batch["values"]
        params = list(self.model.parameters())
        sums = collections.defaultdict(lambda: torch.zeros(n))
        steps = 0
        for _ in range(cfg.epochs):
            order = torch.stack([torch.randperm(N, generator=g) for g in gens])
            for start in range(0, N, mb):
                idx = order[:, start:start + mb]
                x = batch["obs"][rows, idx]
                adv = advantages[rows, idx]
                adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
                mu = self.model.actor(x)
                value = self.model.value(x)
                logp = masked_gaussian_log_prob(mu, self.model.log_std, batch["actions"][rows, idx], act_mask)
                log_ratio = logp - batch["logp"][rows, idx]
                ratio = log_ratio.exp()
                pg = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv).mean(1)
                vf = ((batch["returns"][rows, idx] - value) ** 2).mean(1)
                loss = pg + cfg.value_coef * vf  # (n,): each task's own loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                grad_norm = self._clip_grad_per_task(params, cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    sums["pg_loss"] += pg
                    sums["v_loss"] += vf
                    sums["approx_kl"] += ((ratio - 1) - log_ratio).mean(1)
                    sums["clip_frac"] += ((ratio - 1).abs() > cfg.clip_eps).float().mean(1)
                    sums["grad_norm"] += grad_norm
                steps += 1
        out = {k: (v / steps).numpy() for k, v in sums.items()}
        out["std"] = self.model.log_std.detach().exp().masked_fill(act_mask, float("nan")).nanmean((1, 2)).numpy()
        return out

    @staticmethod
    def _clip_grad_per_task(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        sq = sum(p.grad.reshape(p.shape[0], -1).pow(2).sum(1) for p in params)
        norm = sq.sqrt()
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p in params:
            p.grad.mul_(coef.view(-1, *([1] * (p.dim() - 1))))
        return norm

    # evaluation -----------------------------------------------------------------------------------
    def evaluate(self) -> np.ndarray:
        """Mean deterministic return of each active task over ``eval_episodes`` fixed starts."""
        cfg, n, E = self.config, len(self._rows), self.config.eval_episodes
        active = [self.tasks[k] for k in self._rows]
        envs = pinned_vec_env(self.domain, active, E, self.workers)
        try:
            seeds = [_derived_seed(self.settings.seed, task_key(t), 3, e) for t in active for e in range(E)]
            raw = envs.reset(seed=seeds)
            done = np.zeros(n * E, bool)
            returns = np.zeros(n * E)
            mean, var = self.obs_rms.mean[self._rows][:, None], self.obs_rms.var[self._rows][:, None]
            while not done.all():
                x = self._features_n(raw, n, E)
                x = np.clip((x - mean) / np.sqrt(var + 1e-8), -cfg.obs_clip, cfg.obs_clip).astype(np.float32)
                with torch.no_grad():
                    mu = self.model.actor(torch.from_numpy(x)).clamp(-1.0, 1.0)
                raw, rewards, terminated, truncated, infos = envs.step(mu.reshape(n * E, -1).numpy())
                returns[~done] += np.asarray(rewards, np.float64)[~done]
                done |= np.asarray(terminated) | np.asarray(truncated)
        finally:
            envs.close()
        return returns.reshape(n, E).mean(1)

    def _features_n(self, obs: dict[str, np.ndarray], n: int, per_task: int) -> np.ndarray:
        return expert_inputs(obs, self.layout).reshape(n, per_task, self.in_features)

    def _record_eval(self, means: np.ndarray) -> list[int]:
        """Update the best snapshots and patience counters; return the active rows that should stop."""
        cfg = self.config
        stop = []
        for j, k in enumerate(self._rows):
            value = float(means[j])
            self.evals[k].append([int(self.env_steps[k]), value])
            best = self.best_return[k]
            if not np.isfinite(best) or value > best + cfg.min_delta * abs(best):
                self.since_best[k] = 0
            else:
                self.since_best[k] += 1
            if value > best:
                self.best_return[k], self.best_step[k] = value, self.env_steps[k]
                self._snapshot(j, k)
            if self.env_steps[k] >= self.settings.steps_per_task:
                self.stop_reason[k] = "budget"
                stop.append(j)
            elif cfg.patience and self.env_steps[k] >= cfg.min_steps and self.since_best[k] >= cfg.patience:
                self.stop_reason[k] = "plateau"
                stop.append(j)
        return stop

    def _snapshot(self, j: int, k: int) -> None:
        for name, p in self.model.actor.state_dict().items():
            self.best_actor[name][k] = p[j]
        self.best_actor["log_std"][k] = self.model.log_std.detach()[j]
        self.best_obs_mean[k] = self.obs_rms.mean[k]
        self.best_obs_var[k] = self.obs_rms.var[k]

    # the loop -------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return not self.active.any()

    def train(self, on_update: Callable[[dict[str, Any]], None] | None = None,
              stop_after_updates: int | None = None, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Update until every task has stopped (or ``stop_after_updates`` more updates); returns the last metrics.

        ``should_stop`` is asked after every update; when it says yes the run writes a checkpoint (if that update
        did not) and returns, with ``last["stopped_on_request"]``. That checkpoint also holds the running episodes
        where the domain's vector env can save them (``VecEnv.get_state``), so the resumed run equals the run that
        was never stopped; otherwise its episodes restart, as after a periodic checkpoint."""
        cfg = self.config
        last: dict[str, Any] = {}
        done_here = 0
        while not self.done and (stop_after_updates is None or done_here < stop_after_updates):
            t0 = time.perf_counter()
            batch, returns = self.rollout()
            t1 = time.perf_counter()
            stats = self.update(batch)
            self._check_finite(stats)
            t2 = time.perf_counter()
            self.updates += 1
            done_here += 1
            rows = self._rows.copy()
            self.env_steps[rows] += cfg.batch_size
            self.task_updates[rows] += 1
            for j, k in enumerate(rows):
                self.episodes[k] += len(returns[j])
                self.recent_returns[k].extend(returns[j])
            evaluated = False
            stopping: list[int] = []
            budget_done = [j for j, k in enumerate(rows) if self.env_steps[k] >= self.settings.steps_per_task]
            if self.updates % cfg.eval_every_updates == 0 or budget_done:
                stopping = self._record_eval(self.evaluate())
                evaluated = True
            t3 = time.perf_counter()
            self.wall_s += t3 - t0
            self._log_tasks(rows, stats, returns, evaluated)
            last = {"update": self.updates, "env_steps": int(self.env_steps.sum()), "active_tasks": len(rows),
                    "rollout_s": t1 - t0, "update_s": t2 - t1, "eval_s": t3 - t2,
                    "steps_per_s": len(rows) * cfg.batch_size / (t3 - t0),
                    "train_steps_per_s": len(rows) * cfg.batch_size / (t2 - t0),
                    "mean_recent_return": self.mean_recent_return(),
                    "mean_best_return": self.mean_best_return(), "evaluated": evaluated,
                    "stopped": [self.tasks[rows[j]] for j in stopping]}
            if self.run_dir is not None:
                append_jsonl(self.run_dir / "metrics.jsonl", last)
            if stopping:
                self.active[[rows[j] for j in stopping]] = False
                if len(stopping) < len(rows):
                    keep = np.array([j for j in range(len(rows)) if j not in set(stopping)], np.int64)
                    self._narrow_to(keep)
                    self._rows = rows[keep]
                # when the last tasks stop, the model keeps their rows: the final checkpoint then holds their whole
                # training state, and a raised budget (``extend_budget``) continues them
                self.close()
            requested = should_stop is not None and should_stop()
            periodic = bool(stopping) or self.updates % self.settings.checkpoint_every == 0 or self.done
            if periodic or requested:
                # a periodic checkpoint restarts the episodes (in a resumed run too); a stop request's checkpoint
                # off that schedule saves them, so the resumed run goes on as if never stopped
                self.save(with_episodes=not periodic)
                if periodic:
                    self._obs = None
                last["checkpoint"] = True
            if on_update is not None:
                on_update(last)
            if requested:
                last["stopped_on_request"] = True
                break
        return last

    def _check_finite(self, stats: dict[str, np.ndarray]) -> None:
        """Stop before a diverged task reaches a checkpoint: the newest checkpoint stays the last good one."""
        bad_loss = ~(np.isfinite(stats["pg_loss"]) & np.isfinite(stats["v_loss"]))
        bad_weights = ~torch.stack([torch.isfinite(p.detach()).reshape(p.shape[0], -1).all(1)
                                    for p in self.model.parameters()]).all(0).numpy()
        bad = np.flatnonzero(bad_loss | bad_weights)
        if not bad.size:
            return

        names = [self.tasks[self._rows[j]] for j in bad]
        kept = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        keep = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written"
        raise NonFiniteError(f"training diverged at update {self.updates + 1} for {len(names)} task(s) "
                             f"({', '.join(names[:3])}): a loss or weight is NaN or infinite; stopped, and {keep} "
                             f"(resume it with --resume, or start a new run with another --seed).")

    def _log_tasks(self, rows: np.ndarray, stats: dict[str, np.ndarray], returns: list[list[float]], evaluated: bool) -> None:
        if self.run_dir is None:
            return
        folder = self.run_dir / "tasks"
        for j, k in enumerate(rows):
            rec = {"update": int(self.task_updates[k]), "env_steps": int(self.env_steps[k]),
                   "episodes": len(returns[j]),
                   "mean_return": float(np.mean(returns[j])) if returns[j] else None,
                   **{name: float(v[j]) for name, v in stats.items()}}
            if evaluated:
                rec["eval_return"] = self.evals[k][-1][1]
            append_jsonl(folder / f"{task_file(self.tasks[k])}.jsonl", rec)

    def mean_recent_return(self) -> float | None:
        vals = [float(np.mean(r)) for r in self.recent_returns if r]
        return float(np.mean(vals)) if vals else None

    def mean_best_return(self) -> float | None:
        finite = self.best_return[np.isfinite(self.best_return)]
        return float(finite.mean()) if finite.size else None

    def task_table(self) -> list[dict[str, Any]]:
        return [{"task": t, "env_steps": int(self.env_steps[k]), "episodes": int(self.episodes[k]),
                 "best_return": float(self.best_return[k]) if np.isfinite(self.best_return[k]) else None,
                 "best_step": int(self.best_step[k]), "evals": len(self.evals[k]),
                 "last_eval": self.evals[k][-1][1] if self.evals[k] else None,
                 "status": "training" if self.active[k] else f"stopped ({self.stop_reason[k]})"}
                for k, t in enumerate(self.tasks)]

    # checkpoints ----------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "kind": "experts",
            "domain": self.settings.domain,
            **task_kind_meta(self.domain),
            "arch": "stacked-mlp",
            "config": self.config.to_dict(),
            "run": self.settings.to_dict(),
            "layout": self.layout.to_dict(),
            "in_features": self.in_features,
            "counters": {"updates": self.updates, "env_steps": int(self.env_steps.sum()), "wall_s": self.wall_s},
            "model_rows": [int(k) for k in self._rows],  # the tasks whose training state the model and Adam hold
            "tasks": [{"name": t, "active": bool(self.active[k]), "env_steps": int(self.env_steps[k]),
                       "updates": int(self.task_updates[k]), "episodes": int(self.episodes[k]),
                       "best_return": float(self.best_return[k]) if np.isfinite(self.best_return[k]) else None,
                       "best_step": int(self.best_step[k]), "since_best": int(self.since_best[k]),
                       "stop_reason": self.stop_reason[k], "evals": self.evals[k],
                       "recent_returns": list(self.recent_returns[k])}
                      for k, t in enumerate(self.tasks)],
            "optimizer_groups": [{k: v for k, v in g.items() if k != "params"}
                                 for g in self.optimizer.state_dict()["param_groups"]],
        }

    def policy_tensors(self) -> dict[str, Any]:
        """What an expert policy needs: each task's best actor and the normaliser it was evaluated with."""
        out: dict[str, Any] = {f"best.{k}": v for k, v in self.best_actor.items()}
        out["best.obs_mean"], out["best.obs_var"] = self.best_obs_mean, self.best_obs_var
        return out

    def tensors(self) -> dict[str, Any]:
        out = self.policy_tensors()
        out.update(model_tensors(self.model))
        out.update(optimizer_tensors(self.optimizer))
        out["obs_rms.mean"], out["obs_rms.var"], out["obs_rms.count"] = self.obs_rms.mean, self.obs_rms.var, self.obs_rms.count
        out["rew_rms.mean"], out["rew_rms.var"], out["rew_rms.count"] = self.rew_rms.mean, self.rew_rms.var, self.rew_rms.count
        out["rew_ret"] = self.rew_ret
        out["rng"] = torch.stack([g.get_state() for g in self.generators])
        return out

    def save(self, with_episodes: bool = False) -> Path | None:
        if self.run_dir is None:
            return None
        tensors = self.tensors()
        if with_episodes:
            tensors.update(self._episode_tensors())
        return save_run_checkpoint(self.run_dir, self.updates, tensors, self.meta())

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        check_expert_compatible(meta, self.settings, self.config)
        self.active = np.array([t["active"] for t in meta["tasks"]], bool)
        self._rows = np.asarray(meta.get("model_rows", np.flatnonzero(self.active)), np.int64)
        self.model = StackedActorCritic(len(self._rows), self.in_features, self.num_actions, self.config.hidden)
        load_model_state(self.model, tensors)
        self.optimizer = self._new_optimizer()
        optim_state = optimizer_state(tensors)
        # a snapshot (``snapshot_run``) carries no Adam moments: Adam then starts afresh, the one inexact resume
        self.optimizer_restarted = not optim_state
        if optim_state:
            groups = [dict(g, params=list(range(len(list(self.model.parameters()))))) for g in meta["optimizer_groups"]]
            load_optimizer(self.optimizer, tensors, groups)
        for name in self.best_actor:
            self.best_actor[name] = tensors[f"best.{name}"].clone()
        self.best_obs_mean = tensors["best.obs_mean"].numpy().copy()
        self.best_obs_var = tensors["best.obs_var"].numpy().copy()
        for name in ("mean", "var", "count"):
            setattr(self.obs_rms, name, tensors[f"obs_rms.{name}"].numpy().copy())
            setattr(self.rew_rms, name, tensors[f"rew_rms.{name}"].numpy().copy())
        self.rew_ret = tensors["rew_ret"].numpy().copy()
        for g, state in zip(self.generators, tensors["rng"]):
            g.set_state(state.clone())
        self.updates = int(meta["counters"]["updates"])
        self.wall_s = float(meta["counters"].get("wall_s", 0.0))
        for k, rec in enumerate(meta["tasks"]):
            self.env_steps[k], self.task_updates[k], self.episodes[k] = rec["env_steps"], rec["updates"], rec["episodes"]
            self.best_return[k] = rec["best_return"] if rec["best_return"] is not None else -np.inf
            self.best_step[k], self.since_best[k] = rec["best_step"], rec["since_best"]
            self.stop_reason[k] = rec["stop_reason"]
            self.evals[k] = [list(e) for e in rec["evals"]]
            self.recent_returns[k].clear()
            self.recent_returns[k].extend(rec["recent_returns"])
        self.close()
        self._obs = None
        self._saved_episodes = None
        if "episodes.obs" in tensors:
            groups: dict[int, dict[str, np.ndarray]] = {}
            for key, v in tensors.items():
                parts = key.split(".", 2)
                if parts[0] == "episodes" and parts[1].isdigit():
                    groups.setdefault(int(parts[1]), {})[parts[2]] = np.asarray(v)
            self._saved_episodes = {"rows": np.asarray(tensors["episodes.rows"], np.int64),
                                    "obs": np.asarray(tensors["episodes.obs"], np.float32),
                                    "groups": [groups[g] for g in sorted(groups)]}
        self._continue_budget_stops()

    def _continue_budget_stops(self) -> None:
        """Make the tasks that stopped on their budget train again when ``settings.steps_per_task`` is now larger and
        the checkpoint holds their training state (the model's rows); the rows that stay stopped are dropped."""
        rows = self._rows
        for k in rows:
            if not self.active[k] and self.stop_reason[k] == "budget" and self.env_steps[k] < self.settings.steps_per_task:
                self.active[k], self.stop_reason[k] = True, None
        keep = np.flatnonzero(self.active[rows])
        if 0 < len(keep) < len(rows):
            self._narrow_to(keep)
            self._rows = rows[keep]

    def close(self) -> None:
        if self.envs is not None:
            for envs in self.envs:
                envs.close()
            self._stepper.shutdown()
            self.envs = None
        self._obs = None


def task_file(task: str) -> str:
    """A file name for a task's per-task log (task names may hold characters a file name cannot)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task)
    return safe if safe == task else f"{safe}-{task_key(task):08x}"


def check_expert_compatible(meta: dict[str, Any], settings: ExpertRunSettings, config: ExpertConfig) -> None:
    if meta.get("kind") != "experts":
        raise CheckpointError(f"the checkpoint is a {meta.get('kind')!r} run, not a per-task expert run; "
                              f"pass an experts run folder or choose a new --out folder.")
    run = meta.get("run", {})
    # a checkpoint without a setting ran with its default
    saved_config = {**ExpertConfig().to_dict(), **meta["config"]} if isinstance(meta.get("config"), dict) else meta.get("config")
    for what, saved, wanted in (("domain", meta.get("domain"), settings.domain), ("tasks", run.get("tasks"), list(settings.tasks)),
                                ("seed", run.get("seed"), settings.seed), ("config", saved_config, config.to_dict())):
        if saved != wanted:
            raise CheckpointError(f"the checkpoint's {what} differs from this run's; resume with the run's own settings "
                                  f"or write to a new --out folder.")


def stop_after(updates: int | None, should_stop: Callable[[], bool] | None = None) -> Callable[[], bool] | None:
    """A ``should_stop`` for ``ExpertTrainer.train`` that also asks to stop after ``updates`` updates of this call: a
    stop request writes a checkpoint, so a run limited this way (``--max-updates``) stays resumable."""
    if updates is None:
        return should_stop
    done = [0]

    def ask() -> bool:
        done[0] += 1
        return done[0] >= updates or (should_stop is not None and should_stop())

    return ask


def check_budget(saved: int | None, wanted: int) -> int | None:
    """A resume may raise a run's env steps per task (the tasks that stopped on the old budget continue), never lower
    them; returns the old budget when it is raised."""
    if saved is None or wanted == saved:
        return None
    if wanted < saved:
        raise CheckpointError(f"the run was started with --steps-per-task {saved:,}; a resume can raise that budget, "
                              f"not lower it (pass {saved} or more, or choose a new --out folder).")
    return int(saved)


def snapshot_run(run: str | Path, out: str | Path) -> dict[str, Any]:
    """A compact copy of an expert run's newest checkpoint, without Adam's moments, plus its logs.

    Small enough to keep in version control between machines or sessions; ``start_or_resume(...,
    resume_from=out)`` continues from it in a new run folder, with Adam restarting (see ``restore``).
    """
    import shutil

    run, out = Path(run), Path(out)
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise KdistillError(f"--out {out} is the run {run} or inside it; a snapshot goes to a folder of its own.")
    tensors, meta = load_run_checkpoint(run, as_torch=False)
    if meta.get("kind") != "experts":
        raise CheckpointError(f"{run} is a {meta.get('kind')!r} run, not a per-task expert run; pass an experts run folder.")
    # its own kind, so that a snapshot never lands in (and clears the checkpoints of) a training run
    claim_folder(out, "experts-snapshot")
    keep = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    meta = {**meta, "snapshot_of": str(run)}
    newest = save_run_checkpoint(out, meta["counters"]["updates"], keep, meta, keep=1)
    for old in out.glob("ckpt-*"):  # an earlier snapshot into this folder
        if old.name != newest.name:
            shutil.rmtree(old)
    _copy_logs(run, out)
    return {"out": str(out), "updates": meta["counters"]["updates"], "env_steps": meta["counters"]["env_steps"],
            "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def _copy_logs(src: Path, dst: Path) -> None:
    """The metrics logs of an expert run (``metrics.jsonl`` and ``tasks/*.jsonl``), each written atomically."""
    for rel in ["metrics.jsonl", *(f"tasks/{p.name}" for p in sorted((src / "tasks").glob("*.jsonl")))]:
        if (src / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst / rel, (src / rel).read_bytes())


def start_or_resume(domain, settings: ExpertRunSettings, config: ExpertConfig, run_dir, resume: bool,
                    workers: int = 0, resume_from: str | Path | None = None) -> ExpertTrainer:
    """A trainer for ``run_dir``: fresh, or continued from its newest complete checkpoint.

    ``resume_from``: a snapshot (``snapshot_run``) that seeds an empty ``run_dir`` before resuming.
    """
    run_dir = Path(run_dir)
    existing = latest_checkpoint(run_dir) if run_dir.exists() else None
    if resume_from is not None:
        source = latest_checkpoint(resume_from) if Path(resume_from).is_dir() else None
        if source is None:
            raise KdistillError(f"--resume-from {resume_from} holds no expert checkpoint; pass a snapshot folder.")
        if existing is not None:
            raise KdistillError(f"{run_dir} already holds an expert run; --resume-from seeds only a new --out folder "
                                f"(use --resume to continue {run_dir}).")
        check_expert_compatible(read_json_object(source / "meta.json"), settings, config)
        claim_folder(run_dir, "experts-run")
        copy_folder(source, run_dir / source.name)
        _copy_logs(Path(resume_from), run_dir)
        atomic_write_json(run_dir / "latest.json", {"checkpoint": source.name,
                                                    "step": int(read_json_object(source / "meta.json")["counters"]["updates"])})
        existing, resume = latest_checkpoint(run_dir), True
    if existing is not None and not resume:
        raise KdistillError(f"{run_dir} already holds an expert run (checkpoint {existing.name}); pass --resume to "
                            f"continue it or choose a new --out folder.")
    claim_folder(run_dir, "experts-run", legacy=lambda p: latest_checkpoint(p) is not None)
    trainer = ExpertTrainer(domain, settings, config, workers=workers, run_dir=run_dir)
    if existing is not None:
        tensors, meta = load_run_checkpoint(run_dir)
        check_task_kind(meta, domain, str(run_dir))
        trainer.budget_raised_from = check_budget(meta.get("run", {}).get("steps_per_task"), settings.steps_per_task)
        trainer.restore(tensors, meta)
        if trainer.budget_raised_from is not None and trainer.done:
            raise CheckpointError(f"no task of {run_dir} can use the raised budget: a task stopped on a plateau stays "
                                  f"stopped, and the newest checkpoint holds no training state of the tasks stopped on "
                                  f"their budget; start a new --out folder.")
        updates = trainer.updates
        truncate_jsonl(run_dir / "metrics.jsonl", lambda r: r.get("update", 0) <= updates)
        for k, task in enumerate(trainer.tasks):
            path = run_dir / "tasks" / f"{task_file(task)}.jsonl"
            if path.exists():
                n = int(trainer.task_updates[k])
                truncate_jsonl(path, lambda r, n=n: r.get("update", 0) <= n)
    else:
        for path in [run_dir / "metrics.jsonl", *sorted((run_dir / "tasks").glob("*.jsonl"))] if run_dir.exists() else []:
            if path.exists():
                truncate_jsonl(path, lambda r: False)
    return trainer


def pinned_vec_env(domain, tasks: Sequence[str], envs_per_task: int, workers: int = 0, threads: int | None = None):
    """A vector env whose slots ``k*E .. k*E+E-1`` always play ``tasks[k]``, in-process or over workers."""

    tasks = list(tasks)
    slot_tasks = [t for t in tasks for _ in range(envs_per_task)]
    n = len(slot_tasks)
    if workers <= 0:
        return domain.make_vec_env(tasks, n, sampler=PinnedSampler(tasks, slot_tasks), threads=threads)
    w = max(1, min(int(workers), n))
    sizes = [n // w + (1 if i < n % w else 0) for i in range(w)]
    bounds = np.cumsum([0] + sizes)

    def make_chunk(index: int, num: int, _sampler):
        chunk = slot_tasks[bounds[index]:bounds[index + 1]]
        return domain.make_vec_env(tasks, num, sampler=PinnedSampler(tasks, chunk), threads=threads)

    return SubprocVecEnv(make_chunk, tasks, sizes, sampler=PinnedSampler(tasks, slot_tasks))


def random_step_rate(domain, tasks: Sequence[str], envs_per_task: int, steps: int = 50, seed: int = 0,
                     workers: int = 0) -> float:
    """Env steps/s of the same pinned vector env stepped with uniform random actions (no policy)."""
    envs = pinned_vec_env(domain, tasks, envs_per_task, workers)
    rng = np.random.default_rng(seed)
    try:
        envs.reset(seed=seed)
        n = envs.num_envs
        start = time.perf_counter()
        for _ in range(steps):
            envs.step(rng.uniform(-1.0, 1.0, (n, domain.layout.num_actions)).astype(np.float32))
        wall = time.perf_counter() - start
    finally:
        envs.close()
    return n * steps / wall


# the trained experts as a policy ---------------------------------------------------------------------

class ExpertSetPolicy(Policy):
    """Each task's best evaluated actor with its frozen normaliser: ``prepare(task)`` picks the expert.

    ``act_tasks(obs, task_index)`` acts on a batch that mixes tasks (each row by its own expert).
    """

    kind = "experts"

    def __init__(self, tensors: dict[str, Any], meta: dict[str, Any], seed: int = 0):
        self.meta = meta
        self.domain = meta["domain"]
        self.layout = Layout.from_dict(meta["layout"])
        self.tasks = [t["name"] for t in meta["tasks"]]
        self._index = {t: k for k, t in enumerate(self.tasks)}
        config = meta["config"]
        self.obs_clip = float(config["obs_clip"])
        self.features = np.asarray(self.layout.student_features, np.int64)
        D = expert_input_size(self.layout)
        sizes = [D, *config["hidden"], self.layout.num_actions]
        self.actor = StackedMLP(len(self.tasks), sizes)
        state = {k[len("best."):]: torch.as_tensor(v) for k, v in tensors.items()
                 if k.startswith("best.") and k[len("best."):] in self.actor.state_dict()}
        try:
            self.actor.load_state_dict(state)
            self.log_std = torch.as_tensor(tensors["best.log_std"]).reshape(len(self.tasks), -1)
            self.mean = np.asarray(tensors["best.obs_mean"], np.float64).reshape(len(self.tasks), D)
            self.var = np.asarray(tensors["best.obs_var"], np.float64).reshape(len(self.tasks), D)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"the expert weights do not fit their meta.json ({str(exc).splitlines()[0]}); "
                                  f"export the experts again.") from None
        for name, arr in (("weights", torch.cat([p.detach().flatten() for p in self.actor.parameters()]).numpy()),
                          ("normaliser", np.concatenate([self.mean.ravel(), self.var.ravel()]))):
            if not np.isfinite(arr).all():
                raise CheckpointError(f"the experts' {name} hold NaN or infinite values; use an earlier checkpoint.")
        self.actor.eval().requires_grad_(False)
        self.rng = np.random.default_rng(seed)
        self._task: int | None = None

    def task_row(self, task: str) -> int:
        if task not in self._index:
            raise KdistillError(f"these experts have no expert for task {task!r} (they cover {len(self.tasks)} tasks, "
                                f"e.g. {self.tasks[0]!r}); use tasks they were trained on.")
        return self._index[task]

    def prepare(self, task: str, context=None) -> None:
        self._task = self.task_row(task)

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        if self._task is None:
            raise KdistillError("call prepare(task) before act() on an expert set.")
        return self.act_tasks(obs, np.full(len(obs["obs"]), self._task), deterministic)

    def act_tasks(self, obs: dict[str, np.ndarray], task_index: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Mean (or sampled) actions of rows whose expert is ``task_index`` (rows into ``self.tasks``)."""
        task_index = np.asarray(task_index, np.int64)
        x = expert_inputs(obs, self.layout)
        x = np.clip((x - self.mean[task_index]) / np.sqrt(self.var[task_index] + 1e-8), -self.obs_clip, self.obs_clip)
        out = np.empty((len(x), self.layout.num_actions), np.float32)
        with torch.no_grad():
            for k in np.unique(task_index):
                rows = np.flatnonzero(task_index == k)
                w = [(wt[k], b[k]) for wt, b in zip(self.actor.weights, self.actor.biases)]
                h = torch.from_numpy(x[rows].astype(np.float32))
                for i, (wt, b) in enumerate(w):
                    h = torch.addmm(b, h, wt)
                    if i < len(w) - 1:
                        h = torch.tanh(h)
                mu = h.numpy()
                if not deterministic:
                    mu = mu + self.log_std[k].exp().numpy() * self.rng.standard_normal(mu.shape)
                out[rows] = mu
        return np.clip(out, -1.0, 1.0)

    @property
    def action_std(self) -> float:
        return float(self.log_std.exp().mean())

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "domain": self.domain, "arch": "stacked-mlp", "tasks": len(self.tasks),
                "env_steps": self.meta.get("counters", {}).get("env_steps")}


# sharded runs (kdistill.rl.expert_shards): RUN/shards.json and one ordinary run per shard ---------------------------
SHARDS_FILE = "shards.json"


def is_sharded(run: str | Path) -> bool:
    return (Path(run) / SHARDS_FILE).is_file()


def shard_dir(run: str | Path, k: int) -> Path:
    return Path(run) / "shards" / f"shard-{k:03d}"


def read_shard_plan(run: str | Path) -> dict[str, Any]:
    """``shards.json``: the run's settings and each shard's tasks, checked."""
    plan = read_json_object(Path(run) / SHARDS_FILE)
    shards = plan.get("shards")
    if (not isinstance(plan.get("settings"), dict) or not isinstance(shards, list) or not shards
            or not all(isinstance(t, list) and t for t in shards)):
        raise CheckpointError(f"{Path(run) / SHARDS_FILE} is malformed (settings and a list of task lists expected); "
                              f"start a new --out folder.")
    return plan


def load_sharded(run: str | Path, with_tensors: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sharded run read as one expert run: each shard's newest checkpoint, the per-task tensors concatenated along
    the task axis in the plan's task order, and one meta (counters summed; updates and wall time the longest
    shard's). Only the policy's tensors (``best.*``) are merged: enough to export, evaluate and report."""
    plan = read_shard_plan(run)
    parts, metas = [], []
    for k, tasks in enumerate(plan["shards"]):
        folder = shard_dir(run, k)
        ckpt = latest_checkpoint(folder) if folder.is_dir() else None
        if ckpt is None:
            raise CheckpointError(f"shard {k} of {run} ({len(tasks)} tasks) has no checkpoint yet; wait for it, or "
                                  f"run `kdistill experts train --resume` on {run} to train it.")
        tensors, meta = load_run_checkpoint(ckpt) if with_tensors else ({}, read_json_object(ckpt / "meta.json"))
        if [t["name"] for t in meta["tasks"]] != tasks:
            raise CheckpointError(f"{folder} trains other tasks than {run}/{SHARDS_FILE} gives it; the run is damaged.")
        parts.append(tensors)
        metas.append(meta)
    merged = {key: torch.cat([torch.as_tensor(p[key]) for p in parts]) for key in parts[0] if key.startswith("best.")}
    meta = {k: v for k, v in metas[0].items() if k != "optimizer_groups"}
    meta["run"] = plan["settings"]
    meta["tasks"] = [t for m in metas for t in m["tasks"]]
    meta["counters"] = {"updates": max(m["counters"]["updates"] for m in metas),
                        "env_steps": sum(m["counters"]["env_steps"] for m in metas),
                        "wall_s": max(m["counters"].get("wall_s", 0.0) for m in metas)}
    meta["shards"] = len(metas)
    return merged, meta


def _load_expert_set(run: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    tensors, meta = load_sharded(run) if is_sharded(run) else load_run_checkpoint(run)
    if meta.get("kind") != "experts":
        raise CheckpointError(f"{run} is a {meta.get('kind')!r} run, not a per-task expert run; pass an experts run folder.")
    return tensors, meta


def merge_expert_sets(sets: Sequence[tuple[str, dict[str, Any], dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One expert set of several ``(name, tensors, meta)``: the tasks of each in turn, their ``best.*`` tensors
    concatenated along the task axis. They must share the domain, the layout and the actor's shape; a task in two
    sets is refused (which of its experts to keep is the user's choice)."""
    first_name, _, first = sets[0]
    same = ("domain", lambda m: m.get("domain")), ("layout", lambda m: m.get("layout")), \
        ("actor (hidden sizes, observation clip)", lambda m: ((m.get("config") or {}).get("hidden"),
                                                              (m.get("config") or {}).get("obs_clip")))
    seen: dict[str, str] = {}
    for name, _, meta in sets:
        for what, read in same:
            if read(meta) != read(first):
                raise KdistillError(f"{name} and {first_name} differ in their {what}; only experts of one domain and "
                                    f"layout with the same actor can be merged.")
        for task in (t["name"] for t in meta["tasks"]):
            if task in seen:
                raise KdistillError(f"task {task!r} has an expert in both {seen[task]} and {name}; export the sets "
                                    f"without it in one of them (e.g. train that run on other tasks).")
            seen[task] = name
    keys = [k for k in sets[0][1] if k.startswith("best.")]
    for name, tensors, _ in sets:
        if sorted(k for k in tensors if k.startswith("best.")) != sorted(keys):
            raise KdistillError(f"{name} holds other expert tensors than {first_name}; export both with this version.")
    merged = {k: torch.cat([torch.as_tensor(t[k]) for _, t, _ in sets]) for k in keys}
    # each set's run settings (preset, seed, budget) stay in its own folder: no one run made the merged set
    meta = {k: v for k, v in first.items() if k not in ("optimizer_groups", "run", "shards")}
    meta["tasks"] = [t for _, _, m in sets for t in m["tasks"]]
    meta["counters"] = {"updates": max(m["counters"]["updates"] for _, _, m in sets),
                        "env_steps": sum(m["counters"]["env_steps"] for _, _, m in sets),
                        "wall_s": sum(m["counters"].get("wall_s", 0.0) for _, _, m in sets)}
    return merged, meta


def export_experts(runs: str | Path | Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Write the best actors and normalisers of expert runs (no critic, no optimiser) as one checkpoint folder.
    A sharded run (``kdistill.rl.expert_shards``) is one set of experts; several runs (or exported sets) are merged,
    task by task in the order given (``merge_expert_sets``)."""
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not runs:
        raise KdistillError("pass at least one experts run to export.")
    loaded = [(str(run), *_load_expert_set(run)) for run in runs]
    tensors, meta = loaded[0][1:] if len(loaded) == 1 else merge_expert_sets(loaded)
    policy = ExpertSetPolicy(tensors, meta)  # validates shapes and finiteness before anything is written
    claim_folder(out, "experts")
    keep = {k: v for k, v in tensors.items() if k.startswith("best.")}
    out_meta = {k: v for k, v in meta.items() if k != "optimizer_groups"}
    out_meta["tasks"] = [{k: v for k, v in t.items() if k != "recent_returns"} for t in meta["tasks"]]
    out_meta["exported_from"] = str(runs[0]) if len(runs) == 1 else [str(r) for r in runs]
    save_checkpoint(out, keep, out_meta)
    return {"out": str(out), "tasks": len(policy.tasks), "env_steps": meta["counters"]["env_steps"],
            "mean_best_return": float(np.mean([t["best_return"] for t in meta["tasks"] if t["best_return"] is not None])),
            "sets": len(runs)}


# progress of a run, read while it trains ---------------------------------------------------------------------------
STATUS_RATE_WINDOW = 20  # updates whose mean rate gives the status's env steps/s and time left


def _remaining_steps(tasks: list[dict[str, Any]], steps_per_task: int | None) -> int:
    if not steps_per_task:
        return 0
    return sum(max(0, steps_per_task - int(t["env_steps"])) for t in tasks if t["active"])


def expert_run_status(run: str | Path) -> dict[str, Any]:
    """Where expert ``run`` (a run folder, a sharded run, or exported experts) stands: counters, the budget, the
    annealed learning rate, each task's record, and for a run the env steps left at its newest checkpoint with the
    recent env steps/s and the time left at that rate (an upper bound where ``stops_early``: a plateau may stop
    tasks). Reads JSON only, so it is safe while the run trains."""
    path = Path(run)
    folders: list[tuple[Path, list[str] | None]] = []  # where metrics.jsonl lives, and the tasks trained there
    if (path / "meta.json").exists():
        meta = read_json_object(path / "meta.json")
    elif is_sharded(path):
        meta = load_sharded(path, with_tensors=False)[1]
        folders = [(shard_dir(path, k), tasks) for k, tasks in enumerate(read_shard_plan(path)["shards"])]
    else:
        ckpt = latest_checkpoint(path) if path.is_dir() else None
        if ckpt is None:
            raise KdistillError(f"{path} holds no expert checkpoint yet; pass an experts run folder (or wait for its "
                                f"first checkpoint).")
        meta = read_json_object(ckpt / "meta.json")
        folders = [(path, None)]
    if meta.get("kind") != "experts":
        raise KdistillError(f"{path} is a {meta.get('kind')!r} checkpoint, not per-task experts.")
    tasks = meta["tasks"]
    best = [t["best_return"] for t in tasks if t.get("best_return") is not None]
    settings = meta.get("run", {})
    budget = settings.get("steps_per_task")
    lr = None
    active_updates = [t["updates"] for t in tasks if t["active"] and "updates" in t]
    if active_updates and budget and isinstance(meta.get("config"), dict):
        try:
            lr = learning_rate(ExpertConfig(**meta["config"]), budget, max(active_updates))
        except (TypeError, ValueError):  # a config this version cannot read: the rate is left out
            lr = None
    by_name = {t["name"]: t for t in tasks}
    lefts, rates = [], []
    for folder, names in folders:
        lefts.append(_remaining_steps([by_name[n] for n in names] if names is not None else tasks, budget))
        rates.append(recent_rate(read_jsonl(folder / "metrics.jsonl"), ("rollout_s", "update_s", "eval_s"),
                                 STATUS_RATE_WINDOW))
    # shards train side by side: the run's rate is the sum over the shards still training, its time left the slowest's
    going = [(left, rate) for left, rate in zip(lefts, rates) if left > 0] or list(zip(lefts, rates))
    rate = sum(r for _, r in going) if going and all(r is not None for _, r in going) else None
    etas = [0.0 if left == 0 else (left / r if r else None) for left, r in zip(lefts, rates)]
    return {"run": str(path), "preset": settings.get("preset"), "steps_per_task": budget, "learning_rate": lr,
            "tasks": len(tasks), "training": sum(bool(t["active"]) for t in tasks),
            "env_steps": meta["counters"]["env_steps"], "updates": meta["counters"]["updates"],
            "wall_s": meta["counters"].get("wall_s"),
            "remaining_env_steps": sum(lefts) if folders else None,
            "stops_early": bool((meta.get("config") or {}).get("patience")),
            "steps_per_s": rate,
            "eta_s": max(etas) if folders and all(e is not None for e in etas) else None,
            "mean_best_return": float(np.mean(best)) if best else None,
            "tasks_at_least_1000": sum(b >= 1000 for b in best),
            "per_task": tasks}


def eval_curves(runs: dict[str, str | Path]) -> dict[str, Any]:
    """The mean deterministic evaluation over the tasks that expert ``runs`` (name -> run folder or exported experts)
    share, against env steps per task: at each evaluation step, each task's latest evaluation so far (``mean_eval``)
    and its best so far (``mean_best``, what an export at that step would ship). A task that stopped keeps its last
    values; a step counts only once every task still training has been evaluated there. ``common_step``: the
    largest step all runs reached, where ``at_common_step`` compares them."""
    if not runs:
        raise KdistillError("no expert runs to compare; pass at least one run folder.")
    statuses = {name: expert_run_status(path) for name, path in runs.items()}
    names = [[t["name"] for t in s["per_task"]] for s in statuses.values()]
    common = [task for task in names[0] if all(task in set(other) for other in names[1:])]
    if not common:
        raise KdistillError(f"the runs {', '.join(map(str, runs.values()))} share no task; compare runs of the same "
                            f"tasks.")
    out: dict[str, Any] = {"tasks": len(common), "runs": {}}
    for name, status in statuses.items():
        by_name = {t["name"]: t for t in status["per_task"]}
        tasks = [by_name[task] for task in common]
        evals = [[(int(step), float(value)) for step, value in (t.get("evals") or [])] for t in tasks]
        if not all(evals):
            steps: list[int] = []
        else:
            first = max(e[0][0] for e in evals)  # every task evaluated at least once
            reached = min((e[-1][0] for e, t in zip(evals, tasks) if t["active"]), default=None)
            steps = sorted({s for e in evals for s, _ in e if s >= first and (reached is None or s <= reached)})
        mean_eval, mean_best = [], []
        for s in steps:
            upto = [[v for step, v in e if step <= s] for e in evals]
            mean_eval.append(float(np.mean([u[-1] for u in upto])))
            mean_best.append(float(np.mean([max(u) for u in upto])))
        out["runs"][name] = {"run": str(runs[name]), "preset": status["preset"], "steps": steps,
                             "mean_eval": mean_eval, "mean_best": mean_best}
    reached_all = [c["steps"][-1] for c in out["runs"].values() if c["steps"]]
    common_step = min(reached_all) if len(reached_all) == len(runs) else None
    out["common_step"] = common_step
    for c in out["runs"].values():
        at = max((j for j, s in enumerate(c["steps"]) if s <= common_step), default=None) if common_step else None
        c["at_common_step"] = None if at is None else {"step": c["steps"][at], "mean_eval": c["mean_eval"][at],
                                                       "mean_best": c["mean_best"][at]}
    return out
