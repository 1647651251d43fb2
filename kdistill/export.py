"""Export one task's student as a plain dense MLP (no context, no hypernetwork) for ``kdistill.runtime``.

The hypernetwork runs once here; its output for the task is folded into dense layers on the task's flat
student observation (``Student.fold``): the per-token input weights and the masked mean over real tokens
become one ``(T*S, H)`` layer whose rows for padded tokens are zero. The observation normaliser cannot be
folded into the weights (it clips), so it is stored beside them. File layout: see ``kdistill.runtime``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.domain import TaskContext
from kdistill.errors import CheckpointError, KdistillError
from kdistill.io import (NonFiniteError, atomic_write_bytes, atomic_write_json, first_non_finite, load_run_checkpoint,
                         malformed, prepare_output_dir)
from kdistill.runtime import FORMAT, export_paths
from kdistill.students import StudentPolicy, context_tensors, load_student_policy


def fold_policy(policy: StudentPolicy, context: TaskContext) -> list[tuple[np.ndarray, np.ndarray]]:
    """The student's MLP for one task as ``[(weight (in, out), bias), ...]`` float32 arrays."""
    tokens, mask = context_tensors([context])
    with torch.no_grad():
        params = policy.student.generate(tokens, mask)
        layers = policy.student.fold(params, mask[0])
    return [(w.detach().cpu().numpy().astype(np.float32), b.detach().cpu().numpy().astype(np.float32)) for w, b in layers]


def _is_export_json(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def check_export_target(out: str | Path, option: str = "--out") -> tuple[Path, Path]:
    """The export's two paths, after checking they may be written: an existing file there is replaced only
    when it is itself a kdistill export (kdistill overwrites only what it wrote)."""
    weights_path, json_path = export_paths(out)
    for p in (json_path, weights_path):
        if p.is_dir():
            raise KdistillError(f"{option} {out}: {p} is a folder; give a file stem such as {p.parent / 'policy'}.")
    for parent in (json_path.parent, *json_path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise KdistillError(f"{option} {out}: {parent} is a file, not a folder; choose another --out.")
            break
    ours = json_path.is_file() and _is_export_json(json_path)
    for p in (json_path, weights_path):
        if p.exists() and not ours:
            raise KdistillError(f"{option} {out}: {p} already exists and is not a kdistill export; choose another "
                                f"--out (kdistill overwrites only exports it wrote).")
    prepare_output_dir(json_path.parent, option)
    return weights_path, json_path


def export_policy(policy: StudentPolicy, task: str, context: TaskContext, out: str | Path,
                  source: str = "", domain: str = "") -> dict[str, Any]:
    """Write ``out`` (stem, ``.json`` or ``.safetensors``) for ``task``; returns the export's description."""
    from safetensors.numpy import save as st_save

    layout = policy.layout
    layers = fold_policy(policy, context)
    bad = first_non_finite({f"layer{i}": w for i, (w, _) in enumerate(layers)}
                           | {f"layer{i} bias": b for i, (_, b) in enumerate(layers)})
    if bad is not None:
        raise NonFiniteError(f"the student's generated MLP for {task!r} has NaN or infinity in {bad}; nothing was "
                             f"exported. The student is damaged: distill it again.")
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
    with malformed(f"the checkpoint meta.json in {run}", "use another checkpoint or distill the student again."):
        return load_student_policy(tensors, meta)


def export_student(run: str | Path, task: str, context: TaskContext, out: str | Path, domain: str | None = None) -> dict[str, Any]:
    """Load the student of ``run`` and export its MLP for ``task``."""
    policy = load_student_run(run, domain)
    return export_policy(policy, task, context, out, source=str(run), domain=domain or "")
