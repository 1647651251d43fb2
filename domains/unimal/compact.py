"""One UNIMAL robot with its own observation and action sizes, for any RL library (``kdistill/Unimal-ft-compact-v0``).

``kdistill/Unimal-ft-v0`` serves the padded ``Dict`` observation every kdistill policy reads (12 limb slots, masks,
context). A third-party learner on one robot wants the robot alone: ``CompactUnimalEnv`` plays the same task (same
physics, reward, termination, truncation and reset noise) with

* observation: ``Box(-1e6, 1e6, (n,), float32)`` (finite bounds, and values clipped to them, which no stable
  simulation reaches), the robot's real features only, the reference's unpadded view:
  per body (torso first, MuJoCo body order) its 30 limb features, then per real joint of that body its 11 joint
  features (slot 0 before slot 1). Torso joint slots and the absent joint slot of a one-joint limb are left out.
  ``n = 30 * bodies + 11 * dof``. With ``observation="state"`` only what changes within an episode is kept:
  body position, velocities and orientation (13 per body) and each joint's qpos and qvel (2 per joint);
* action: ``Box(-1, 1, (nu,), float32)``, one entry per actuator, in the robot file's ``<actuator>`` order.

Example (Stable-Baselines3)::

    import gymnasium as gym, kdistill_unimal
    from stable_baselines3 import PPO
    PPO("MlpPolicy", gym.make("kdistill/Unimal-ft-compact-v0", robot="floor-5506-3-10-01-14-19-06")).learn(100_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from kdistill_unimal import features as F
from kdistill_unimal.env import MAX_EPISODE_STEPS, RobotLibrary, UnimalEnv

OBSERVATIONS = ("full", "state")
OBS_BOUND = 1e6
_STATE_LIMB = tuple(range(0, 13))  # body_xpos, body_xvelp, body_xvelr, body_xquat
_STATE_JOINT = (F.J_QPOS, F.J_QVEL)


def compact_indices(robot, observation: str = "full") -> np.ndarray:
    """Positions in the flat padded (12 * 52) observation of the robot's real features, in compact order."""
    if observation not in OBSERVATIONS:
        raise ValueError(f"observation must be one of {OBSERVATIONS}, got {observation!r}")
    limb = range(F.LIMB_FEATURES) if observation == "full" else _STATE_LIMB
    joint = range(F.JOINT_FEATURES) if observation == "full" else _STATE_JOINT
    slots = {(int(r), int(s)) for r, s in zip(robot.joint_row, robot.joint_slot)}
    out: list[int] = []
    for row in range(robot.num_bodies):
        base = row * F.OBS_FEATURES
        out.extend(base + c for c in limb)
        for slot in range(F.JOINT_SLOTS):
            if (row, slot) in slots:
                start = base + F.LIMB_FEATURES + F.JOINT_FEATURES * slot
                out.extend(start + c for c in joint)
    return np.asarray(out, dtype=np.int64)


class CompactUnimalEnv(gym.Env):
    """Flat-terrain locomotion of one UNIMAL robot with exactly its own observation features and actuators."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, robot: str, data_dir: str | Path | None = None, observation: str = "full",
                 max_episode_steps: int = MAX_EPISODE_STEPS, render_mode: str | None = None,
                 library: RobotLibrary | None = None, robots_dir: str | Path | Sequence[str | Path] | None = None):
        if not isinstance(robot, str):
            raise ValueError("the compact env plays one robot: pass robot='NAME' (kdistill/Unimal-ft-v0 switches "
                             "robots at reset)")
        if library is None:
            dirs = [] if robots_dir is None else ([robots_dir] if isinstance(robots_dir, (str, Path)) else list(robots_dir))
            library = RobotLibrary(data_dir, allow_missing=bool(dirs))
            for d in dirs:
                library.add_folder(d)
        self.inner = UnimalEnv(robot, max_episode_steps=max_episode_steps, render_mode=render_mode, library=library)
        r = self.inner.robot
        self.observation = observation
        self._index = compact_indices(r, observation)
        self._ctrl_index = np.asarray(r.ctrl_index)
        self._full_action = np.zeros(F.MAX_LIMBS * F.JOINT_SLOTS, np.float32)
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, (len(self._index),), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (r.nu,), np.float32)

    @property
    def robot(self):
        return self.inner.robot

    def _compact(self, obs: dict) -> np.ndarray:
        return np.clip(obs["obs"].reshape(-1)[self._index], -OBS_BOUND, OBS_BOUND)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self.inner.reset(seed=seed, options=options)
        return self._compact(obs), info

    def step(self, action):
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != self.action_space.shape:
            raise ValueError(f"expected an action of shape {self.action_space.shape} (one per actuator), got {a.shape}")
        full = self._full_action
        full[self._ctrl_index] = a
        obs, reward, terminated, truncated, info = self.inner.step(full)
        return self._compact(obs), reward, terminated, truncated, info

    def render(self):
        return self.inner.render()

    def close(self):
        self.inner.close()
