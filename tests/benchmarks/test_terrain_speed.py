"""UNIMAL terrain tasks (vt, obstacle) speed: env steps/s against raw MuJoCo physics steps/s of the same models.

Run with ``pytest tests/benchmarks/test_terrain_speed.py --benchmark-only -p no:randomly -s``. The convention is
tests/benchmarks/test_env_speed.py's: each benchmark also times raw ``mj_step`` (the ``ctrl`` writes and the 4
substeps only) on the same models in the same run, along the same kind of trajectory (same actions, a reset, untimed,
wherever the env would end the episode), and stores ``ratio = env steps/s / (physics steps/s / 4)`` in
``extra_info``. Issue 14 asks for a ratio of at least 0.5: the height-field observation, the terrain redrawn at
every reset and the bookkeeping may cost at most as much as the physics.
"""

from __future__ import annotations

import time

import mujoco
import numpy as np
import pytest

from kdistill_unimal.env import RobotLibrary, UnimalEnv, stand_height_ratio
from kdistill_unimal.vec import UnimalVecEnv

ROBOTS = {  # the probe's small / median / large robots
    "small": "floor-5506-3-10-01-14-19-06",
    "median": "floor-1409-11-11-01-08-26-42",
    "large": "vt-5506-1-16-02-19-08-46",
}
STEPS = 1000
TASKS = ["vt", "obstacle"]


def _ends(sim, fall: float) -> bool:
    return sim.torso_height() <= fall or sim.near_edge()


def physics_steps_per_s(sims, fall, actions: np.ndarray, repeats: int = 3) -> float:
    """Raw substeps per second of ``sims`` (stepped in turn, as a vector env does), ``actions`` (steps, len(sims), 24)."""
    best = float("inf")
    for _ in range(repeats):
        rng = np.random.default_rng(0)
        for sim in sims:
            sim.reset(rng)
        elapsed = 0.0
        for k in range(len(actions)):
            for i, sim in enumerate(sims):
                model, data = sim.model, sim.data
                start = time.perf_counter()
                data.ctrl[:] = actions[k, i][sim.robot.ctrl_index]
                for _ in range(4):
                    mujoco.mj_step(model, data)
                elapsed += time.perf_counter() - start
                if _ends(sim, fall[i]):
                    sim.reset(rng)
        best = min(best, elapsed)
    return 4 * actions.shape[0] * actions.shape[1] / best


@pytest.mark.parametrize("size", list(ROBOTS))
@pytest.mark.parametrize("task", TASKS)
def test_terrain_env_steps_vs_physics(benchmark, unimal_dir, task, size):
    env = UnimalEnv(ROBOTS[size], data_dir=unimal_dir, task=task)
    actions = np.random.default_rng(0).uniform(-1, 1, (STEPS, 24)).astype(np.float32)
    env.reset(seed=0)
    ends = 0

    def episode_block():
        nonlocal ends
        for k in range(STEPS):
            _, _, terminated, truncated, _ = env.step(actions[k])
            if terminated or truncated:
                ends += 1
                env.reset()

    benchmark.pedantic(episode_block, rounds=5, iterations=1, warmup_rounds=1)
    env_rate = STEPS / benchmark.stats.stats.min
    robot = env.robot
    physics_rate = physics_steps_per_s([robot.new_sim()], [stand_height_ratio(task) * robot.orig_height], actions[:, None])
    ratio = env_rate / (physics_rate / 4)
    benchmark.extra_info.update(task=task, robot=ROBOTS[size], env_steps_per_s=round(env_rate),
                                physics_steps_per_s=round(physics_rate), ratio=round(ratio, 3), episodes_per_block=ends / 6)
    print(f"\n{task:8s} {size:6s}: env {env_rate:,.0f} steps/s, physics {physics_rate:,.0f} steps/s, ratio {ratio:.2f} "
          f"({ends / 6:.1f} episodes ended per {STEPS} steps)")


@pytest.mark.parametrize("task", TASKS)
def test_terrain_vec_env_vs_physics(benchmark, unimal_dir, task):
    """The vector env on one thread (32 envs over 10 training robots) against raw physics of its own 32 simulations."""
    library = RobotLibrary(unimal_dir)
    vec = UnimalVecEnv(library, library.splits["train"][:10], num_envs=32, seed=0, threads=1, task=task)
    vec.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (100, 32, 24)).astype(np.float32)

    def block():
        for k in range(len(actions)):
            vec.step(actions[k])

    benchmark.pedantic(block, rounds=5, iterations=1, warmup_rounds=1)
    rate = 32 * len(actions) / benchmark.stats.stats.min
    physics_rate = physics_steps_per_s(list(vec.sims), list(vec._fall), actions)
    ratio = rate / (physics_rate / 4)
    benchmark.extra_info.update(task=task, num_envs=32, threads=1, env_steps_per_s=round(rate),
                                physics_steps_per_s=round(physics_rate), ratio=round(ratio, 3))
    print(f"\n{task} vec env, 32 envs over 10 train robots, 1 thread: {rate:,.0f} env steps/s, physics "
          f"{physics_rate:,.0f} steps/s, ratio {ratio:.2f}")
    vec.close()
