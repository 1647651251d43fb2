"""The cart-pole environments: one gymnasium env per task, and a batched vector env for training.

Both follow kdistill's observation contract with one token (T = 1): ``obs (1, 4)`` raw state
(x, x_dot, theta, theta_dot), ``obs_mask (1,)`` all False, ``act_mask (1,)`` all False and ``context (1, 6)``
the task's normalised parameters. Both step the same batched physics, so they agree step for step.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kdistill.errors import KdistillError
from kdistill.rl.sampling import UniformSampler
from kdistill.rl.vec import VecEnv, rng_from_row, rng_state_row, slot_seeds
from kdistill_cartpole.physics import (
    PARAM_NAMES,
    STATE_NAMES,
    CartPoleParams,
    Dynamics,
    ParamRanges,
    initial_state,
    reward_and_failure,
    step_one,
    step_state,
)

ENV_ID = "kdistill/CartPole-v0"
NUM_FEATURES = len(STATE_NAMES)
NUM_CONTEXT = len(PARAM_NAMES)


def observation_space() -> spaces.Dict:
    return spaces.Dict({
        "obs": spaces.Box(-np.inf, np.inf, (1, NUM_FEATURES), np.float32),
        "obs_mask": spaces.Box(0, 1, (1,), bool),
        "act_mask": spaces.Box(0, 1, (1,), bool),
        "context": spaces.Box(-1.0, 1.0, (1, NUM_CONTEXT), np.float32),
    })


class CartPoleEnv(gym.Env):
    """One cart-pole task. ``params`` is a ``CartPoleParams`` or a dict of its fields.

    The episode ends as terminated when the pole leans past ``theta_limit`` or the cart leaves ``+-x_limit``,
    and as truncated after ``episode_steps`` steps. Actions outside [-1, 1] are clipped.
    """

    metadata = {"render_modes": []}

    def __init__(self, params: CartPoleParams | dict, task: str = "custom", ranges: ParamRanges | None = None,
                 dynamics: Dynamics | None = None):
        self.params = params if isinstance(params, CartPoleParams) else CartPoleParams.from_dict(params)
        self.task = task
        self.ranges = ranges or ParamRanges()
        self.dynamics = dynamics or Dynamics()
        self._context = self.ranges.normalise(self.params.as_array()[None])
        self.observation_space = observation_space()
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._state = (0.0, 0.0, 0.0, 0.0)
        self._steps = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "obs": np.array([self._state], np.float32),
            "obs_mask": np.zeros(1, bool),
            "act_mask": np.zeros(1, bool),
            "context": self._context.copy(),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._state = tuple(initial_state(self.np_random, 1, self.dynamics)[0].tolist())
        self._steps = 0
        return self._obs(), {"task": self.task}

    def step(self, action):
        action = np.asarray(action, np.float64).reshape(-1)[0]
        self._state, reward, failed, unstable = step_one(self._state, action, self.params, self.dynamics)
        self._steps += 1
        info: dict[str, Any] = {"task": self.task}
        if unstable:
            self._state = (0.0, 0.0, 0.0, 0.0)  # never hand NaNs to a policy
            info["unstable"] = True
        truncated = self._steps >= self.dynamics.episode_steps and not failed
        return self._obs(), float(reward), bool(failed), bool(truncated), info


class CartPoleVecEnv(VecEnv):
    """``num_envs`` cart-poles stepped together in numpy (kdistill's ``VecEnv`` contract, see docs/design.md).

    Each sub-env draws its task from ``sampler`` at every reset (a uniform one when none is given). An env
    that ends is reset in the same step; its info then holds ``"episode"`` with the task, raw return and length.
    """

    def __init__(self, tasks: Sequence[str], params: dict[str, CartPoleParams], num_envs: int, seed: int = 0,
                 sampler=None, ranges: ParamRanges | None = None, dynamics: Dynamics | None = None):
        if num_envs <= 0:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        self.tasks = list(tasks)
        if not self.tasks:
            raise ValueError("a vector env needs at least one task")
        self.num_envs = int(num_envs)
        self.ranges = ranges or ParamRanges()
        self.dynamics = dynamics or Dynamics()
        self.sampler = sampler if sampler is not None else UniformSampler(self.tasks)
        if list(self.sampler.tasks) != self.tasks:
            raise ValueError("the task sampler was built for other tasks than the vector env; pass the same list to both")
        self._task_index = {t: i for i, t in enumerate(self.tasks)}
        self._table = np.stack([params[t].as_array() for t in self.tasks])  # (K, 6) raw parameters
        self._contexts = self.ranges.normalise(self._table)  # (K, 6)
        self._rng = np.random.default_rng(seed)
        self._slot_rngs: list[np.random.Generator] | None = None
        self._which = np.zeros(self.num_envs, np.int64)  # task index per sub-env
        self._state = np.zeros((self.num_envs, NUM_FEATURES))
        self._steps = np.zeros(self.num_envs, np.int64)
        self._returns = np.zeros(self.num_envs)
        self.observation_space = observation_space()
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    # the contract -----------------------------------------------------------------------------------
    def reset(self, seed=None) -> dict[str, np.ndarray]:
        per_slot = slot_seeds(seed, self.num_envs)
        if per_slot is not None:
            self._slot_rngs = [np.random.default_rng(s) for s in per_slot]
        elif seed is not None:
            self._rng, self._slot_rngs = np.random.default_rng(seed), None
        self._restart(np.arange(self.num_envs))
        return self._obs()

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions, np.float64)
        if actions.shape[0] != self.num_envs:
            raise KdistillError(f"step got actions for {actions.shape[0]} envs, the vector env has {self.num_envs}.")
        actions = actions.reshape(self.num_envs, -1)[:, 0]
        params = self._table[self._which]
        self._state = step_state(self._state, actions, params, self.dynamics)
        rewards, failed, unstable = reward_and_failure(self._state, actions, self.dynamics)
        self._steps += 1
        self._returns += rewards
        truncated = (self._steps >= self.dynamics.episode_steps) & ~failed
        infos: list[dict[str, Any]] = [{"task": self.tasks[k]} for k in self._which]
        done = np.flatnonzero(failed | truncated)
        for i in done:
            if unstable[i]:
                infos[i]["unstable"] = True
            infos[i]["episode"] = {"task": self.tasks[self._which[i]], "return": float(self._returns[i]),
                                   "length": int(self._steps[i])}
        if done.size:
            self._restart(done)
        return self._obs(), rewards.astype(np.float32), failed, truncated, infos

    def get_state(self) -> dict[str, np.ndarray]:
        n = self.num_envs
        per_slot = self._slot_rngs is not None
        rngs = [rng_state_row(r) for r in self._slot_rngs] if per_slot else [rng_state_row(self._rng)] * n
        return {"task": self._which.copy(), "physics": self._state.copy(), "steps": self._steps.copy(),
                "returns": self._returns.copy(), "rng": np.stack(rngs), "slot_rng": np.full(n, per_slot)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if len(state["task"]) != self.num_envs or int(np.max(state["task"])) >= len(self.tasks):
            raise KdistillError(f"the saved episodes are of {len(state['task'])} cart-poles over other tasks; this "
                                f"vector env has {self.num_envs} over {len(self.tasks)} tasks.")
        self._which = np.asarray(state["task"], np.int64).copy()
        self._state = np.asarray(state["physics"], np.float64)[:, :NUM_FEATURES].copy()
        self._steps = np.asarray(state["steps"], np.int64).copy()
        self._returns = np.asarray(state["returns"], np.float64).copy()
        if bool(state["slot_rng"][0]):
            self._slot_rngs = [rng_from_row(row) for row in state["rng"]]
        else:
            self._rng, self._slot_rngs = rng_from_row(state["rng"][0]), None

    # helpers --------------------------------------------------------------------------------------
    @property
    def slot_tasks(self) -> list[str]:
        """The task each sub-env is playing now."""
        return [self.tasks[k] for k in self._which]

    def _restart(self, idx: np.ndarray) -> None:
        if self._slot_rngs is not None:  # one generator per slot: a slot's episodes ignore the others
            for i in idx:
                rng = self._slot_rngs[i]
                self._which[i] = self._task_index[self.sampler.sample(rng, slot=int(i))]
                self._state[i] = initial_state(rng, 1, self.dynamics)[0]
        else:
            for i in idx:
                self._which[i] = self._task_index[self.sampler.sample(self._rng, slot=int(i))]
            self._state[idx] = initial_state(self._rng, len(idx), self.dynamics)
        self._steps[idx] = 0
        self._returns[idx] = 0.0

    def _obs(self) -> dict[str, np.ndarray]:
        n = self.num_envs
        return {
            "obs": self._state.astype(np.float32)[:, None, :],
            "obs_mask": np.zeros((n, 1), bool),
            "act_mask": np.zeros((n, 1), bool),
            "context": self._contexts[self._which][:, None, :],
        }
