"""Files that never lose work: atomic writes, and checkpoints that load without running code.

A checkpoint is a folder holding ``weights.safetensors`` (tensors) and ``meta.json`` (config,
counters, normaliser state as lists). Each file is written to a temp file and renamed into place;
``meta.json`` is written last and names the weights' sha256, so a folder whose meta.json is absent
or disagrees with its weights is never taken for a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdistill.errors import CheckpointError, DataError, KdistillError

FORMAT = "kdistill-checkpoint/1"
OWNER_FILE = ".kdistill-owner.json"
OWNER_FORMAT = "kdistill-owner/1"

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the kernel tells it (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def copy_folder(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the folder ``src`` to the new path ``dst`` under a temporary name first, so that an interrupted copy is
    never taken for a finished one (a checkpoint, a run)."""
    import shutil

    dst = Path(dst)
    partial = dst.with_name(f".partial-{dst.name}")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial)
    partial.rename(dst)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; the result should be readable like any file the user writes
        os.fchmod(fd, file_mode())
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
    """Write strict JSON; a NaN or infinity is refused (Python would write a token no JSON reader accepts)."""
    atomic_write_text(path, _encode_json(obj, path) + "\n")


def _encode_json(obj: Any, path: str | os.PathLike) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    except ValueError:
        raise DataError(f"refusing to write {path}: it would hold a NaN or infinite number.") from None


class GrowingJsonFile:
    """A JSON object file rewritten after each new entry of one of its members, a dict that grows (the ``tasks`` of
    expert data's meta.json). ``write(obj)`` writes exactly what ``atomic_write_json(path, obj)`` writes, but encodes
    an entry of ``obj[key]`` only when it is new or replaced by another object: encoding every entry again at each
    write would cost time growing with the square of their number. Replace entries; never change one in place."""

    def __init__(self, path: str | os.PathLike, key: str):
        self.path, self.key = Path(path), key
        self._entries: dict[str, tuple[Any, str]] = {}  # name -> (the value encoded, its text in the file)
        self._placeholder = f"\0{key}\0"  # no file name, task name or number encodes to this

    def write(self, obj: dict) -> None:
        entries = {}
        for name, value in obj[self.key].items():
            entry = self._entries.get(name)
            if entry is None or entry[0] is not value:
                # an entry sits two levels deep: its lines are indented 4 spaces more than when it is encoded alone
                text = _encode_json(value, self.path).replace("\n", "\n    ")
                entry = (value, f"    {json.dumps(name)}: {text}")
            entries[name] = entry
        self._entries = entries
        block = "{\n" + ",\n".join(entries[name][1] for name in sorted(entries)) + "\n  }" if entries else "{}"
        text = _encode_json({**obj, self.key: self._placeholder}, self.path)
        atomic_write_text(self.path, text.replace(json.dumps(self._placeholder), block, 1) + "\n")


def strict_jsonable(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, so it dumps as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return strict_jsonable(obj.item())
    return obj


def dumps_strict(obj: Any, **kwargs) -> str:
    return json.dumps(strict_jsonable(obj), default=_json_default, allow_nan=False, **kwargs)


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
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a JSON file.") from None
    except PermissionError:
        raise CheckpointError(f"{path} is not readable (permission denied).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupt.") from None


def read_json_object(path: str | os.PathLike) -> dict:
    """``read_json`` for files that must hold a JSON object."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, not an object; the file is corrupt.")
    return obj


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (metrics logs); a torn last line is skipped by ``read_jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(dumps_strict(record) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def truncate_jsonl(path: str | os.PathLike, keep) -> None:
    """Rewrite a metrics log keeping only records for which ``keep(record)`` is true (used on resume)."""
    records = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(dumps_strict(r) + "\n" for r in records))


@contextlib.contextmanager
def malformed(path: str | os.PathLike, hint: str):
    """Turn what a damaged file makes code trip on (a missing key, a wrong type) into one CheckpointError
    naming the file; kdistill's own errors pass through unchanged."""
    try:
        yield
    except KdistillError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, KeyError):
            what = f"missing key {exc}"
        else:
            what = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path} is malformed ({what}); {hint}") from None


# non-finite values ---------------------------------------------------------------------------------

def first_non_finite(arrays: dict[str, Any]) -> str | None:
    """The name of the first floating-point array holding a NaN or infinity, or None."""
    for name, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return name
    return None


class NonFiniteError(DataError):
    """Weights, data or a loss holding NaN or infinity."""


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
    bad = first_non_finite(arrays)
    if bad is not None:
        raise NonFiniteError(f"refusing to write checkpoint {folder}: tensor {bad!r} holds NaN or infinity.")
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
    meta = read_json_object(meta_path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}.")
    try:
        blob = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {weights_path} ({exc.strerror}).") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path} does not match its meta.json (interrupted write?); use an earlier checkpoint.")
    try:
        arrays = {k: v for k, v in np_load(blob).items() if k != "__empty__"}
    except Exception as exc:  # safetensors raises its own error types for a malformed file
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({exc}).") from None
    bad = first_non_finite(arrays)
    if bad is not None:
        raise CheckpointError(f"{weights_path}: tensor {bad!r} holds NaN or infinity; use an earlier checkpoint.")
    if meta.get("stored_dtype") == "float16":  # shipped at half the size (scripts/ship_checkpoint.py); computed in float32
        arrays = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in arrays.items()}
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
        # a damaged pointer falls back to scanning: the checkpoints themselves are the truth
        try:
            name = json.loads(pointer.read_text())["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            name = None
        if isinstance(name, str) and name.startswith("ckpt-") and "/" not in name and "\\" not in name \
                and (run / name / "meta.json").exists():
            return run / name
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
        raise CheckpointError(f"{run} holds no complete kdistill checkpoint (ckpt-*/meta.json); pass a run folder written by "
                              f"kdistill, or wait for its first checkpoint.")
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


# output folders ------------------------------------------------------------------------------------
# A command deletes or overwrites only what it wrote itself. A folder a command creates carries a mark
# (OWNER_FILE, naming the kind of folder); an existing folder is reused only when it carries the same
# mark, is empty, or is recognisably a folder of that kind written before marks existed.

def folder_owner(path: str | os.PathLike) -> str | None:
    """The kind named by a folder's ownership mark, or None when it has none (or an unreadable one)."""
    try:
        mark = json.loads((Path(path) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(mark, dict) and mark.get("format") == OWNER_FORMAT and isinstance(mark.get("kind"), str):
        return mark["kind"]
    return None


def _kind_words(kind: str) -> str:
    return kind.replace("-", " ")


def check_writable(folder: str | os.PathLike, option: str = "--out") -> None:
    """Raise a one-line error unless a file can be created in ``folder`` (checked by creating one)."""
    folder = Path(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".kdistill-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise KdistillError(f"{option} {folder} is not writable ({exc.strerror}); choose a folder you can write to.") from None


def check_can_create(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Raise a one-line error unless ``folder`` exists as a writable folder or could be created (its nearest
    existing ancestor is a writable folder). Creates nothing: for checking an output path before the rest of
    a command's inputs; the writer creates the folder."""
    folder = Path(folder)
    for existing in (folder, *folder.parents):
        if existing.exists():
            if not existing.is_dir():
                raise KdistillError(f"{option} {folder}: {existing} is a file, not a folder; choose another path.")
            check_writable(existing, option)
            return folder
    return folder


def check_new_file(out: str | os.PathLike, suffixes: Sequence[str], what: str, overwrite: bool = False,
                   option: str = "--out") -> Path:
    """The path of a one-file output (a plot, a video) after checking, before any work, its suffix, that it is not
    a folder, that an existing file is replaced only with ``overwrite``, and that its folder can be created."""
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise KdistillError(f"{option} {out}: the {what} must end in {' or '.join(suffixes)}.")
    if path.is_dir():
        raise KdistillError(f"{option} {out} is a folder; give a file name such as {path / ('out' + suffixes[0])}.")
    if path.exists() and not overwrite:
        raise KdistillError(f"{option} {out} already exists; choose another name or pass --overwrite.")
    check_can_create(path.parent if str(path.parent) else Path("."), option)  # created when the file is written
    return path


def claim_folder(path: str | os.PathLike, kind: str, option: str = "--out", legacy=None, check_only: bool = False) -> Path:
    """Make ``path`` a folder of ``kind`` that this command may write into, or raise a one-line error.

    A new or empty folder gets the mark. A marked folder must be of the same kind. An unmarked folder with
    files is taken only if ``legacy(path)`` says it is a folder of this kind (and then gets the mark).
    ``check_only``: raise the same errors but create and mark nothing, for a command that checks the rest of
    its inputs before it claims the folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KdistillError(f"{option} {path} is a file, not a folder; choose a new folder.")
    if path.is_dir():
        owner = folder_owner(path)
        if owner is not None:
            if owner != kind:
                raise KdistillError(f"{option} {path} holds a kdistill {_kind_words(owner)}, where "
                                    f"{_kind_words(kind)} was to be written; choose another folder.")
            check_writable(path, option)
            return path
        try:
            entries = [p for p in path.iterdir() if p.name != OWNER_FILE]
        except OSError as exc:
            raise KdistillError(f"{option} {path} cannot be read ({exc.strerror}); choose another folder.") from None
        if entries and not (legacy is not None and legacy(path)):
            raise KdistillError(f"{option} {path} already holds files that are not kdistill {_kind_words(kind)}; "
                                f"choose a new or empty folder (kdistill overwrites only what it wrote).")
    if check_only:
        return path
    if not path.is_dir():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KdistillError(f"{option} {path} cannot be created ({exc.strerror}); choose another folder.") from None
    try:
        atomic_write_json(path / OWNER_FILE, {"format": OWNER_FORMAT, "kind": kind})
    except OSError as exc:
        raise KdistillError(f"{option} {path} is not writable ({exc.strerror}); choose a folder you can write to.") from None
    return path


def claim_results_folder(path: str | os.PathLike, kind: str, files: set[str], option: str = "--out") -> Path:
    """``claim_folder`` for a folder of result ``files`` (eval, compare, bench): an unmarked folder that holds
    nothing but those files, an earlier result written before folders were marked, is taken too."""
    def only_results(folder: Path) -> bool:
        return all(p.name in files or p.name == OWNER_FILE for p in folder.iterdir())

    return claim_folder(path, kind, option, legacy=only_results)


def looks_like_run(kind: str):
    """A ``legacy`` test for ``claim_folder``: a run folder whose checkpoints are of ``kind`` (teacher/student)."""

    def test(path: Path) -> bool:
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            return False
        try:
            meta = json.loads((ckpt / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("kind") == kind

    return test
