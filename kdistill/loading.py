"""Trained policies loaded from disk: ``load_policy(path)`` reads a run folder (its newest complete checkpoint)
or a checkpoint folder and returns a ``kdistill.policy.Policy`` of the kind the checkpoint names."""

from __future__ import annotations

from pathlib import Path

from kdistill.distill.students import load_student_policy
from kdistill.domain import Layout, check_task_kind
from kdistill.errors import CheckpointError
from kdistill.io import load_run_checkpoint, malformed
from kdistill.policy import Policy, TeacherPolicy, checked_normalizer
from kdistill.rl.experts import ExpertSetPolicy
from kdistill.state import load_model_state
from kdistill.teachers.lookup import build_teacher


def load_policy(path: str | Path, domain=None, device: str = "cpu", seed: int = 0) -> Policy:
    """Load the policy in ``path`` (a run folder or a checkpoint folder), checking its domain if given: a name, or
    a ``Domain``, whose kind of task is then checked too."""
    tensors, meta = load_run_checkpoint(path)
    check_domain(meta, domain, str(path))
    kind = meta.get("kind")
    try:
        policy = _build_policy(kind, tensors, meta, path, device, seed)
    except CheckpointError as exc:
        if str(path) in str(exc):
            raise
        raise CheckpointError(f"{path}: {exc}") from None
    # what PolicyRef ships to another executor's workers (the optimiser state is of no use there)
    policy.source = ({k: v for k, v in tensors.items() if not k.startswith("optim.")}, meta, device, seed)
    return policy


def _build_policy(kind, tensors: dict, meta: dict, path, device: str, seed: int) -> Policy:
    with malformed(f"the checkpoint meta.json in {path}", "use another checkpoint or train the policy again."):
        if kind == "teacher":
            model = build_teacher(meta)
            load_model_state(model, tensors)
            layout = Layout.from_dict(meta["layout"])
            normalizer = checked_normalizer(meta["normalizer"], (layout.max_tokens, layout.obs_features))
            return TeacherPolicy(model, normalizer, meta, device=device, seed=seed)
        if kind == "student":
            return load_student_policy(tensors, meta, device=device, seed=seed)
        if kind == "experts":
            return ExpertSetPolicy(tensors, meta, seed=seed)
    raise CheckpointError(f"{path} holds a policy of kind {kind!r}; kdistill loads 'teacher', 'student' and 'experts' "
                          f"policies.")


def check_domain(meta: dict, domain, what: str) -> None:
    """Raise a one-line ``CheckpointError`` unless ``meta`` was written on ``domain`` (a name, or a ``Domain``
    whose kind of task must match too); None checks nothing."""
    if domain is None:
        return
    name = domain if isinstance(domain, str) else domain.name
    if meta.get("domain") != name:
        raise CheckpointError(f"{what} holds a policy for domain {meta.get('domain')!r}, not {name!r}; "
                              f"pass a policy trained on {name!r}.")
    if not isinstance(domain, str):
        check_task_kind(meta, domain, what)
