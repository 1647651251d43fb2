"""Files that never lose work: atomic writes, and checkpoints that load without running code.

A checkpoint is a folder holding ``weights.safetensors`` (tensors) and ``meta.json`` (config,
counters, normaliser state as lists). Each file is written to a temp file and renamed into place;
``meta.json`` is written last and names the weights' sha256, so a folder whose meta.json is absent
or disagrees with its weights is never taken for a complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.errors import CheckpointError

FORMAT = "kdistill-checkpoint/1"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupt.") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (metrics logs); a torn last line is skipped by ``read_jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_jsonl(path: str | os.PathLike, keep) -> None:
    """Rewrite a metrics log keeping only records for which ``keep(record)`` is true (used on resume)."""
    records = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


# checkpoints ---------------------------------------------------------------------------------------

def save_checkpoint(folder: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (torch tensors or numpy arrays) and ``meta`` (JSON-able) into ``folder``."""
    from safetensors.numpy import save as np_save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, v in tensors.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().contiguous().numpy()
        arrays[k] = np.ascontiguousarray(v)
    blob = np_save(arrays) if arrays else np_save({"__empty__": np.zeros(0, np.float32)})
    atomic_write_bytes(folder / "weights.safetensors", blob)
    meta = dict(meta)
    meta["format"] = FORMAT
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write_json(folder / "meta.json", meta)
    return folder


def load_checkpoint(folder: str | os.PathLike, as_torch: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(tensors, meta)`` from a checkpoint folder written by ``save_checkpoint``."""
    from safetensors.numpy import load as np_load

    folder = Path(folder)
    meta_path, weights_path = folder / "meta.json", folder / "weights.safetensors"
    if not meta_path.exists() or not weights_path.exists():
        raise CheckpointError(f"{folder} is not a complete kdistill checkpoint (needs meta.json and weights.safetensors).")
    meta = read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}.")
    blob = weights_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path} does not match its meta.json (interrupted write?); use an earlier checkpoint.")
    arrays = {k: v for k, v in np_load(blob).items() if k != "__empty__"}
    if as_torch:
        import torch

        arrays = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    return arrays, meta


# run folders ---------------------------------------------------------------------------------------
# RUN/ckpt-<step>/ holds each checkpoint; RUN/latest.json names the newest complete one and is
# replaced atomically after the checkpoint is fully written. Older checkpoints are pruned after.

def save_run_checkpoint(run: str | os.PathLike, step: int, tensors: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    run = Path(run)
    name = f"ckpt-{int(step):012d}"
    save_checkpoint(run / name, tensors, meta)
    atomic_write_json(run / "latest.json", {"checkpoint": name, "step": int(step)})
    ckpts = sorted(p for p in run.glob("ckpt-*") if p.is_dir())
    for old in ckpts[:-keep] if keep > 0 else []:
        if old.name != name:
            import shutil

            shutil.rmtree(old, ignore_errors=True)
    return run / name


def latest_checkpoint(run: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run folder, or None if it has none yet."""
    run = Path(run)
    pointer = run / "latest.json"
    if pointer.exists():
        try:
            name = json.loads(pointer.read_text())["checkpoint"]
            if (run / name / "meta.json").exists():
                return run / name
        except (json.JSONDecodeError, KeyError):
            pass
    for cand in sorted((p for p in run.glob("ckpt-*") if p.is_dir()), reverse=True):
        if (cand / "meta.json").exists():
            return cand
    return None


def load_run_checkpoint(run: str | os.PathLike, as_torch: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the newest complete checkpoint of ``run`` (a run folder or a checkpoint folder)."""
    run = Path(run)
    if (run / "meta.json").exists():
        return load_checkpoint(run, as_torch)
    if not run.exists():
        raise CheckpointError(f"{run} does not exist; pass a run folder written by kdistill.")
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise CheckpointError(f"{run} holds no complete kdistill checkpoint (ckpt-*/meta.json); pass a run folder written by kdistill, or wait for its first checkpoint.")
    try:
        return load_checkpoint(ckpt, as_torch)
    except CheckpointError:
        # fall back to an older complete checkpoint if the newest is damaged
        for cand in sorted((p for p in run.glob("ckpt-*") if p.is_dir() and p != ckpt), reverse=True):
            try:
                return load_checkpoint(cand, as_torch)
            except CheckpointError:
                continue
        raise
