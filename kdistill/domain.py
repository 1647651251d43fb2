"""The domain contract: what a domain supplies so the core can train, distill, evaluate and export.

A domain is a family of tasks whose differences are described by a *context*. The core sees every
domain through the same observation layout, whatever it simulates:

* ``obs``      float32 ``(T, F)``   per-token state the teacher sees (raw; the core normalises it)
* ``obs_mask`` bool    ``(T,)``     True where a token slot is padding
* ``act_mask`` bool    ``(T*A,)``   True where an action slot is padding (the env ignores it)
* ``context``  float32 ``(T, C)``   per-token task context, constant within a task
* ``extero``   float32 ``(E,)``     only when ``layout.extero_features = E > 0``: what the task senses of its
  surroundings, one vector per step (e.g. a height map around the agent), raw (the core does not normalise it)

``T`` is the number of token slots (one per body part in a morphology domain; 1 for a domain whose context is a plain
vector), ``F`` the teacher's per-token features, ``A`` the actions per token. The student sees only
``obs[..., layout.student_features]`` and the context, which goes through the hypernetwork once
per task. Envs are ``gymnasium.Env`` whose observation is a ``Dict`` with those keys; a domain may
add keys of its own.

Example (a domain with one token and a 3-number context)::

    class PendulumFamily(kdistill.Domain):
        name = "pendulums"
        layout = kdistill.Layout(max_tokens=1, obs_features=3, student_features=(0, 1, 2),
                                 context_features=3, actions_per_token=1, context_kind="vector")
        def splits(self): return {"train": [...], "test": [...]}
        def make_env(self, task, **kw): return PendulumEnv(self.params[task], **kw)
        def context(self, task): return kdistill.TaskContext.single(self.params_vector(task), num_actions=1)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import numpy as np

from kdistill.errors import unknown_name
from kdistill.rl.vec import SyncVecEnv

_positive = attrs.validators.gt(0)


@attrs.frozen
class Layout:
    """Shapes shared by a domain's envs, teachers and students."""

    max_tokens: int = attrs.field(validator=_positive)
    obs_features: int = attrs.field(validator=_positive)
    student_features: tuple[int, ...] = attrs.field(converter=tuple)
    context_features: int = attrs.field(validator=_positive)
    actions_per_token: int = attrs.field(validator=_positive)
    context_kind: str = attrs.field(default="tokens", validator=attrs.validators.in_(("tokens", "vector")))
    # per-step exteroception (observation key "extero"); 0 = none. Defaulted, so layouts saved before it load unchanged
    extero_features: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    @student_features.validator
    def _check_student_features(self, attribute, value):
        if not value or any(i < 0 or i >= self.obs_features for i in value):
            raise ValueError(f"student_features must be indices in [0, {self.obs_features}), got {value}")

    @property
    def num_actions(self) -> int:
        return self.max_tokens * self.actions_per_token

    @property
    def student_token_features(self) -> int:
        return len(self.student_features)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Layout":
        return cls(**d)


@attrs.frozen(eq=False)
class TaskContext:
    """The per-task context the hypernetwork reads, with its padding masks."""

    tokens: np.ndarray  # (T, C) float32
    mask: np.ndarray  # (T,) bool, True = padded token
    act_mask: np.ndarray  # (T*A,) bool, True = padded action slot

    @classmethod
    def single(cls, vector: Sequence[float], num_actions: int) -> "TaskContext":
        """A one-token context from a plain vector (domains with ``context_kind='vector'``)."""
        v = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        return cls(v, np.zeros(1, dtype=bool), np.zeros(num_actions, dtype=bool))


@attrs.frozen
class TeacherSpec:
    """A teacher architecture a domain offers.

    ``build(layout, config)`` returns an actor-critic ``torch.nn.Module`` (see ``kdistill.rl.trainer``);
    ``config_cls`` is a frozen attrs class with a ``presets()`` classmethod returning named configs.
    """

    name: str
    build: Callable[..., Any]
    config_cls: type
    description: str = ""


class Domain:
    """Base class for domains. Subclasses set ``name``, ``description``, ``layout`` and override the methods."""

    name: str = ""
    description: str = ""
    layout: Layout
    # A domain that offers several kinds of task (variants of its envs, e.g. the ground an agent walks on) lists them
    # here, takes ``task_kind=`` in its constructor (``kdistill.get_domain(name, task_kind=...)``, ``--task`` on the
    # command line) and reports the one it plays as ``task_kind``; its layout may depend on it. Empty: one kind.
    task_kinds: tuple[str, ...] = ()

    # tasks -----------------------------------------------------------------------------------------
    def splits(self) -> dict[str, list[str]]:
        """Task names per split, e.g. ``{"train": [...], "test": [...]}``."""
        raise NotImplementedError

    def tasks(self, split: str | None = None, names: Sequence[str] | None = None) -> list[str]:
        """Tasks of a split (or ``"all"``), or the given names checked against every split."""
        splits = self.splits()
        if names:
            known = {t for ts in splits.values() for t in ts}
            for n in names:
                if n not in known:
                    raise unknown_name(f"{self.name} task", n, known)
            return list(names)
        split = split or "train"
        if split == "all":
            seen: dict[str, None] = {}
            for ts in splits.values():
                seen.update(dict.fromkeys(ts))
            return list(seen)
        if split not in splits:
            raise unknown_name(f"{self.name} split", split, list(splits) + ["all"])
        return list(splits[split])

    # environments ------------------------------------------------------------------------------------
    def make_env(self, task: str, **kwargs) -> Any:
        """A ``gymnasium.Env`` for one task whose observation follows the layout above."""
        raise NotImplementedError

    def make_vec_env(self, tasks: Sequence[str], num_envs: int, seed: int = 0, sampler=None,
                     threads: int | None = None, **kwargs):
        """A ``kdistill.rl.vec.VecEnv`` over ``tasks``; each sub-env picks its task at reset via ``sampler``.

        ``threads`` is a hint: how many threads the vector env may step on (None: the domain's choice;
        a caller that already steps several vector envs in parallel passes 1). The default steps
        ``make_env`` envs on the calling thread and ignores it; override for something faster.
        """

        return SyncVecEnv.from_domain(self, tasks, num_envs, seed=seed, sampler=sampler, **kwargs)

    def context(self, task: str) -> TaskContext:
        """The task's context tokens and masks."""
        raise NotImplementedError

    # teachers ----------------------------------------------------------------------------------------
    default_teacher: str = ""  # a teacher registered through ``register_teachers`` by this domain's plugin

    # optional ----------------------------------------------------------------------------------------
    def check(self, tasks: Sequence[str], steps: int = 1000) -> list[dict[str, Any]]:
        """Load and step each task; one dict per task with at least ``name``, ``ok`` and ``error``."""
        raise NotImplementedError(f"domain {self.name!r} has no check")

    def fetch_data(self, source: str | None = None, progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
        """Install the domain's data (``kdistill data fetch``): download it, or copy it from ``source``
        (a local folder or archive). ``progress(description, completed, total)`` reports work done
        (``total`` may be None). Returns facts about the install, e.g. ``{"path": ..., "files": ...}``."""
        raise NotImplementedError(f"domain {self.name!r} has no data to fetch")

    def add_task_folder(self, path: str) -> list[str]:
        """Make the task files in folder ``path`` tasks of this domain (``--tasks-dir``) and return
        their names. Each file is validated here, with the same one-line ``DataError``s as the domain's own data;
        a name that clashes with a different task is an error. Afterwards ``make_env``, ``context`` and
        ``make_vec_env`` accept them like any other task."""
        raise NotImplementedError(f"domain {self.name!r} does not read task folders")

    def demo_defaults(self) -> dict[str, Any]:
        """Settings for ``kdistill demo`` (see ``kdistill.demo.DEMO_KEYS``); missing keys use the core's."""
        return {}

    def pretrained_teacher(self) -> Any:
        """Path of a teacher run shipped with the domain (used by ``kdistill demo``), or None to train one."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts for ``kdistill domains``."""
        return {"name": self.name, "description": self.description,
                "splits": {k: len(v) for k, v in self.splits().items()}}


# task kinds ---------------------------------------------------------------------------------------------------
def task_kind_of(domain) -> str | None:
    """The kind of task ``domain`` plays (its first ``task_kinds`` entry unless built with another), or None for a
    domain with one kind."""
    kinds = tuple(getattr(domain, "task_kinds", ()) or ())
    if not kinds:
        return None
    return getattr(domain, "task_kind", None) or kinds[0]


def domain_label(domain) -> str:
    """``name`` or ``name:kind`` (the DOMAIN argument that builds this domain again; the default kind is left out)."""
    kind = task_kind_of(domain)
    return domain.name if kind is None or kind == domain.task_kinds[0] else f"{domain.name}:{kind}"


def task_kind_meta(domain) -> dict[str, str]:
    """What a checkpoint or data folder records of the task kind: ``{"task_kind": kind}``, or nothing for the
    default kind (so those files stay as they were before kinds existed) and for a domain with one kind."""
    kind = task_kind_of(domain)
    return {} if kind is None or kind == domain.task_kinds[0] else {"task_kind": kind}


def check_task_kind(meta: dict, domain, what: str) -> None:
    """Raise a one-line ``CheckpointError`` unless ``meta`` (a checkpoint's or data folder's) was made on the kind of
    task ``domain`` plays. A meta without ``task_kind`` was written before kinds existed: the domain's default kind."""
    from kdistill.errors import CheckpointError

    want = task_kind_of(domain)
    if want is None:
        return
    saved = meta.get("task_kind") or domain.task_kinds[0]
    if saved != want:
        raise CheckpointError(f"{what} was made on {domain.name}:{saved} tasks, not {domain.name}:{want}; pass DOMAIN "
                              f"as {domain.name}:{saved}, or a run made on {domain.name}:{want}.")
