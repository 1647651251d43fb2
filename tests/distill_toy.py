"""A toy token domain and a toy teacher for the distillation, export and expert-data tests.

Tasks differ by how many of the 3 token slots are real (1 to 3) and by a random per-token context. The state
of each real token drifts with the actions; the teacher's mean action is a fixed smooth function of the
normalised student-view features and the context, so a student can learn it exactly. Usable as a plugin:
``KDISTILL_PLUGINS=tests/distill_toy.py`` registers the domain ``toytokens``.
"""

from __future__ import annotations

import zlib

import gymnasium as gym
import numpy as np

import kdistill
from kdistill import Layout, TaskContext
from kdistill.rl.normalise import ObsNormalizer

T, F, S_IDX, C, A = 3, 5, (0, 2, 3), 4, 2
EPISODE = 25


def _task_rng(task: str, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(task.encode()), salt])


class ToyTokenDomain(kdistill.Domain):
    name = "toytokens"
    description = "toy token domain for tests"
    layout = Layout(max_tokens=T, obs_features=F, student_features=S_IDX, context_features=C, actions_per_token=A)

    def __init__(self, data_dir=None, num_train: int = 6, num_test: int = 2, **_):
        self._splits = {"train": [f"toy-{i}" for i in range(num_train)],
                        "test": [f"toy-test-{i}" for i in range(num_test)]}

    def splits(self):
        return {k: list(v) for k, v in self._splits.items()}

    def real_tokens(self, task: str) -> int:
        return 1 + zlib.crc32(task.encode()) % T

    def context(self, task: str) -> TaskContext:
        n = self.real_tokens(task)
        tokens = np.zeros((T, C), np.float32)
        tokens[:n] = _task_rng(task).uniform(-1, 1, (n, C))
        mask = np.arange(T) >= n
        return TaskContext(tokens, mask, np.repeat(mask, A))

    def make_env(self, task: str, **kwargs):
        return ToyTokenEnv(self.context(task), task)


class ToyTokenEnv(gym.Env):
    def __init__(self, context: TaskContext, task: str):
        self.ctx, self.task = context, task
        self.observation_space = gym.spaces.Dict({
            "obs": gym.spaces.Box(-np.inf, np.inf, (T, F), np.float32),
            "obs_mask": gym.spaces.MultiBinary(T),
            "act_mask": gym.spaces.MultiBinary(T * A),
            "context": gym.spaces.Box(-np.inf, np.inf, (T, C), np.float32),
        })
        self.action_space = gym.spaces.Box(-1, 1, (T * A,), np.float32)
        self.state = np.zeros((T, F), np.float32)
        self.t = 0

    def _obs(self):
        state = self.state * (~self.ctx.mask)[:, None]
        return {"obs": state.astype(np.float32), "obs_mask": self.ctx.mask.copy(),
                "act_mask": self.ctx.act_mask.copy(), "context": self.ctx.tokens.copy()}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.normal(0, 1, (T, F)).astype(np.float32) + np.array([2, -1, 0.5, 3, 0], np.float32)
        self.t = 0
        return self._obs(), {"task": self.task}

    def step(self, action):
        a = np.asarray(action, np.float32).reshape(T, A)
        drive = np.concatenate([a, a[:, :1] * a[:, 1:], np.zeros((T, F - A - 1), np.float32)], axis=1)
        self.state = 0.8 * self.state + 0.5 * drive + 0.3 * self.np_random.normal(0, 1, (T, F)).astype(np.float32)
        self.t += 1
        reward = float(2.0 - np.sum((a * (~self.ctx.act_mask.reshape(T, A)) - 0.3) ** 2))
        return self._obs(), reward, False, self.t >= EPISODE, {"task": self.task}


def teacher_normalizer() -> ObsNormalizer:
    norm = ObsNormalizer((T, F))
    rng = np.random.default_rng(123)
    norm.rms.mean = rng.normal(0, 1, (T, F))
    norm.rms.var = rng.uniform(0.5, 3, (T, F))
    norm.training = False
    return norm


class ToyTeacher:
    """A policy-like teacher: mean action = tanh of a context-dependent linear map of the normalised
    student-view features (so a student can represent it)."""

    action_std = 0.9

    def __init__(self, normalizer: ObsNormalizer | None = None):
        self.normalizer = normalizer or teacher_normalizer()
        rng = np.random.default_rng(7)
        self.mix = rng.normal(0, 0.7, (C, len(S_IDX) * A)).astype(np.float32)
        self.offset = rng.normal(0, 0.5, (C, A)).astype(np.float32)
        self.prepared = []

    def prepare(self, task, context):
        self.prepared.append(task)

    def act(self, obs, deterministic=True):
        x = self.normalizer.normalize(np.asarray(obs["obs"], np.float32))[..., list(S_IDX)]  # (N, T, S)
        ctx = np.asarray(obs["context"], np.float32)  # (N, T, C)
        w = (ctx @ self.mix).reshape(*ctx.shape[:2], len(S_IDX), A)
        mu = np.tanh(np.einsum("nts,ntsa->nta", x, w) + ctx @ self.offset)
        return mu.reshape(len(x), T * A).astype(np.float32)


# a real (untrained, tiny) transformer teacher, for the CLI path through kdistill.loading.load_policy ----------

def _teacher_spec():
    import attrs

    from kdistill import TeacherSpec
    from kdistill.teachers.transformer import TransformerTeacherConfig, build_transformer_teacher

    @attrs.frozen
    class TinyTeacherConfig(TransformerTeacherConfig):
        @classmethod
        def presets(cls):
            return {"default": cls(d_model=16, num_layers=1, num_heads=2, feedforward=32)}

    return TeacherSpec("toytokens_tf", build_transformer_teacher, TinyTeacherConfig, "tiny transformer")


def write_teacher_run(run, seed: int = 0):
    """A teacher run folder (one checkpoint, untrained weights) that ``load_policy`` accepts."""
    import torch

    from kdistill.io import save_run_checkpoint

    spec = _teacher_spec()
    config = spec.config_cls.presets()["default"]
    torch.manual_seed(seed)
    model = spec.build(ToyTokenDomain.layout, config)
    meta = {"kind": "teacher", "domain": "toytokens", "arch": spec.name, "config": config.to_dict(),
            "layout": ToyTokenDomain.layout.to_dict(), "normalizer": teacher_normalizer().state(),
            "counters": {"env_steps": 0}}
    save_run_checkpoint(run, 0, {f"model.{k}": v for k, v in model.state_dict().items()}, meta)
    return run


@kdistill.hookimpl
def register_domains(register):
    register("toytokens", ToyTokenDomain)


@kdistill.hookimpl
def register_teachers(register):
    spec = _teacher_spec()
    register(spec.name, spec)
