"""The in-process UNIMAL vector env: contract, same-step auto-reset, reproducibility, the domain object."""

from __future__ import annotations

import numpy as np
import pytest

from kdistill.errors import KdistillError
from kdistill.rl.sampling import FixedProbsSampler, UniformSampler
from kdistill.rl.vec import VecEnv
from kdistill_unimal.domain import UnimalDomain
from kdistill_unimal.env import UnimalEnv

SMALL = "floor-5506-3-10-01-14-19-06"
MEDIAN = "floor-1409-11-11-01-08-26-42"
LARGE = "vt-5506-1-16-02-19-08-46"  # falls within ~15 steps of random or zero action
TASKS = [SMALL, MEDIAN, LARGE]


@pytest.fixture(scope="module")
def domain(unimal_dir):
    return UnimalDomain(data_dir=unimal_dir)


def spawn_height(domain, name):
    return domain.library.get(name).spec.torso_z


def run(vec, steps, seed=0):
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(steps):
        out = vec.step(rng.uniform(-1, 1, (vec.num_envs, 24)).astype(np.float32))
        history.append(out)
    return history


def test_contract_shapes_and_autoreset(domain):
    vec = domain.make_vec_env(TASKS, num_envs=6, seed=0, sampler=UniformSampler(TASKS), threads=1)
    assert isinstance(vec, VecEnv) and vec.num_envs == 6
    obs = vec.reset(seed=1)
    assert obs["obs"].shape == (6, 12, 52) and obs["obs"].dtype == np.float32
    assert obs["obs_mask"].shape == (6, 12) and obs["act_mask"].shape == (6, 24) and obs["context"].shape == (6, 12, 53)
    lengths = np.zeros(6, int)
    returns = np.zeros(6)
    finished = 0
    rng = np.random.default_rng(0)
    for _ in range(120):
        obs, rewards, terminated, truncated, infos = vec.step(rng.uniform(-1, 1, (6, 24)))
        assert rewards.shape == terminated.shape == truncated.shape == (6,)
        lengths += 1
        returns += rewards
        for i, info in enumerate(infos):
            task = vec.slot_tasks[i]
            # the observation always belongs to the robot the slot plays now
            assert (~obs["obs_mask"][i]).sum() == domain.library.get(task).num_bodies
            np.testing.assert_array_equal(obs["context"][i], domain.context(task).tokens)
            if terminated[i] or truncated[i]:
                ep = info["episode"]
                assert ep["length"] == lengths[i]
                assert ep["return"] == pytest.approx(returns[i], rel=1e-5, abs=1e-4)
                assert ep["task"] == info["task"]
                # already the first observation of the next episode: the torso is back at its spawn height
                assert obs["obs"][i, 0, 2] == pytest.approx(spawn_height(domain, task), abs=0.02)
                lengths[i], returns[i] = 0, 0.0
                finished += 1
            else:
                assert "episode" not in info
    assert finished >= 3
    vec.close()


def test_same_seed_same_result_whatever_the_threads(domain):
    def collect(threads):
        vec = domain.make_vec_env(TASKS, num_envs=5, seed=7, threads=threads)
        first = vec.reset()
        hist = run(vec, 60, seed=3)
        vec.close()
        return first, hist

    (f1, h1), (f2, h2) = collect(1), collect(2)
    np.testing.assert_array_equal(f1["obs"], f2["obs"])
    for a, b in zip(h1, h2):
        np.testing.assert_array_equal(a[0]["obs"], b[0]["obs"])
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])
        assert [i["task"] for i in a[4]] == [i["task"] for i in b[4]]


def test_matches_the_single_env(domain):
    """A one-robot vector env steps exactly like the gymnasium env on the same state."""
    vec = domain.make_vec_env([MEDIAN], num_envs=1, seed=0, threads=1)
    obs = vec.reset()
    env = UnimalEnv(MEDIAN, library=domain.library)
    env.reset(seed=0)
    env.sim.data.qpos[:] = vec.sims[0].data.qpos
    env.sim.data.qvel[:] = vec.sims[0].data.qvel
    import mujoco

    mujoco.mj_forward(env.sim.model, env.sim.data)
    np.testing.assert_array_equal(env._observation()["obs"], obs["obs"][0])
    action = np.random.default_rng(0).uniform(-1, 1, 24).astype(np.float32)
    o1, r1, *_ = env.step(action)
    o2, r2, *_ = vec.step(action[None])
    np.testing.assert_array_equal(o1["obs"], o2["obs"][0])
    assert r1 == pytest.approx(float(r2[0]), rel=1e-6)


def test_sampler_drives_robot_choice(domain):
    sampler = FixedProbsSampler(TASKS, probs=[0.0, 0.0, 1.0])  # only the large robot
    vec = domain.make_vec_env(TASKS, num_envs=3, seed=0, sampler=sampler, threads=1)
    vec.reset()
    assert vec.slot_tasks == [LARGE] * 3


def test_bad_use(domain):
    with pytest.raises(KdistillError, match="other robots"):
        domain.make_vec_env(TASKS, 2, sampler=UniformSampler([SMALL]))
    vec = domain.make_vec_env(TASKS, 2, threads=1)
    with pytest.raises(KdistillError, match="reset"):
        vec.step(np.zeros((2, 24)))
    vec.reset()
    with pytest.raises(KdistillError, match="shape"):
        vec.step(np.zeros((3, 24)))


def test_domain_facts(domain, unimal_dir):
    layout = domain.layout
    assert (layout.max_tokens, layout.obs_features, layout.context_features, layout.actions_per_token) == (12, 52, 53, 2)
    assert layout.student_features == tuple(range(13)) + (30, 31, 41, 42)
    assert domain.default_teacher == "metamorph"
    splits = domain.splits()
    assert len(splits["train"]) == 100 and len(splits["test"]) == 102
    ctx = domain.context(MEDIAN)
    env = domain.make_env(MEDIAN)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(ctx.tokens, obs["context"])
    np.testing.assert_array_equal(ctx.mask, obs["obs_mask"])
    np.testing.assert_array_equal(ctx.act_mask, obs["act_mask"])
    facts = domain.describe()
    assert facts["splits"] == {"train": 100, "test": 102} and facts["task_kind"] == "ft"
    rows = domain.check([SMALL, LARGE], steps=50)
    assert [r["ok"] for r in rows] == [True, True]
    assert rows[1]["limbs"] == 10 and rows[1]["dof"] == 16 and rows[1]["split"] == "test"
    assert rows[1]["episodes"] >= 1  # the large robot falls under random actions


def test_constructing_the_domain_is_cheap(tmp_path):
    # no data needed (and nothing compiled) until something asks for robots
    domain = UnimalDomain(data_dir=tmp_path / "nothing-here")
    assert domain.name == "unimal" and domain._library is None


def _same_history(a, b) -> None:
    for t, (x, y) in enumerate(zip(a, b)):
        for key in x[0]:
            np.testing.assert_array_equal(x[0][key], y[0][key], err_msg=f"{key} at step {t}")
        for j in (1, 2, 3):
            np.testing.assert_array_equal(x[j], y[j], err_msg=f"output {j} at step {t}")
        assert x[4] == y[4], f"infos at step {t}"


@pytest.mark.parametrize("kind", ["ft", "vt", "obstacle"])
def test_saved_episodes_go_on_exactly_in_another_env(unimal_dir, kind):
    """get_state/set_state carry running episodes (robots changing between episodes, terrain redrawn) into a
    vector env built with other seeds and threads: the next 100 steps, with resets, are the same."""
    domain = UnimalDomain(data_dir=unimal_dir, task_kind=kind)
    a = domain.make_vec_env(TASKS, 6, seed=1, sampler=UniformSampler(TASKS), max_episode_steps=40, threads=2)
    a.reset()
    run(a, 90, seed=4)
    b = domain.make_vec_env(TASKS, 6, seed=9, sampler=UniformSampler(TASKS), max_episode_steps=40, threads=1)
    b.reset()
    b.set_state(a.get_state())
    later_a, later_b = run(a, 100, seed=5), run(b, 100, seed=5)
    assert sum("episode" in info for out in later_a for info in out[4]) >= 6  # episodes ended and began again
    _same_history(later_a, later_b)


def test_saved_episodes_move_between_worker_processes_and_this_one(domain):
    from kdistill.rl.experts import pinned_vec_env

    pooled, local = pinned_vec_env(domain, TASKS, 2, workers=2), pinned_vec_env(domain, TASKS, 2, workers=0)
    try:
        pooled.reset(seed=list(range(6)))
        run(pooled, 60, seed=1)
        local.reset(seed=list(range(10, 16)))
        local.set_state(pooled.get_state())
        _same_history(run(pooled, 80, seed=2), run(local, 80, seed=2))
        pooled.set_state(local.get_state())  # and back
        _same_history(run(pooled, 30, seed=3), run(local, 30, seed=3))
    finally:
        pooled.close()
        local.close()


def test_saved_episodes_refuse_other_robots(domain):
    from kdistill.errors import CheckpointError

    a = domain.make_vec_env(TASKS, 3, seed=0, sampler=UniformSampler(TASKS))
    a.reset()
    b = domain.make_vec_env(TASKS[:1], 3, seed=0)
    b.reset()
    with pytest.raises(CheckpointError, match="other robots"):
        b.set_state({**a.get_state(), "robot": np.array([0, 1, 2])})
    sim = domain.library.get(SMALL).new_sim()
    with pytest.raises(CheckpointError, match="does not fit"):
        sim.set_state(domain.library.get(MEDIAN).new_sim().get_state())
