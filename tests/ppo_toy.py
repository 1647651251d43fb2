"""A tiny, fast domain for testing PPO, teachers and evaluation (loadable as a plugin file).

Each task has up to 3 tokens, one action per token. A token's state x moves by 0.2 * clip(action);
the reward per step is the mean over real tokens of 1 - |x - goal|, so a good policy steers every
token to its task's goal. An episode ends when any |x| > 2 (a "fall": terminated) or after 30 steps
(truncated). The teacher sees x, the goal and their difference; the context holds the goal.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from kdistill import Domain, Layout, TaskContext, TeacherSpec, hookimpl
from kdistill.teachers.transformer import ModuMorphTeacherConfig, TransformerTeacherConfig, build_modumorph_teacher, build_transformer_teacher

TOKENS, FEATURES, CONTEXT = 3, 4, 2
GOALS = {
    "two": [0.5, -0.5],
    "three": [-0.3, 0.4, 0.8],
    "one": [0.7],
    "far": [1.2, -1.0],
}
TEST_GOALS = {"unseen": [-0.6, 0.6, 0.1]}
MAX_STEPS = 30


class ToyEnv(gym.Env):
    metadata: dict = {}

    def __init__(self, task: str):
        goals = {**GOALS, **TEST_GOALS}[task]
        self.task, self.n = task, len(goals)
        self.goal = np.zeros(TOKENS, np.float32)
        self.goal[: self.n] = goals
        self.obs_mask = np.arange(TOKENS) >= self.n
        self.observation_space = gym.spaces.Dict({
            "obs": gym.spaces.Box(-np.inf, np.inf, (TOKENS, FEATURES), np.float32),
            "obs_mask": gym.spaces.MultiBinary(TOKENS),
            "act_mask": gym.spaces.MultiBinary(TOKENS),
            "context": gym.spaces.Box(-np.inf, np.inf, (TOKENS, CONTEXT), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (TOKENS,), np.float32)
        self.x = np.zeros(TOKENS, np.float32)
        self.t = 0

    def _obs(self):
        obs = np.zeros((TOKENS, FEATURES), np.float32)
        real = ~self.obs_mask
        obs[real, 0] = self.x[real]
        obs[real, 1] = self.goal[real]
        obs[real, 2] = self.x[real] - self.goal[real]
        obs[real, 3] = 1.0
        context = np.zeros((TOKENS, CONTEXT), np.float32)
        context[real, 0] = self.goal[real]
        context[real, 1] = 1.0
        return {"obs": obs, "obs_mask": self.obs_mask.copy(), "act_mask": self.obs_mask.copy(), "context": context}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(TOKENS, np.float32)
        self.x[: self.n] = self.np_random.uniform(-0.1, 0.1, self.n)
        self.t = 0
        return self._obs(), {"task": self.task}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float32)[: self.n], -1, 1)
        self.x[: self.n] += 0.2 * a
        self.t += 1
        reward = float(np.mean(1.0 - np.abs(self.x[: self.n] - self.goal[: self.n])))
        terminated = bool(np.any(np.abs(self.x) > 2.0))
        truncated = self.t >= MAX_STEPS
        return self._obs(), reward, terminated, truncated, {"task": self.task}


class ToyDomain(Domain):
    name = "toy"
    description = "steer tokens to per-task goals (tests)"
    layout = Layout(max_tokens=TOKENS, obs_features=FEATURES, student_features=(0, 2), context_features=CONTEXT,
                    actions_per_token=1)
    default_teacher = "toy_tf"

    def __init__(self, data_dir=None):
        self.data_dir = data_dir

    def splits(self):
        return {"train": list(GOALS), "test": list(TEST_GOALS)}

    def make_env(self, task, **kwargs):
        return ToyEnv(task)

    def context(self, task):
        env = ToyEnv(task)
        obs = env._obs()
        return TaskContext(obs["context"], obs["obs_mask"], obs["act_mask"])


class ToyTeacherConfig(TransformerTeacherConfig):
    @classmethod
    def presets(cls):
        return {"paper": cls(), "cpu": cls(d_model=16, num_layers=1, num_heads=2, feedforward=32)}


class ToyModuConfig(ModuMorphTeacherConfig):
    @classmethod
    def presets(cls):
        return {"paper": cls(), "cpu": cls(d_model=16, num_layers=1, num_heads=2, feedforward=32)}


@hookimpl
def register_domains(register):
    register("toy", ToyDomain)


@hookimpl
def register_teachers(register):
    register("toy_tf", TeacherSpec("toy_tf", build_transformer_teacher, ToyTeacherConfig, "MetaMorph transformer (toy sizes)"))
    register("toy_modu", TeacherSpec("toy_modu", build_modumorph_teacher, ToyModuConfig, "ModuMorph transformer (toy sizes)"))
