"""Run an exported student with numpy only (no torch): the deployment side of ``kdistill export``.

An export is two files written side by side: ``NAME.safetensors`` (the dense layers ``layer<i>.weight``
(in, out) and ``layer<i>.bias`` in float32, and the normaliser's ``norm.mean`` / ``norm.var`` in float64)
and ``NAME.json`` (task, layer shapes, student features, normaliser clip and epsilon, action mask, checksum).

The policy reads the task's *flat student observation*: the raw per-token observation sliced to the student
features, flattened token-major to ``T*S`` values. It normalises it exactly as training did
(``clip((x - mean) / sqrt(var + eps), -clip, clip)``), then runs the MLP (ReLU between layers) and returns
``T*A`` mean actions (padded slots included; ``act_mask`` marks them).

    policy = kdistill.deploy.runtime.load("policy.json")
    mu = policy.act(flat_obs)                 # (N, T*S) -> (N, T*A), or (T*S,) -> (T*A,)
    mu = policy.act_obs(env_obs)              # from an env observation dict

A student that reads exteroception (a layout with ``extero_features``, e.g. a height map) is exported with a
second input: its encoder ``extero<j>.weight`` / ``extero<j>.bias`` (ReLU after every layer; JSON ``extero``) runs
on the raw ``extero`` vector, and its output follows the normalised flat observation as the first layer's input::

    mu = policy.act(flat_obs, extero)         # (N, T*S), (N, E) -> (N, T*A)

Buffers are allocated once per batch size and reused, so a control loop allocates nothing but the result
(pass ``out=`` to avoid that too). The normaliser's division is folded into the first layer's weights, so a
step is: subtract the mean, clip, then per layer one ``matmul`` into its buffer, bias add and ReLU in place.
A single observation runs on 1-D buffers with the bias folded into the matmul, or, where a C compiler is
available, through the compiled kernel of ``kdistill.deploy.kernel`` (``ExportedPolicy.kernel_path`` says which).
docs/benchmarks.md has the profile behind these choices.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from kdistill.deploy.kernel import KernelPlan, load_extension, load_kernel
from kdistill.errors import DataError

FORMAT = "kdistill-export/1"
_ZERO = np.zeros((), np.float32)  # ReLU's floor for one row: a Python 0.0 costs a conversion per call
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "BOOL": np.bool_}


def read_safetensors(blob: bytes) -> dict[str, np.ndarray]:
    """Decode a safetensors blob into numpy arrays (a small reader, so deployment needs numpy only).

    Every header entry is checked against the blob (dtype, shape, offsets inside the data, sizes that agree).
    """
    if len(blob) < 8:
        raise DataError("the export's weights file is truncated; export it again.")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > len(blob) - 8:
        raise DataError("the export's weights file is truncated (its header runs past the end); export it again.")
    try:
        header = json.loads(blob[8:8 + header_len])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DataError("the export's weights file has a corrupt header; export it again.") from None
    if not isinstance(header, dict):
        raise DataError("the export's weights file has a corrupt header; export it again.")
    base = 8 + header_len
    size = len(blob) - base
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
            raise DataError(f"the export's header entry for {name!r} is corrupt; export it again.")
        if info["dtype"] not in _DTYPES:
            raise DataError(f"the export holds tensor {name!r} of unsupported dtype {info['dtype']}.")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (_int_list(shape) and all(d >= 0 for d in shape) and len(shape) <= 8
                and _int_list(offsets) and len(offsets) == 2):
            raise DataError(f"the export's header entry for {name!r} has a corrupt shape or offsets; export it again.")
        start, end = offsets
        dtype = np.dtype(_DTYPES[info["dtype"]])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not 0 <= start <= end <= size or end - start != count * dtype.itemsize:
            raise DataError(f"the export's tensor {name!r} does not fit its data (shape {shape}, bytes "
                            f"{start}-{end} of {size}); export it again.")
        arrays[name] = np.frombuffer(blob, dtype, count=count, offset=base + start).reshape(shape)
    return arrays


def _int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_export(meta: dict, arrays: dict[str, np.ndarray], json_path: Path, weights_path: Path) -> None:
    """Raise a DataError naming the file unless the export is complete and consistent."""

    def bad(what: str, path: Path = json_path) -> DataError:
        return DataError(f"{path} {what}; the export is damaged, export it again.")

    _check_meta(meta, bad)
    _check_tensors(arrays, len(meta["layers"]), lambda what: bad(what, weights_path), _extero_count(meta))
    _check_shapes(meta, arrays, bad, lambda what: bad(what, weights_path))


def _check_meta(meta: dict, bad) -> None:
    """The JSON's fields: layers, input, normaliser and action mask."""
    layers, inp, norm, act_mask = meta.get("layers"), meta.get("input"), meta.get("normalizer"), meta.get("act_mask")
    if not isinstance(layers, list) or not 1 <= len(layers) <= 256:
        raise bad("has no valid 'layers' list")
    tokens = inp.get("tokens") if isinstance(inp, dict) else None
    features = inp.get("student_features") if isinstance(inp, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0 or not _int_list(features) \
            or not features or any(f < 0 for f in features):
        raise bad("has no valid 'input' (tokens, student_features)")
    if not isinstance(norm, dict) or not _number(norm.get("clip")) or norm["clip"] <= 0 \
            or not _number(norm.get("epsilon")) or norm["epsilon"] < 0:
        raise bad("has no valid 'normalizer' (clip > 0, epsilon >= 0)")
    if not isinstance(act_mask, list) or not act_mask or not all(isinstance(v, bool) for v in act_mask):
        raise bad("has no valid 'act_mask' (a list of true/false)")
    extero = meta.get("extero")
    if extero is not None and not (isinstance(extero, dict) and isinstance(extero.get("features"), int)
                                   and extero["features"] > 0 and isinstance(extero.get("layers"), list)
                                   and 1 <= len(extero["layers"]) <= 256):
        raise bad("has no valid 'extero' (features > 0 and a list of layers)")


def _extero_count(meta: dict) -> int:
    return len(meta["extero"]["layers"]) if meta.get("extero") is not None else 0


def _check_tensors(arrays: dict[str, np.ndarray], n: int, bad, n_extero: int = 0) -> None:
    """Every layer's weight and bias (the exteroception encoder's too) and the normaliser's mean and var: present,
    floating point, finite."""
    names = [f"layer{i}.{kind}" for i in range(n) for kind in ("weight", "bias")] + ["norm.mean", "norm.var"]
    names += [f"extero{j}.{kind}" for j in range(n_extero) for kind in ("weight", "bias")]
    for name in names:
        if name not in arrays:
            raise bad(f"lacks tensor {name!r}")
        arr = arrays[name]
        if arr.dtype.kind != "f":
            raise bad(f"has tensor {name!r} of dtype {arr.dtype}, not floating point")
        if not np.isfinite(arr).all():
            raise bad(f"has NaN or infinity in tensor {name!r}")


def _check_shapes(meta: dict, arrays: dict[str, np.ndarray], bad_json, bad_weights) -> None:
    """Layers chain, the input size matches the JSON, the normaliser fits it, the action mask fits the output."""
    inp, norm, act_mask = meta["input"], meta["normalizer"], meta["act_mask"]
    width = None
    for i in range(len(meta["layers"])):
        w, b = arrays[f"layer{i}.weight"], arrays[f"layer{i}.bias"]
        if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[1] or 0 in w.shape:
            raise bad_weights(f"has layer {i} of weight shape {w.shape} and bias shape {b.shape}, which do not fit")
        if width is not None and w.shape[0] != width:
            raise bad_weights(f"has layer {i} taking {w.shape[0]} inputs after a layer of {width} outputs")
        width = w.shape[1]
    joined = _check_extero_shapes(meta, arrays, bad_json, bad_weights)
    in_size = arrays["layer0.weight"].shape[0] - joined
    want_in = inp["tokens"] * len(inp["student_features"])
    if in_size != want_in or ("flat_size" in inp and inp["flat_size"] != in_size):
        raise bad_json(f"says the input is {inp['tokens']} tokens x {len(inp['student_features'])} features "
                       f"(= {want_in}) but the first layer takes {in_size}")
    for name in ("norm.mean", "norm.var"):
        if arrays[name].shape != (in_size,):
            raise bad_weights(f"has {name} of shape {arrays[name].shape}; the policy's input has {in_size} values")
    if (arrays["norm.var"] < 0).any() or (arrays["norm.var"] + norm["epsilon"] <= 0).any():
        raise bad_weights("has a normaliser variance that is negative or zero with epsilon 0")
    if len(act_mask) != width:
        raise bad_json(f"has an act_mask of {len(act_mask)} slots but the last layer writes {width} actions")


def _check_extero_shapes(meta: dict, arrays: dict[str, np.ndarray], bad_json, bad_weights) -> int:
    """The exteroception encoder chains from ``extero.features`` inputs; returns its output size (0 without one)."""
    n = _extero_count(meta)
    width = meta["extero"]["features"] if n else 0
    for j in range(n):
        w, b = arrays[f"extero{j}.weight"], arrays[f"extero{j}.bias"]
        if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[1] or 0 in w.shape:
            raise bad_weights(f"has extero layer {j} of weight shape {w.shape} and bias shape {b.shape}, which do not fit")
        if w.shape[0] != width:
            raise (bad_json if j == 0 else bad_weights)(f"has extero layer {j} taking {w.shape[0]} inputs, not {width}")
        width = w.shape[1]
    if n and arrays["layer0.weight"].shape[0] <= width:
        raise bad_weights(f"has a first layer of {arrays['layer0.weight'].shape[0]} inputs, too few for the "
                          f"observation and the {width} encoded extero values")
    return width


def export_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, json)`` paths of an export given either file or their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


class ExportedPolicy:
    """A dense MLP for one task, with its observation normaliser; numpy only."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], mean: np.ndarray, var: np.ndarray,
                 clip: float, epsilon: float, meta: dict, extero: list[tuple[np.ndarray, np.ndarray]] = ()):
        # the exteroception encoder [(weight (in, out), bias)], ReLU after every layer; empty without one
        self.extero = [(np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)) for w, b in extero]
        self.extero_size = int(self.extero[0][0].shape[0]) if self.extero else 0
        joined = int(self.extero[-1][0].shape[1]) if self.extero else 0
        self.weights = [np.ascontiguousarray(w, np.float32) for w in weights]
        self.biases = [np.ascontiguousarray(b, np.float32) for b in biases]
        self.mean = np.ascontiguousarray(mean, np.float64)
        # std computed exactly as the training-time normaliser does (float64)
        self.std = np.sqrt(np.asarray(var, np.float64) + epsilon)
        self.clip = float(clip)
        self.meta = meta
        self.task = meta.get("task")
        self.student_features = list(meta["input"]["student_features"])
        self.tokens = int(meta["input"]["tokens"])
        self.act_mask = np.asarray(meta["act_mask"], bool)
        self.input_size = self.weights[0].shape[0] - joined  # the flat observation's size
        self.output_size = self.weights[-1].shape[1]
        # clip((x - mean) / std, -c, c) @ W == clip(x - mean, -c*std, c*std) @ (W / std): the division moves into
        # the first layer's weights. The mean stays a subtraction, not a bias, to avoid cancellation in float32.
        self._mean32 = self.mean.astype(np.float32)
        self._high = (self.clip * self.std).astype(np.float32)
        self._low = -self._high
        first = (self.weights[0][:self.input_size].astype(np.float64) / self.std[:, None]).astype(np.float32)
        self._layers = [first] + self.weights[1:]
        self._joined = self.weights[0][self.input_size:]  # the encoded extero's rows of the first layer
        self._plans: dict[int, tuple] = {}
        self._kernel = None  # the compiled batch-1 path (kdistill.deploy.kernel), prepared on first use
        self._fast = None  # its extension Runner, once prepared
        self.use_kernel = True

    @property
    def _fast(self):
        return self._runner

    @_fast.setter
    def _fast(self, runner) -> None:
        # The Runner stands in for act() on the instance: one float32 observation goes straight to the kernel,
        # anything else on to the general path, with the same arguments. Its fallback is this policy's bound
        # method, so the policy is freed by the cyclic garbage collector, not when its last reference goes.
        self._runner = runner
        if runner is None:
            self.__dict__.pop("act", None)
        else:
            self.act = runner

    def __copy__(self) -> "ExportedPolicy":
        """A shallow copy whose Runner (if any) hands on to the copy, not to the original; the compiled plan and
        its buffers are shared, as every other attribute is."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        if self._runner is not None:
            from kdistill.deploy.kernel import load_extension

            clone._fast = self._kernel.runner(load_extension(), fallback=clone._act)
        return clone

    @property
    def use_kernel(self) -> bool:
        """False: numpy only."""
        return self._use_kernel

    @use_kernel.setter
    def use_kernel(self, value: bool) -> None:
        self._use_kernel = bool(value)
        if not value:
            self._fast = None

    @property
    def kernel_path(self) -> str:
        """How one observation runs now: ``extension``, ``ctypes`` (the compiled kernel, once prepared) or ``numpy``."""
        if self._fast is not None:
            return "extension"
        return "ctypes" if self.use_kernel and self._kernel else "numpy"

    # sizes -------------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return int(sum(w.size + b.size for w, b in [*zip(self.weights, self.biases), *self.extero]))

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs per weight (the reference's convention), per sample."""
        return int(sum(2 * w.size for w in [*self.weights, *(w for w, _ in self.extero)]))

    # running -----------------------------------------------------------------------------------------
    def _plan(self, n: int) -> tuple:
        """Buffers and per-layer steps ``(input, weight, bias or None, output, ReLU floor or None)`` for ``n`` rows."""
        last = len(self._layers) - 1
        if n == 1:
            # One observation: 1-D buffers (numpy's vector paths skip the broadcasting set-up), and each input
            # buffer ends with a constant 1 that meets the bias as an extra weight row, so bias add is free.
            ins = [np.ones(w.shape[0] + 1, np.float32) for w in self._layers]
            outs = [a[:-1] for a in ins[1:]] + [np.empty(self.output_size, np.float32)]
            weights = [np.ascontiguousarray(np.vstack([w, b[None]])) for w, b in zip(self._layers, self.biases)]
            steps = tuple((a, w, None, o, _ZERO if i < last else None)
                          for i, (a, w, o) in enumerate(zip(ins, weights, outs)))
            plan = (ins[0][:-1], steps, outs[-1])
        else:
            # Many rows: biases and ReLU's zeros are stored at full size, because numpy's element-wise loops
            # are about 3x faster on two equal-shaped arrays than against a broadcast row or a scalar.
            z = np.empty((n, self.input_size), np.float32)
            bufs = [np.empty((n, w.shape[1]), np.float32) for w in self._layers]
            biases = [np.ascontiguousarray(np.broadcast_to(b, (n, b.size))) for b in self.biases]
            zeros = {width: np.zeros((n, width), np.float32) for width in {w.shape[1] for w in self._layers}}
            steps = tuple((h, w, b, buf, zeros[w.shape[1]] if i < last else None)
                          for i, (h, w, b, buf) in enumerate(zip([z] + bufs[:-1], self._layers, biases, bufs)))
            plan = (z, steps, bufs[-1])
        self._plans[n] = plan
        return plan

    def act(self, flat_obs: np.ndarray, extero: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Mean actions for raw flat student observations ``(N, T*S)`` (or one ``(T*S,)``), and for a policy that
        reads exteroception its raw ``extero`` ``(N, E)`` (or ``(E,)``)."""
        x = flat_obs if isinstance(flat_obs, np.ndarray) else np.asarray(flat_obs)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise DataError(f"exported policy for {self.task!r} takes flat observations of {self.input_size} values "
                            f"(tokens x student features), got shape {np.shape(flat_obs)}.")
        if self.extero or extero is not None:
            return self._act_extero(x, extero, out)
        batched = x.ndim == 2
        n = x.shape[0] if batched else 1
        if n == 1 and self.use_kernel:
            result = self._act_compiled(x, None, out)
            if result is not None:
                return result
        plan = self._plans.get(n)
        if plan is None:
            plan = self._plan(n)
        z, steps, result = plan
        if n == 1 and batched:
            x = x[0]
        np.subtract(x, self._mean32, out=z)
        np.maximum(z, self._low, out=z)  # two ufuncs: np.clip with array bounds is about 2x slower
        np.minimum(z, self._high, out=z)
        for h, w, b, buf, floor in steps:
            np.matmul(h, w, out=buf)
            if b is not None:
                np.add(buf, b, out=buf)
            if floor is not None:
                np.maximum(buf, floor, out=buf)  # ReLU in place
        if out is not None:
            out[...] = result
            return out
        if n == 1 and batched:
            return result.reshape(1, -1).copy()
        return result.copy()

    _act = act  # the general path, which the Runner hands on to when it stands in for act()

    def _act_extero(self, x: np.ndarray, extero: np.ndarray | None, out: np.ndarray | None) -> np.ndarray:
        """The two-input step: encoder on ``extero``, its output joins layer 0. One observation takes the compiled
        kernel when there is one; otherwise numpy, without preallocated plans."""
        if not self.extero:
            raise DataError(f"exported policy for {self.task!r} reads no exteroception; call act(flat_obs) alone.")
        e = None if extero is None else np.asarray(extero, np.float32)
        if e is None or e.ndim != x.ndim or e.shape[-1] != self.extero_size or (x.ndim == 2 and len(e) != len(x)):
            raise DataError(f"exported policy for {self.task!r} reads exteroception: pass extero of shape "
                            f"{('(N, ' if x.ndim == 2 else '(') + str(self.extero_size)}) with the observations, got "
                            f"{None if extero is None else np.shape(extero)}.")
        if self.use_kernel and (x.ndim == 1 or len(x) == 1):
            result = self._act_compiled(x, e, out)
            if result is not None:
                return result
        for w, b in self.extero:
            e = np.maximum(e @ w + b, 0.0)
        z = np.clip(x.astype(np.float32) - self._mean32, self._low, self._high)
        h = z @ self._layers[0] + e @ self._joined + self.biases[0]
        for w, b in zip(self._layers[1:], self.biases[1:]):
            h = np.maximum(h, 0.0) @ w + b
        h = h.astype(np.float32, copy=False)
        if out is not None:
            out[...] = h.reshape(out.shape)
            return out
        return h

    def _act_compiled(self, x: np.ndarray, e: np.ndarray | None, out: np.ndarray | None) -> np.ndarray | None:
        """One checked observation (``(S,)`` or ``(1, S)``, any dtype) through the kernel by ctypes (the plan
        converts while copying it in); None without a kernel."""
        kernel = self._kernel if self._kernel is not None else self._prepare_kernel()
        if not kernel:
            return None
        result = kernel(x.reshape(-1), None if e is None else e.reshape(-1))
        if out is not None:
            out[...] = result.reshape(out.shape)
            return out
        return result.reshape(1, -1).copy() if x.ndim == 2 else result.copy()

    def _prepare_kernel(self):
        """The compiled path for one observation, or False when no compiler is available (numpy then). With an
        exteroception encoder the kernel's first layer reads both parts, the encoded rows after the scaled ones.
        Where the extension builds, act() calls its Runner first; otherwise the plan is called through ctypes."""
        fn = load_kernel()
        if not fn:
            self._kernel = False
            return self._kernel
        if self.extero:
            first = np.vstack([self._layers[0], self._joined])
            self._kernel = KernelPlan(fn, [first, *self._layers[1:]], self.biases, self._mean32, self._low, self._high,
                                      self.extero)
        else:
            self._kernel = KernelPlan(fn, self._layers, self.biases, self._mean32, self._low, self._high)
        ext = load_extension()
        if ext is not None and self.use_kernel:
            self._fast = self._kernel.runner(ext, fallback=self._act)
        return self._kernel

    def flat_observation(self, obs: dict) -> np.ndarray:
        """The flat student observation ``(N, T*S)`` of raw env observations (``obs['obs']`` (N, T, F))."""
        raw = np.asarray(obs["obs"])
        if raw.ndim == 2:
            raw = raw[None]
        return raw[..., self.student_features].reshape(raw.shape[0], -1)

    def act_obs(self, obs: dict, out: np.ndarray | None = None) -> np.ndarray:
        """Mean actions ``(N, T*A)`` for a batch of env observation dicts (the env drops padded slots)."""
        flat = self.flat_observation(obs)
        if self.extero:
            if "extero" not in obs:
                raise DataError(f"exported policy for {self.task!r} reads exteroception; the observation has no 'extero'.")
            return self.act(flat, np.asarray(obs["extero"], np.float32).reshape(len(flat), -1), out=out)
        return self.act(flat, out=out)

    def valid_actions(self, mu: np.ndarray) -> np.ndarray:
        """Only the non-padded action slots (the task's real actuators, in order)."""
        return np.asarray(mu)[..., ~self.act_mask]


def load(path: str | Path) -> ExportedPolicy:
    """Load an export written by ``kdistill export`` (pass the .json, the .safetensors or their stem).

    A missing, damaged or inconsistent export raises ``DataError`` naming the file; nothing else is raised.
    """
    weights_path, json_path = export_paths(path)
    for p in (json_path, weights_path):
        if not p.is_file():
            what = "is a folder, not a file" if p.is_dir() else "does not exist"
            raise DataError(f"{p} {what}; write the export with `kdistill export`.")
    try:
        text = json_path.read_text()
        blob = weights_path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the export {json_path.name} ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise DataError(f"{json_path} is not valid JSON (not UTF-8 text); export again.") from None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{json_path} is not valid JSON ({exc}); export again.") from None
    if not isinstance(meta, dict):
        raise DataError(f"{json_path} does not hold a JSON object; export again.")
    if meta.get("format") != FORMAT:
        raise DataError(f"{json_path} has format {meta.get('format')!r}, expected {FORMAT!r}.")
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise DataError(f"{weights_path} does not match {json_path.name} (another export, or damaged); export again.")
    arrays = read_safetensors(blob)
    _check_export(meta, arrays, json_path, weights_path)
    n = len(meta["layers"])
    ws = [arrays[f"layer{i}.weight"] for i in range(n)]
    bs = [arrays[f"layer{i}.bias"] for i in range(n)]
    extero = [(arrays[f"extero{j}.weight"], arrays[f"extero{j}.bias"]) for j in range(_extero_count(meta))]
    norm = meta["normalizer"]
    with np.errstate(all="ignore"):
        policy = ExportedPolicy(ws, bs, arrays["norm.mean"], arrays["norm.var"], norm["clip"], norm["epsilon"], meta,
                                extero)
    if not all(np.isfinite(a).all() for a in (policy._layers[0], policy._high, policy._mean32)):
        raise DataError(f"{weights_path}: the normaliser and the first layer overflow float32 together; export again.")
    return policy
