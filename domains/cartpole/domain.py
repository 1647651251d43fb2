"""The cart-pole family as a kdistill domain: tasks, splits, envs, contexts, teachers and demo defaults."""

from __future__ import annotations

import time
from typing import Any, Sequence

import attrs
import numpy as np

import kdistill
from kdistill import KdistillError, Layout, TaskContext
from kdistill.errors import unknown_name
from kdistill_cartpole.env import NUM_CONTEXT, NUM_FEATURES, CartPoleEnv, CartPoleVecEnv
from kdistill_cartpole.physics import PARAM_NAMES, STATE_NAMES, CartPoleParams, Dynamics, ParamRanges, make_task_params
from kdistill_cartpole.teacher import CONTEXT_MLP


def _non_negative(instance, attribute, value):
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class CartPoleConfig:
    """How many tasks each split has, the seeds that draw them, their parameter ranges and the physics."""

    num_train: int = attrs.field(default=32, validator=_non_negative)
    num_test: int = attrs.field(default=16, validator=_non_negative)
    train_seed: int = 7
    test_seed: int = 1007
    ranges: ParamRanges = attrs.field(factory=ParamRanges, validator=attrs.validators.instance_of(ParamRanges))
    dynamics: Dynamics = attrs.field(factory=Dynamics, validator=attrs.validators.instance_of(Dynamics))

    def __attrs_post_init__(self):
        if self.num_train + self.num_test == 0:
            raise ValueError("a cart-pole family needs at least one task")
        if self.train_seed == self.test_seed:
            raise ValueError("train_seed and test_seed must differ, or the test tasks repeat the train tasks")

    @classmethod
    def presets(cls) -> dict[str, "CartPoleConfig"]:
        return {
            "default": cls(),
            # fewer tasks and shorter episodes for quick checks and CI
            "small": cls(num_train=8, num_test=4, dynamics=Dynamics(episode_steps=100)),
        }


class CartPoleDomain(kdistill.Domain):
    """Cart-poles that differ by pole length and mass, cart mass, gravity, actuator gain and actuator sign."""

    name = "cartpole"
    description = "continuous cart-pole balancing; tasks differ by 6 physical parameters incl. actuator sign (numpy)"
    layout = Layout(max_tokens=1, obs_features=NUM_FEATURES, student_features=tuple(range(NUM_FEATURES)),
                    context_features=NUM_CONTEXT, actions_per_token=1, context_kind="vector")
    default_teacher = CONTEXT_MLP.name

    def __init__(self, data_dir: str | None = None, config: CartPoleConfig | str | None = None):
        # data_dir is accepted because the CLI passes it to every domain; cart-poles need no data.
        if config is None or isinstance(config, str):
            presets = CartPoleConfig.presets()
            key = config or "default"
            if key not in presets:
                raise KdistillError(f"unknown cartpole config preset {key!r}; choose one of {', '.join(presets)}.")
            config = presets[key]
        self.config = config
        train = make_task_params(config.num_train, config.train_seed, config.ranges)
        test = make_task_params(config.num_test, config.test_seed, config.ranges)
        self._splits = {"train": [f"train-{i:02d}" for i in range(len(train))],
                        "test": [f"test-{i:02d}" for i in range(len(test))]}
        self.params: dict[str, CartPoleParams] = dict(zip(self._splits["train"] + self._splits["test"], train + test))

    # tasks -----------------------------------------------------------------------------------------
    def splits(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self._splits.items()}

    def _params(self, task: str) -> CartPoleParams:
        try:
            return self.params[task]
        except KeyError:
            raise unknown_name("cartpole task", task, self.params) from None

    def context_vector(self, task: str) -> np.ndarray:
        """The task's normalised parameters (6,): magnitudes scaled to [-1, 1], then the sign."""
        return self.config.ranges.normalise(self._params(task).as_array())

    def context(self, task: str) -> TaskContext:
        return TaskContext.single(self.context_vector(task), num_actions=self.layout.num_actions)

    # environments ------------------------------------------------------------------------------------
    def make_env(self, task: str, **kwargs) -> CartPoleEnv:
        return CartPoleEnv(self._params(task), task=task, ranges=self.config.ranges, dynamics=self.config.dynamics)

    def make_vec_env(self, tasks: Sequence[str], num_envs: int, seed: int = 0, sampler=None, threads=None,
                     **kwargs) -> CartPoleVecEnv:
        # numpy-vectorised over all envs: one thread is all it uses, so ``threads`` changes nothing
        tasks = list(tasks)
        return CartPoleVecEnv(tasks, {t: self._params(t) for t in tasks}, num_envs, seed=seed, sampler=sampler,
                              ranges=self.config.ranges, dynamics=self.config.dynamics)

    # extras ------------------------------------------------------------------------------------------
    def demo_defaults(self) -> dict[str, Any]:
        """Settings for ``kdistill demo cartpole``: within ~10 minutes on 2 cores the HN-MLP student reaches at least
        0.95 of the teacher (normalised) on held-out tasks, and the context-blind MLP stays well below it."""
        return dict(DEMO_DEFAULTS)

    def check(self, tasks: Sequence[str], steps: int = 1000) -> list[dict[str, Any]]:
        """Step each task with random actions; report the speed, episodes finished and any failure."""
        out = []
        for i, task in enumerate(tasks):
            row: dict[str, Any] = {"name": task, "ok": True, "error": None}
            try:
                env = self.make_env(task)
                env.reset(seed=i)
                env.action_space.seed(i)
                episodes, start = 0, time.perf_counter()
                for _ in range(steps):
                    _, _, terminated, truncated, info = env.step(env.action_space.sample())
                    if info.get("unstable"):
                        raise RuntimeError("simulation went unstable")
                    if terminated or truncated:
                        episodes += 1
                        env.reset()
                row.update(steps_per_s=steps / max(time.perf_counter() - start, 1e-9), episodes=episodes)
            except Exception as exc:  # reported per task, not raised: check is a survey
                row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            out.append(row)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "context": list(PARAM_NAMES), "state": list(STATE_NAMES),
                "episode_steps": self.config.dynamics.episode_steps}


# Tuned so that the full pipeline (teacher PPO, expert collection, two distillations, evaluation) fits well inside
# 10 minutes on 2 CPU cores; docs/writing-a-domain.md records the measured figures.
DEMO_DEFAULTS: dict[str, Any] = {
    "teacher": CONTEXT_MLP.name,
    "teacher_preset": "default",
    "ppo_preset": "cpu",
    "teacher_steps": 409_600,  # 100 PPO iterations of 16 envs x 256 steps
    "samples_per_task": 4000,
    "collect_envs": 16,
    "student": "hnmlp",
    "blind_student": "mlp",  # same generated-MLP size, never sees the context
    "student_preset": "small",
    "distill_preset": "demo",
    "distill_epochs": 15,
    "eval_episodes": 16,
}
