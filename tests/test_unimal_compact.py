"""The compact one-robot env (kdistill/Unimal-ft-compact-v0): its spaces, its agreement with the padded env, and a
third-party learner (Stable-Baselines3) driving it."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import kdistill_unimal  # noqa: F401  (registers the ids)
from kdistill_unimal import features as F
from kdistill_unimal.compact import CompactUnimalEnv, compact_indices

SMALL = "floor-5506-3-10-01-14-19-06"  # 4 limbs, 7 dof
MEDIAN = "floor-1409-0-12-01-12-30-07"  # 8 limbs, 11 dof, limbs with one joint and with two


@pytest.fixture(autouse=True)
def _robots(unimal_dir, monkeypatch):
    monkeypatch.setenv("KDISTILL_UNIMAL_DIR", str(unimal_dir))


def test_spaces_are_the_robots_own():
    env = gym.make("kdistill/Unimal-ft-compact-v0", robot=MEDIAN)
    r = env.unwrapped.robot
    assert r.num_bodies == 9 and r.dof == 11
    assert env.observation_space.shape == (30 * 9 + 11 * 11,)
    assert env.action_space.shape == (11,) and env.action_space.low.min() == -1 and env.action_space.high.max() == 1
    state = gym.make("kdistill/Unimal-ft-compact-v0", robot=MEDIAN, observation="state")
    assert state.observation_space.shape == (13 * 9 + 2 * 11,)
    obs, info = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32 and info["task"] == MEDIAN


def test_check_env_is_clean():
    from gymnasium.utils.env_checker import check_env

    for observation in ("full", "state"):
        env = CompactUnimalEnv(SMALL, observation=observation)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any checker warning fails the test
            check_env(env, skip_render_check=True)


def test_same_episode_as_the_padded_env():
    """Same seed and the same actuator commands: the compact observation is the padded one's real entries, and
    rewards and endings agree step for step."""
    compact = CompactUnimalEnv(MEDIAN)
    padded = gym.make("kdistill/Unimal-ft-v0", robot=MEDIAN).unwrapped
    r = compact.robot
    c_obs, _ = compact.reset(seed=5)
    p_obs, _ = padded.reset(seed=5)
    index = compact_indices(r)
    np.testing.assert_array_equal(c_obs, p_obs["obs"].reshape(-1)[index])
    # no padded entry is left in: every torso joint slot and absent joint slot is out, every real one in
    kept = set(index.tolist())
    for row in range(F.MAX_LIMBS):
        for slot in range(F.JOINT_SLOTS):
            q = row * F.OBS_FEATURES + F.LIMB_FEATURES + F.JOINT_FEATURES * slot + F.J_QPOS
            real = any(int(a) == row and int(b) == slot for a, b in zip(r.joint_row, r.joint_slot))
            assert (q in kept) == real
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.uniform(-1, 1, r.nu).astype(np.float32)
        full = np.zeros(F.MAX_LIMBS * F.JOINT_SLOTS, np.float32)
        full[r.ctrl_index] = a
        c = compact.step(a)
        p = padded.step(full)
        np.testing.assert_array_equal(c[0], p[0]["obs"].reshape(-1)[index])
        assert c[1:4] == p[1:4]
        if c[2] or c[3]:
            break


def test_wrong_action_size_is_refused():
    env = CompactUnimalEnv(SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="one per actuator"):
        env.step(np.zeros(24, np.float32))
    with pytest.raises(ValueError, match="one robot"):
        CompactUnimalEnv([SMALL, MEDIAN])


def test_stable_baselines3_ppo_drives_it():
    """A library that is not ours: SB3's PPO collects and learns on the compact env for a few thousand steps."""
    import torch
    from stable_baselines3 import PPO  # in the dev extra: a missing one fails, it never skips

    torch.set_num_threads(1)
    env = gym.make("kdistill/Unimal-ft-compact-v0", robot=SMALL)
    model = PPO("MlpPolicy", env, n_steps=512, batch_size=512, n_epochs=1, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=2048)
    assert model.num_timesteps >= 2048
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (7,)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=512, reset_num_timesteps=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))  # it learned something
