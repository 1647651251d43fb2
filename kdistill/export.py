"""Export one task's student as a plain dense MLP (no context, no hypernetwork) for ``kdistill.runtime``.

The hypernetwork runs once here; its output for the task is folded into dense layers on the task's flat
student observation (``Student.fold``): the per-token input weights and the masked mean over real tokens
become one ``(T*S, H)`` layer whose rows for padded tokens are zero. The observation normaliser cannot be
folded into the weights (it clips), so it is stored beside them. File layout: see ``kdistill.runtime``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.domain import TaskContext
from kdistill.errors import CheckpointError
from kdistill.io import atomic_write_bytes, atomic_write_json, load_run_checkpoint
from kdistill.runtime import FORMAT, export_paths
from kdistill.students import StudentPolicy, context_tensors, load_student_policy


def fold_policy(policy: StudentPolicy, context: TaskContext) -> list[tuple[np.ndarray, np.ndarray]]:
    """The student's MLP for one task as ``[(weight (in, out), bias), ...]`` float32 arrays."""
    tokens, mask = context_tensors([context])
    with torch.no_grad():
        params = policy.student.generate(tokens, mask)
        layers = policy.student.fold(params, mask[0])
    return [(w.detach().cpu().numpy().astype(np.float32), b.detach().cpu().numpy().astype(np.float32)) for w, b in layers]


def export_policy(policy: StudentPolicy, task: str, context: TaskContext, out: str | Path,
                  source: str = "", domain: str = "") -> dict[str, Any]:
    """Write ``out`` (stem, ``.json`` or ``.safetensors``) for ``task``; returns the export's description."""
    from safetensors.numpy import save as st_save

    layout = policy.layout
    layers = fold_policy(policy, context)
    norm = policy.normalizer
    tensors: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(layers):
        tensors[f"layer{i}.weight"] = np.ascontiguousarray(w)
        tensors[f"layer{i}.bias"] = np.ascontiguousarray(b)
    tensors["norm.mean"] = np.ascontiguousarray(np.asarray(norm.rms.mean, np.float64).reshape(-1))
    tensors["norm.var"] = np.ascontiguousarray(np.asarray(norm.rms.var, np.float64).reshape(-1))
    blob = st_save(tensors)
    weights_path, json_path = export_paths(out)
    num_params = int(sum(w.size + b.size for w, b in layers))
    meta = {
        "format": FORMAT,
        "task": task,
        "domain": domain or policy.meta.get("domain", ""),
        "student": policy.meta.get("arch", policy.student.name),
        "source": source,
        "input": {"tokens": layout.max_tokens, "features_per_token": layout.student_token_features,
                  "student_features": list(layout.student_features),
                  "flat_size": layout.max_tokens * layout.student_token_features},
        "layers": [{"in": int(w.shape[0]), "out": int(w.shape[1]),
                    "activation": "relu" if i < len(layers) - 1 else None} for i, (w, _) in enumerate(layers)],
        "normalizer": {"clip": norm.clip, "epsilon": norm.epsilon},
        "act_mask": np.asarray(context.act_mask, bool).tolist(),
        "num_actions": layout.num_actions,
        "action_std": policy.action_std,
        "num_params": num_params,
        "flops": int(sum(2 * w.size for w, _ in layers)),
        "weights_file": weights_path.name,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_bytes(weights_path, blob)
    atomic_write_json(json_path, meta)
    return {**meta, "files": [str(weights_path), str(json_path)]}


def load_student_run(run: str | Path, domain: str | None = None) -> StudentPolicy:
    """The student policy of a run folder (or checkpoint folder), checked against ``domain``."""
    tensors, meta = load_run_checkpoint(run)
    if meta.get("kind") != "student":
        raise CheckpointError(f"{run} holds a {meta.get('kind')!r} checkpoint; export needs a student run from `kdistill distill`.")
    if domain is not None and meta.get("domain") != domain:
        raise CheckpointError(f"{run} is a {meta.get('domain')!r} student, not {domain!r}.")
    return load_student_policy(tensors, meta)


def export_student(run: str | Path, task: str, context: TaskContext, out: str | Path, domain: str | None = None) -> dict[str, Any]:
    """Load the student of ``run`` and export its MLP for ``task``."""
    policy = load_student_run(run, domain)
    return export_policy(policy, task, context, out, source=str(run), domain=domain or "")
