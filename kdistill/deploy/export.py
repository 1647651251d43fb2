"""Export one task's student as a plain dense MLP (no context, no hypernetwork) for ``kdistill.deploy.runtime``.

The hypernetwork runs once here; its output for the task is folded into dense layers on the task's flat
student observation (``Student.fold``): the per-token input weights and the masked mean over real tokens
become one ``(T*S, H)`` layer whose rows for padded tokens are zero. The observation normaliser cannot be
folded into the weights (it clips), so it is stored beside them. File layout: see ``kdistill.deploy.runtime``.

A student that reads exteroception also exports its encoder (``Student.fold_extero``), the same for every task: the
export then has two inputs, the flat observation and the raw ``extero`` vector (runtime, ONNX, and C through
``policy_act_extero``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.deploy import runtime
from kdistill.deploy.c_source import check_c, write_c
from kdistill.deploy.runtime import FORMAT, export_paths
from kdistill.distill.students import StudentPolicy, context_tensors, load_student_policy
from kdistill.domain import TaskContext
from kdistill.errors import CheckpointError, KdistillError
from kdistill.io import NonFiniteError, atomic_write_bytes, atomic_write_json, check_can_create, first_non_finite, load_run_checkpoint, malformed


def fold_policy(policy: StudentPolicy, context: TaskContext) -> list[tuple[np.ndarray, np.ndarray]]:
    """The student's MLP for one task as ``[(weight (in, out), bias), ...]`` float32 arrays."""
    tokens, mask = context_tensors([context])
    with torch.no_grad():
        params = policy.student.generate(tokens, mask)
        layers = policy.student.fold(params, mask[0])
    return [(w.detach().cpu().numpy().astype(np.float32), b.detach().cpu().numpy().astype(np.float32)) for w, b in layers]


def extero_layers(policy: StudentPolicy) -> list[tuple[np.ndarray, np.ndarray]]:
    """The student's exteroception encoder as float32 ``[(weight (in, out), bias), ...]`` (ReLU after every layer);
    [] for a student without one."""
    fold_extero = getattr(policy.student, "fold_extero", None)  # plugin students without exteroception may lack it
    with torch.no_grad():
        layers = fold_extero() if fold_extero is not None else []
    return [(w.detach().cpu().numpy().astype(np.float32), b.detach().cpu().numpy().astype(np.float32)) for w, b in layers]


def _extero_meta(policy: StudentPolicy, encoder: list) -> dict[str, Any]:
    if not encoder:
        return {}
    return {"extero": {"features": int(encoder[0][0].shape[0]), "joins": "layer0",
                       "layers": [{"in": int(w.shape[0]), "out": int(w.shape[1]), "activation": "relu"} for w, _ in encoder]}}


def _domain_fields(domain, policy: StudentPolicy) -> dict[str, str]:
    """``domain`` (and ``task_kind``, when not the default) of an export: from ``domain`` (a name or a ``Domain``),
    else the student's checkpoint."""
    if domain is not None and not isinstance(domain, str):
        from kdistill.domain import task_kind_meta

        return {"domain": domain.name, **task_kind_meta(domain)}
    kind = policy.meta.get("task_kind")
    return {"domain": domain or policy.meta.get("domain", ""), **({"task_kind": kind} if kind else {})}


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
    check_can_create(json_path.parent, option)  # created when the export is written
    return weights_path, json_path


def export_policy(policy: StudentPolicy, task: str, context: TaskContext, out: str | Path,
                  source: str = "", domain: str = "") -> dict[str, Any]:
    """Write ``out`` (stem, ``.json`` or ``.safetensors``) for ``task``; returns the export's description."""
    from safetensors.numpy import save as st_save

    layout = policy.layout
    layers, encoder = _checked_layers(policy, task, context)
    norm = policy.normalizer
    tensors: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(layers):
        tensors[f"layer{i}.weight"] = np.ascontiguousarray(w)
        tensors[f"layer{i}.bias"] = np.ascontiguousarray(b)
    for j, (w, b) in enumerate(encoder):
        tensors[f"extero{j}.weight"] = np.ascontiguousarray(w)
        tensors[f"extero{j}.bias"] = np.ascontiguousarray(b)
    tensors["norm.mean"] = np.ascontiguousarray(np.asarray(norm.rms.mean, np.float64).reshape(-1))
    tensors["norm.var"] = np.ascontiguousarray(np.asarray(norm.rms.var, np.float64).reshape(-1))
    blob = st_save(tensors)
    weights_path, json_path = export_paths(out)
    num_params = int(sum(w.size + b.size for w, b in layers + encoder))
    meta = {
        "format": FORMAT,
        "task": task,
        **_domain_fields(domain, policy),
        "student": policy.meta.get("arch", policy.student.name),
        "source": source,
        "input": {"tokens": layout.max_tokens, "features_per_token": layout.student_token_features,
                  "student_features": list(layout.student_features),
                  "flat_size": layout.max_tokens * layout.student_token_features},
        "layers": [{"in": int(w.shape[0]), "out": int(w.shape[1]),
                    "activation": "relu" if i < len(layers) - 1 else None} for i, (w, _) in enumerate(layers)],
        **_extero_meta(policy, encoder),
        "normalizer": {"clip": norm.clip, "epsilon": norm.epsilon},
        "act_mask": np.asarray(context.act_mask, bool).tolist(),
        "num_actions": layout.num_actions,
        "action_std": policy.action_std,
        "num_params": num_params,
        "flops": int(sum(2 * w.size for w, _ in layers + encoder)),
        "weights_file": weights_path.name,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_bytes(weights_path, blob)
    atomic_write_json(json_path, meta)
    return {**meta, "files": [str(weights_path), str(json_path)]}


def _checked_layers(policy: StudentPolicy, task: str, context: TaskContext) -> tuple[list, list]:
    """The task's folded MLP and the exteroception encoder, refused when anything is not finite."""
    layers, encoder = fold_policy(policy, context), extero_layers(policy)
    bad = first_non_finite({f"layer{i}": w for i, (w, _) in enumerate(layers)}
                           | {f"layer{i} bias": b for i, (_, b) in enumerate(layers)}
                           | {f"extero layer{j}": w for j, (w, _) in enumerate(encoder)}
                           | {f"extero layer{j} bias": b for j, (_, b) in enumerate(encoder)})
    if bad is not None:
        raise NonFiniteError(f"the student's generated MLP for {task!r} has NaN or infinity in {bad}; nothing was "
                             f"exported. The student is damaged: distill it again.")
    return layers, encoder


def load_student_run(run: str | Path, domain=None) -> StudentPolicy:
    """The student policy of a run folder (or checkpoint folder), checked against ``domain`` (a name, or a
    ``Domain``, whose kind of task is then checked too)."""
    from kdistill.domain import check_task_kind

    tensors, meta = load_run_checkpoint(run)
    if meta.get("kind") != "student":
        raise CheckpointError(f"{run} holds a {meta.get('kind')!r} checkpoint; export needs a student run from `kdistill distill`.")
    name = domain if domain is None or isinstance(domain, str) else domain.name
    if name is not None and meta.get("domain") != name:
        raise CheckpointError(f"{run} is a {meta.get('domain')!r} student, not {name!r}.")
    if domain is not None and not isinstance(domain, str):
        check_task_kind(meta, domain, str(run))
    with malformed(f"the checkpoint meta.json in {run}", "use another checkpoint or distill the student again."):
        return load_student_policy(tensors, meta)


# ONNX ---------------------------------------------------------------------------------------------------------
ONNX_FORMAT = "kdistill-onnx/1"
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-5  # largest |student - ONNX| accepted by `kdistill export --format onnx`


def onnx_path(out: str | Path) -> Path:
    """``STEM.onnx`` for an output stem (a .onnx/.json/.safetensors suffix is dropped)."""
    path = Path(out)
    stem = path.with_suffix("") if path.suffix in (".onnx", ".json", ".safetensors") else path
    return stem.with_name(stem.name + ".onnx")


def _import_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise KdistillError("--format onnx needs the onnx package: pip install 'kdistill[onnx]' "
                            "(or pip install onnx onnxruntime).") from None
    import onnx

    return onnx


def onnx_model_bytes(layers: list[tuple[np.ndarray, np.ndarray]], mean: np.ndarray, var: np.ndarray, clip: float,
                     epsilon: float, metadata: dict[str, Any] | None = None,
                     extero: list[tuple[np.ndarray, np.ndarray]] = ()) -> bytes:
    """A serialised ONNX model of the exported policy: input ``obs`` float32 ``(N, T*S)`` (the raw flat student
    observation, as ``kdistill.deploy.runtime`` reads it), output ``mu`` float32 ``(N, T*A)``. With an ``extero``
    encoder (ReLU after every layer) a second input ``extero`` float32 ``(N, E)`` runs through it, and its output
    is concatenated after the normalised observation before the first layer.

    The graph is the training-time normaliser, ``clip((obs - mean) / sqrt(var + eps), -clip, clip)``, then the
    dense layers (``MatMul`` + ``Add``, ``Relu`` between them). ``metadata`` goes into the model's metadata_props
    (values JSON-encoded).
    """
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    mean = np.asarray(mean, np.float64).reshape(-1)
    std = np.sqrt(np.asarray(var, np.float64).reshape(-1) + epsilon)
    inits = [numpy_helper.from_array(mean.astype(np.float32), "norm_mean"),
             numpy_helper.from_array(std.astype(np.float32), "norm_std"),
             numpy_helper.from_array(np.array(-clip, np.float32), "clip_low"),
             numpy_helper.from_array(np.array(clip, np.float32), "clip_high")]
    nodes = [helper.make_node("Sub", ["obs", "norm_mean"], ["centred"]),
             helper.make_node("Div", ["centred", "norm_std"], ["scaled"]),
             helper.make_node("Clip", ["scaled", "clip_low", "clip_high"], ["h0" if not extero else "normed"])]
    inputs = []
    if extero:
        for j, (w, b) in enumerate(extero):
            inits += [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"extero{j}.weight"),
                      numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"extero{j}.bias")]
            nodes += [helper.make_node("MatMul", ["extero" if j == 0 else f"e{j}", f"extero{j}.weight"], [f"ez{j + 1}"]),
                      helper.make_node("Add", [f"ez{j + 1}", f"extero{j}.bias"], [f"ea{j + 1}"]),
                      helper.make_node("Relu", [f"ea{j + 1}"], [f"e{j + 1}"])]
        nodes.append(helper.make_node("Concat", ["normed", f"e{len(extero)}"], ["h0"], axis=1))
        inputs.append(helper.make_tensor_value_info("extero", TensorProto.FLOAT, ["batch", int(extero[0][0].shape[0])]))
    last = len(layers) - 1
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"layer{i}.weight"),
                  numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"layer{i}.bias")]
        out = "mu" if i == last else f"a{i + 1}"
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"layer{i}.weight"], [f"z{i + 1}"]))
        nodes.append(helper.make_node("Add", [f"z{i + 1}", f"layer{i}.bias"], [out if i == last else f"a{i + 1}"]))
        if i != last:
            nodes.append(helper.make_node("Relu", [f"a{i + 1}"], [f"h{i + 1}"]))
    joined = int(extero[-1][0].shape[1]) if extero else 0
    inp = helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", int(layers[0][0].shape[0]) - joined])
    outp = helper.make_tensor_value_info("mu", TensorProto.FLOAT, ["batch", int(layers[-1][0].shape[1])])
    graph = helper.make_graph(nodes, "kdistill_policy", [inp, *inputs], [outp], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="kdistill")
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    props = {"format": ONNX_FORMAT, **(metadata or {})}
    helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_session(model: bytes, threads: int = 1):
    """An onnxruntime CPU session on ``model`` bytes, with ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise KdistillError("checking or running an ONNX export needs onnxruntime: pip install 'kdistill[onnx]' "
                            "(or pass --check-samples 0 to skip the check).") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def _is_onnx_export(path: Path) -> bool:
    try:
        onnx = _import_onnx()
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(p.key == "format" and p.value == ONNX_FORMAT for p in model.metadata_props)


def check_onnx_target(out: str | Path, option: str = "--out") -> Path:
    """The ONNX export's path, after checking it may be written (an existing file only if it is a kdistill export)."""
    path = onnx_path(out)
    if path.is_dir():
        raise KdistillError(f"{option} {out}: {path} is a folder; give a file stem such as {path.parent / 'policy'}.")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise KdistillError(f"{option} {out}: {parent} is a file, not a folder; choose another --out.")
            break
    if path.exists() and not _is_onnx_export(path):
        raise KdistillError(f"{option} {out}: {path} already exists and is not a kdistill ONNX export; choose another "
                            f"--out (kdistill overwrites only exports it wrote).")
    check_can_create(path.parent, option)  # created when the export is written
    return path


def export_onnx(policy: StudentPolicy, task: str, context: TaskContext, out: str | Path, source: str = "",
                domain: str = "", check_obs: np.ndarray | None = None) -> dict[str, Any]:
    """Write ``STEM.onnx`` for ``task``; with ``check_obs`` (raw flat student observations ``(N, T*S)``) the model
    is first run with onnxruntime and compared with the student, and nothing is written unless the largest
    difference is within ``ONNX_TOLERANCE``. Returns the export's description."""
    layout = policy.layout
    layers, encoder = _checked_layers(policy, task, context)
    norm = policy.normalizer
    path = onnx_path(out)
    meta = {
        "task": task, **_domain_fields(domain, policy),
        "student": policy.meta.get("arch", policy.student.name), "source": source,
        "input": {"name": "obs", "tokens": layout.max_tokens, "features_per_token": layout.student_token_features,
                  "student_features": list(layout.student_features),
                  "flat_size": layout.max_tokens * layout.student_token_features},
        **({"extero": {"name": "extero", "features": layout.extero_features}} if encoder else {}),
        "output": {"name": "mu", "num_actions": layout.num_actions},
        "act_mask": np.asarray(context.act_mask, bool).tolist(),
        "action_std": policy.action_std,
    }
    blob = onnx_model_bytes(layers, np.asarray(norm.rms.mean), np.asarray(norm.rms.var), norm.clip, norm.epsilon,
                            metadata=meta, extero=encoder)
    info: dict[str, Any] = {"format": ONNX_FORMAT, **meta, "opset": ONNX_OPSET,
                            "layers": [{"in": int(w.shape[0]), "out": int(w.shape[1])} for w, _ in layers],
                            "num_params": int(sum(w.size + b.size for w, b in layers + encoder)),
                            "flops": int(sum(2 * w.size for w, _ in layers + encoder))}
    if check_obs is not None and len(check_obs):
        x = np.ascontiguousarray(check_obs, np.float32)
        feed = {"obs": x}
        T, S = layout.max_tokens, layout.student_token_features
        raw = np.zeros((len(x), T, layout.obs_features), np.float32)
        raw[..., list(layout.student_features)] = x.reshape(len(x), T, S)
        obs = {"obs": raw, "obs_mask": np.broadcast_to(context.mask, (len(x), T))}
        if encoder:
            feed["extero"] = obs["extero"] = random_extero(policy, len(x))
        got = onnx_session(blob).run(["mu"], feed)[0]
        policy.prepare(task, context)
        want = policy.act(obs)
        diff = float(np.max(np.abs(got - want)))
        info["check"] = {"samples": int(len(x)), "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE,
                         "runtime": "onnxruntime"}
        if not diff <= ONNX_TOLERANCE:
            raise KdistillError(f"the ONNX model of {task!r} differs from the student by {diff:.3g} (more than "
                                f"{ONNX_TOLERANCE:g}) on {len(x)} observations; nothing was written.")
    atomic_write_bytes(path, blob)
    info["files"] = [str(path)]
    info["sha256"] = hashlib.sha256(blob).hexdigest()
    return info


def random_student_observations(policy: StudentPolicy, samples: int, seed: int = 0) -> np.ndarray:
    """Raw flat student observations ``(samples, T*S)`` around the normaliser's statistics (for export checks)."""
    layout = policy.layout
    rng = np.random.default_rng(seed)
    std = np.sqrt(np.asarray(policy.normalizer.rms.var) + policy.normalizer.epsilon)
    x = np.asarray(policy.normalizer.rms.mean) + std * rng.standard_normal((samples, *std.shape))
    return x.reshape(samples, layout.max_tokens * layout.student_token_features).astype(np.float32)


def random_extero(policy: StudentPolicy, samples: int, seed: int = 0) -> np.ndarray:
    """Random raw ``extero`` vectors ``(samples, E)`` for export checks: heights of a few metres either way (the
    exteroception is not normalised, so there are no statistics to draw around)."""
    return np.random.default_rng([seed, 1]).uniform(-2.0, 2.0, (samples, policy.layout.extero_features)).astype(np.float32)


def export_parity(policy: StudentPolicy, task: str, context: TaskContext, exported, samples: int, seed: int = 0) -> float:
    """Largest difference between the student and its loaded export (``runtime.load``) on random env observations."""
    layout = policy.layout
    rng = np.random.default_rng(seed)
    std = np.sqrt(np.asarray(policy.normalizer.rms.var) + policy.normalizer.epsilon)
    raw = np.zeros((samples, layout.max_tokens, layout.obs_features), np.float32)
    raw[..., list(layout.student_features)] = (np.asarray(policy.normalizer.rms.mean)
                                                + std * rng.standard_normal((samples, *std.shape)))
    obs = {"obs": raw, "obs_mask": np.broadcast_to(context.mask, (samples, layout.max_tokens))}
    if layout.extero_features:
        obs["extero"] = random_extero(policy, samples, seed)
    policy.prepare(task, context)
    return float(np.max(np.abs(policy.act(obs) - exported.act_obs(obs))))


def export_c(policy: StudentPolicy, task: str, context: TaskContext, out: str | Path, check_samples: int) -> dict[str, Any]:
    """One task's generated MLP as C99 (STEM.c + STEM.h); compiled and compared with the student when a compiler exists.
    A student that reads exteroception gets ``policy_act_extero(obs, extero, action)``, its encoder included."""
    stem = Path(out)
    if stem.suffix in (".c", ".h"):
        stem = stem.with_suffix("")
    for path in (stem.with_suffix(".c"), stem.with_suffix(".h")):
        if path.exists() and "Generated by kdistill" not in path.read_text(errors="replace")[:200]:
            raise KdistillError(f"--out {path} exists and was not written by kdistill; choose another --out.")
    with tempfile.TemporaryDirectory() as tmp:
        export_policy(policy, task, context, Path(tmp) / "policy")
        exported = runtime.load(Path(tmp) / "policy.json")
    info = write_c(exported, stem.parent, prefix="policy", stem=stem.name)
    info["task"] = task
    if check_samples > 0:
        obs = random_student_observations(policy, check_samples)
        if exported.extero:
            ext = random_extero(policy, check_samples)
            info["check"] = check_c(info, obs, exported.act(obs, ext), extero=ext)
        else:
            info["check"] = check_c(info, obs, exported.act(obs))
        if info["check"] is not None and info["check"] > 1e-5:
            raise KdistillError(f"the compiled C differs from the student by {info['check']:.2e}; please report this.")
    return info
