"""UNIMAL env speed: env steps/s against raw MuJoCo physics steps/s, and the vector env.

Run with ``pytest tests/benchmarks/test_env_speed.py --benchmark-only -s``. Each env benchmark
also times raw ``mj_step`` (one substep per call, the same random controls and episode ends) on the
same robot in the same run and stores both rates and ``ratio = env steps/s / (physics steps/s / 4)`` in ``extra_info``;
a ratio of 1 would mean the observation, reward and bookkeeping cost nothing.
"""

from __future__ import annotations

import time

import mujoco
import numpy as np
import pytest

from kdistill_unimal.env import RobotLibrary, UnimalEnv

ROBOTS = {  # the probe's small / median / large robots
    "small": "floor-5506-3-10-01-14-19-06",  # 4 limbs, 7 dof
    "median": "floor-1409-11-11-01-08-26-42",  # 8 limbs, 11 dof
    "large": "vt-5506-1-16-02-19-08-46",  # 10 limbs, 16 dof
}
STEPS = 1000


def physics_steps_per_s(env: UnimalEnv, actions: np.ndarray, repeats: int = 5) -> float:
    """Raw ``mj_step`` substeps per second along the same kind of trajectory as the env's.

    Same robot, same actions, and a reset wherever the env would end the episode (a falling robot is
    cheap to simulate until it touches the floor, so an uninterrupted lying robot would be unfair).
    Only the ``ctrl`` writes and the ``mj_step`` calls are timed.
    """
    robot = env.robot
    sim = robot.new_sim()
    model, data = sim.model, sim.data
    fall = 0.5 * robot.orig_height
    best = float("inf")
    for _ in range(repeats):
        rng = np.random.default_rng(0)
        sim.reset(rng)
        elapsed = 0.0
        for k in range(len(actions)):
            start = time.perf_counter()
            data.ctrl[:] = actions[k][robot.ctrl_index]
            for _ in range(4):
                mujoco.mj_step(model, data)
            elapsed += time.perf_counter() - start
            if data.xpos[1, 2] - 1.0 <= fall:
                sim.reset(rng)
        best = min(best, elapsed)
    return 4 * len(actions) / best


@pytest.mark.parametrize("size", list(ROBOTS))
def test_env_steps_vs_physics(benchmark, unimal_dir, size):
    env = UnimalEnv(ROBOTS[size], data_dir=unimal_dir)
    actions = np.random.default_rng(0).uniform(-1, 1, (STEPS, 24)).astype(np.float32)
    env.reset(seed=0)

    def episode_block():
        for k in range(STEPS):
            _, _, terminated, truncated, _ = env.step(actions[k])
            if terminated or truncated:
                env.reset()

    benchmark.pedantic(episode_block, rounds=5, iterations=1, warmup_rounds=1)
    env_rate = STEPS / benchmark.stats.stats.min
    physics_rate = physics_steps_per_s(env, actions)
    ratio = env_rate / (physics_rate / 4)
    benchmark.extra_info.update(robot=ROBOTS[size], env_steps_per_s=round(env_rate), physics_steps_per_s=round(physics_rate),
                                ratio=round(ratio, 3))
    print(f"\n{size:6s} {ROBOTS[size]}: env {env_rate:,.0f} steps/s, physics {physics_rate:,.0f} steps/s, ratio {ratio:.2f}")


@pytest.mark.parametrize("threads", [1, 2])
def test_vec_env_steps(benchmark, unimal_dir, threads):
    library = RobotLibrary(unimal_dir)
    from kdistill_unimal.vec import UnimalVecEnv

    vec = UnimalVecEnv(library, library.splits["train"], num_envs=32, seed=0, threads=threads)
    vec.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (100, 32, 24)).astype(np.float32)

    def block():
        for k in range(len(actions)):
            vec.step(actions[k])

    benchmark.pedantic(block, rounds=5, iterations=1, warmup_rounds=1)
    rate = 32 * len(actions) / benchmark.stats.stats.min
    benchmark.extra_info.update(num_envs=32, threads=threads, env_steps_per_s=round(rate))
    print(f"\nvec env, 32 envs over the 100 train robots, {threads} thread(s): {rate:,.0f} env steps/s")
    vec.close()
