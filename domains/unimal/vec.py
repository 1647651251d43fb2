"""Many UNIMAL simulations stepped in one process: the vector env PPO collects with.

Why in-process threads rather than worker processes: on 2 cores a worker process per env spends the
second core on pipe traffic (probe.md section 6), while ``mj_step`` releases the GIL. So the envs are
split into interleaved stripes, one per thread; while one thread is inside ``mj_step`` the other builds
its observations. Measured on 2 pinned cores (32 envs): 2 threads 6.5-8.0k env steps/s, 1 thread
4.1-5.8k, two worker processes of 16 envs each 5.6-6.7k. With ``threads=1`` everything runs on the
calling thread; the default is 2 threads from 4 envs up.

Contract (docs/design.md, "Vector envs"): ``reset(seed) -> obs``; ``step(actions (N, 24)) -> obs,
rewards, terminated, truncated, infos``. A sub-env whose episode ended is reset in the same step:
its returned observation is already the first of its next episode and its info holds
``"episode": {"task", "return", "length"}``. Each sub-env picks its robot at every reset with
``sampler.sample(rng, slot=i)`` using its own random generator, so a run is reproducible from its seed
whatever the number of threads; ``reset`` takes one seed for all slots or one seed per slot.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from kdistill.errors import CheckpointError, KdistillError
from kdistill.rl.vec import VecEnv, rng_from_row, rng_state_row, slot_seeds
from kdistill_unimal import features as F
from kdistill_unimal.env import (
    MAX_EPISODE_STEPS,
    RESET_NOISE,
    RobotLibrary,
    _Uniform,
    action_space,
    check_task,
    observation_space,
    stand_height_ratio,
)
from kdistill_unimal.robot import Sim
from kdistill_unimal.terrain import HFIELD_OBS_SIZE


class UnimalVecEnv(VecEnv):
    """``num_envs`` UNIMAL envs over ``tasks`` (robot names) on one kind of ground (``task``: ft, vt or obstacle),
    stepped in this process."""

    def __init__(self, library: RobotLibrary, tasks: Sequence[str], num_envs: int, seed: int = 0, sampler=None,
                 threads: int | None = None, max_episode_steps: int = MAX_EPISODE_STEPS, task: str = "ft"):
        if num_envs < 1:
            raise KdistillError(f"num_envs must be positive, got {num_envs}.")
        self.library = library
        self.task = check_task(task)
        self._terrain = task != "ft"
        self._stand_ratio = stand_height_ratio(task)
        self.tasks = list(tasks)
        if not self.tasks:
            raise KdistillError("no UNIMAL robots to play; pass at least one robot name.")
        self._robots = {name: library.get(name, task) for name in self.tasks}  # compile and validate all now
        self.num_envs = int(num_envs)
        self.sampler = sampler if sampler is not None else _Uniform(self.tasks)
        if list(getattr(self.sampler, "tasks", self.tasks)) != self.tasks:
            raise KdistillError("the task sampler was built for other robots than the vector env; pass the same list to both.")
        self.max_episode_steps = int(max_episode_steps)
        self.single_observation_space = observation_space(task)
        self.single_action_space = action_space()
        if threads is None:
            threads = min(2, os.cpu_count() or 1) if self.num_envs >= 4 else 1
        self.threads = max(1, min(int(threads), self.num_envs))
        self._stripes = [range(k, self.num_envs, self.threads) for k in range(self.threads)]
        self._executor = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="unimal-vec") if self.threads > 1 else None
        self._pool: dict[str, list[Sim]] = {}
        self._pool_lock = threading.Lock()
        self.sims: list[Sim | None] = [None] * self.num_envs
        self._fall = np.zeros(self.num_envs)
        self.lengths = np.zeros(self.num_envs, np.int64)
        self.returns = np.zeros(self.num_envs)
        self._obs_mask = np.ones((self.num_envs, F.MAX_LIMBS), bool)
        self._act_mask = np.ones((self.num_envs, F.MAX_LIMBS * F.JOINT_SLOTS), bool)
        self._context = np.zeros((self.num_envs, F.MAX_LIMBS, F.CONTEXT_FEATURES), np.float32)
        # on terrain, each slot's generator as its episode began: the height field is redrawn from it on restore
        self._episode_rng = np.zeros((self.num_envs, 6), np.uint64)
        self._seed(seed)

    # internals -------------------------------------------------------------------------------------------
    def _seed(self, seed) -> None:
        per_slot = slot_seeds(seed, self.num_envs)
        children = per_slot if per_slot is not None else np.random.SeedSequence(seed).spawn(self.num_envs)
        self.rngs = [np.random.default_rng(s) for s in children]

    def _use_robot(self, i: int, robot) -> None:
        """Give sub-env ``i`` a simulation of ``robot``: its own when it has one, else an idle one or a new one."""
        old = self.sims[i]
        if old is not None and old.robot is robot:
            return
        with self._pool_lock:
            if old is not None:
                self._pool.setdefault(old.robot.name, []).append(old)
            free = self._pool.get(robot.name)
            sim = free.pop() if free else None
        self.sims[i] = sim or robot.new_sim()
        self._fall[i] = self._stand_ratio * robot.orig_height
        self._obs_mask[i] = robot.obs_mask
        self._act_mask[i] = robot.act_mask
        self._context[i] = robot.context

    def _begin_episode(self, i: int) -> None:
        """Give sub-env ``i`` a robot from the sampler and reset it."""
        name = self.sampler.sample(self.rngs[i], slot=i)
        robot = self._robots.get(name)
        if robot is None:
            raise KdistillError(f"the task sampler returned {name!r}, which is not one of this vector env's robots.")
        self._use_robot(i, robot)
        if self._terrain:
            self._episode_rng[i] = rng_state_row(self.rngs[i])
        self.sims[i].reset(self.rngs[i], RESET_NOISE)
        self.lengths[i] = 0
        self.returns[i] = 0.0

    def _step_stripe(self, stripe, actions, obs, extero, rewards, terminated, truncated, infos) -> None:
        for i in stripe:
            sim = self.sims[i]
            reward, unstable = sim.step(actions[i])
            name = sim.robot.name
            info = {"task": name}
            if unstable:
                reward, term, trunc = 0.0, True, False
                info["unstable"] = True
            else:
                term = sim.torso_height() <= self._fall[i] or (self._terrain and sim.near_edge())
                trunc = (not term) and self.lengths[i] + 1 >= self.max_episode_steps
            self.lengths[i] += 1
            self.returns[i] += reward
            rewards[i], terminated[i], truncated[i] = reward, term, trunc
            if term or trunc:
                info["episode"] = {"task": name, "return": float(self.returns[i]), "length": int(self.lengths[i])}
                self._begin_episode(i)
            obs[i] = self.sims[i].observe()
            if extero is not None:
                extero[i] = self.sims[i].observe_hfield()
            infos[i] = info

    def _buffers(self) -> tuple[np.ndarray, np.ndarray | None]:
        obs = np.empty((self.num_envs, F.MAX_LIMBS, F.OBS_FEATURES), np.float32)
        extero = np.empty((self.num_envs, HFIELD_OBS_SIZE), np.float32) if self._terrain else None
        return obs, extero

    def _observe_all(self) -> tuple[np.ndarray, np.ndarray | None]:
        obs, extero = self._buffers()
        for i, sim in enumerate(self.sims):
            obs[i] = sim.observe()
            if extero is not None:
                extero[i] = sim.observe_hfield()
        return obs, extero

    def _pack(self, obs: np.ndarray, extero: np.ndarray | None) -> dict[str, np.ndarray]:
        out = {"obs": obs, "obs_mask": self._obs_mask.copy(), "act_mask": self._act_mask.copy(),
               "context": self._context.copy()}
        if extero is not None:
            out["extero"] = extero
        return out

    # contract --------------------------------------------------------------------------------------------
    def reset(self, seed=None) -> dict[str, np.ndarray]:
        if seed is not None:
            self._seed(seed)
        for i in range(self.num_envs):
            self._begin_episode(i)
        return self._pack(*self._observe_all())

    def step(self, actions: np.ndarray):
        if self.sims[0] is None:
            raise KdistillError("call reset() on the vector env before step().")
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, F.MAX_LIMBS * F.JOINT_SLOTS):
            raise KdistillError(f"actions must have shape ({self.num_envs}, {F.MAX_LIMBS * F.JOINT_SLOTS}), got {actions.shape}")
        n = self.num_envs
        obs, extero = self._buffers()
        rewards = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        infos: list[dict] = [{}] * n
        args = (actions, obs, extero, rewards, terminated, truncated, infos)
        if self._executor is None:
            self._step_stripe(self._stripes[0], *args)
        else:
            futures = [self._executor.submit(self._step_stripe, stripe, *args) for stripe in self._stripes[1:]]
            self._step_stripe(self._stripes[0], *args)
            for f in futures:
                f.result()
        return self._pack(obs, extero), rewards, terminated, truncated, infos

    def get_state(self) -> dict[str, np.ndarray]:
        """Each slot's robot, simulation (``Sim.get_state``, zero-padded to the longest), episode counters and
        generators."""
        if self.sims[0] is None:
            raise KdistillError("call reset() on the vector env before get_state().")
        index = {name: k for k, name in enumerate(self.tasks)}
        sims = [sim.get_state() for sim in self.sims]
        physics = np.zeros((self.num_envs, max(len(v) for v in sims)))
        for i, v in enumerate(sims):
            physics[i, :len(v)] = v
        return {"robot": np.array([index[sim.robot.name] for sim in self.sims], np.int64),
                "physics_size": np.array([len(v) for v in sims], np.int64), "physics": physics,
                "length": self.lengths.copy(), "return": self.returns.copy(),
                "rng": np.stack([rng_state_row(r) for r in self.rngs]), "episode_rng": self._episode_rng.copy()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        robots = np.asarray(state["robot"], np.int64)
        if len(robots) != self.num_envs or robots.min() < 0 or robots.max() >= len(self.tasks):
            raise CheckpointError(f"the saved episodes are of {len(robots)} envs over other robots; this vector env "
                                  f"has {self.num_envs} envs over {len(self.tasks)} robots.")
        for i in range(self.num_envs):
            self._use_robot(i, self._robots[self.tasks[robots[i]]])
            if self._terrain:  # the same height field as when the episode began
                self.sims[i].reset(rng_from_row(state["episode_rng"][i]), RESET_NOISE)
            self.sims[i].set_state(np.asarray(state["physics"][i, :int(state["physics_size"][i])]))
        self.lengths = np.asarray(state["length"], np.int64).copy()
        self.returns = np.asarray(state["return"], np.float64).copy()
        self.rngs = [rng_from_row(row) for row in state["rng"]]
        self._episode_rng = np.asarray(state["episode_rng"], np.uint64).copy()

    @property
    def slot_tasks(self) -> list[str]:
        """The robot each sub-env is playing now."""
        return [s.robot.name if s is not None else None for s in self.sims]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
