"""One task's generated policy as self-contained C99: ``policy_act(const float *obs, float *action)``, or for a
policy that reads exteroception ``policy_act_extero(const float *obs, const float *extero, float *action)``.

The source holds the weights as ``static const float`` arrays and needs nothing beyond the C library. It
computes what ``kdistill.deploy.runtime`` computes, in the same order: the normaliser and clipping folded into
the first layer exactly as the runtime folds them (subtract the mean, clip to +-clip*std, then the first
layer's weights already divided by std), then dense layers with ReLU between them. Layers are stored
(in, out) row-major; each block of 32 outputs accumulates over all inputs in registers
(``acc[j] += w[i][o0 + j] * h[i]``), a loop compilers vectorise without reassociating sums, so every
output is summed in input order, as the reference does. Inputs that are exactly zero (ReLU's zeros, padded
slots) are skipped: their terms add nothing, so the sums are unchanged. A policy with an exteroception encoder
runs it first on the raw ``extero`` vector (ReLU after every layer, no normaliser, as the runtime does); its output
is written right behind the normalised observation, and the first layer reads both.

The same kernel, compiled once into a shared library, is ``kdistill.deploy.runtime``'s fast path
(``kdistill.deploy.kernel``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from kdistill.errors import KdistillError
from kdistill.io import atomic_write_text

_LAYER = r"""
/* y = MLP(clip(x - mean, low, high)); ReLU between layers. Weights (in, out) row-major.
 * Outputs are computed in blocks of KD_BLOCK held in registers across the whole input loop, so each
 * weight is read once and no partial sum goes back to memory. */
#define KD_BLOCK 32
static void kd_layer(int n_in, int n_out, const float *w, const float *b, const float *h, float *out, int relu) {
    int o0 = 0;
    for (; o0 + KD_BLOCK <= n_out; o0 += KD_BLOCK) {
        float acc[KD_BLOCK];
        for (int j = 0; j < KD_BLOCK; ++j) acc[j] = b[o0 + j];
        for (int i = 0; i < n_in; ++i) {
            const float hi = h[i];
            if (hi == 0.0f) continue;  /* a ReLU zero (or a padded input) adds nothing: skip its weight row */
            const float *row = w + (long)i * n_out + o0;
            for (int j = 0; j < KD_BLOCK; ++j) acc[j] += row[j] * hi;
        }
        for (int j = 0; j < KD_BLOCK; ++j) out[o0 + j] = (relu && acc[j] < 0.0f) ? 0.0f : acc[j];
    }
    for (int o = o0; o < n_out; ++o) {
        float acc = b[o];
        for (int i = 0; i < n_in; ++i) if (h[i] != 0.0f) acc += w[(long)i * n_out + o] * h[i];
        out[o] = (relu && acc < 0.0f) ? 0.0f : acc;
    }
}

"""

def mlp_driver(name: str, layer: str, storage: str = "static ") -> str:
    """C source of ``name(...)``: clip the input to [low, high] after subtracting the mean, then run ``layer``
    per dense layer (ReLU between layers), ping-ponging between two buffers."""
    return f"""
{storage}void {name}(int n_layers, const int *sizes, const float *const *w, const float *const *b,
        const float *mean, const float *low, const float *high,
        const float *x, float *y, float *buf_a, float *buf_b) {{
    float *h = buf_a, *next = buf_b;
    for (int i = 0; i < sizes[0]; ++i) {{
        float v = x[i] - mean[i];
        v = v < low[i] ? low[i] : v;
        h[i] = v > high[i] ? high[i] : v;
    }}
    for (int l = 0; l < n_layers; ++l) {{
        const int last = l == n_layers - 1;
        float *out = last ? y : next;
        {layer}(sizes[l], sizes[l + 1], w[l], b[l], h, out, !last);
        if (!last) {{ float *t = h; h = out; next = t; }}
    }}
}}
"""


KERNEL = _LAYER + mlp_driver("kd_mlp", "kd_layer")

# Two inputs: the encoder's intermediates ping-pong in buf_b and buf_c (buf_a's head still waits for the normalised
# observation), and its last layer writes straight behind that head, where the first layer reads it.
_EXTERO_DRIVER = r"""
static void kd_mlp_extero(int n_ext, const int *ext_sizes, const float *const *ext_w, const float *const *ext_b,
        const float *extero, int n_layers, const int *sizes, const float *const *w, const float *const *b,
        const float *mean, const float *low, const float *high,
        const float *x, float *y, float *buf_a, float *buf_b, float *buf_c) {
    const int n_obs = sizes[0] - ext_sizes[n_ext];
    const float *e = extero;
    float *spare = buf_b, *other = buf_c;
    for (int l = 0; l < n_ext; ++l) {
        float *out = l == n_ext - 1 ? buf_a + n_obs : spare;
        kd_layer(ext_sizes[l], ext_sizes[l + 1], ext_w[l], ext_b[l], e, out, 1);
        e = out; spare = other; other = out;
    }
    float *h = buf_a, *next = buf_b;
    for (int i = 0; i < n_obs; ++i) {
        float v = x[i] - mean[i];
        v = v < low[i] ? low[i] : v;
        h[i] = v > high[i] ? high[i] : v;
    }
    for (int l = 0; l < n_layers; ++l) {
        const int last = l == n_layers - 1;
        float *out = last ? y : next;
        kd_layer(sizes[l], sizes[l + 1], w[l], b[l], h, out, !last);
        if (!last) { float *t = h; h = out; next = t; }
    }
}
"""
EXTERO_KERNEL = _LAYER + _EXTERO_DRIVER


def _floats(values: np.ndarray, per_line: int = 8) -> str:
    flat = np.asarray(values, np.float32).ravel()
    items = [f"{float(v):.9g}f" if np.isfinite(v) else "0.0f" for v in flat]
    items = [s if ("." in s or "e" in s or "inf" in s) else s.replace("f", ".0f") for s in items]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "    " + ",\n    ".join(lines)


def c_identifier(name: str) -> str:
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return ident if ident and not ident[0].isdigit() else f"p_{ident}"


def folded_layers(policy) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """``(weights, biases, mean, low, high)`` as float32, the normaliser folded as the runtime folds it; with an
    exteroception encoder the first layer's rows for its output follow the observation's."""
    layers = list(policy._layers)
    if policy.extero:
        layers[0] = np.vstack([layers[0], policy._joined])
    return ([np.ascontiguousarray(w, np.float32) for w in layers],
            [np.ascontiguousarray(b, np.float32) for b in policy.biases],
            np.ascontiguousarray(policy._mean32), np.ascontiguousarray(policy._low), np.ascontiguousarray(policy._high))


def act_function(policy, prefix: str = "policy") -> str:
    """The C function's name: ``<prefix>_act``, or ``<prefix>_act_extero`` for a policy with a second input."""
    return f"{c_identifier(prefix)}_act_extero" if policy.extero else f"{c_identifier(prefix)}_act"


def c_source(policy, prefix: str = "policy") -> tuple[str, str]:
    """``(header, source)`` of C99 code for an exported policy (``kdistill.deploy.runtime.ExportedPolicy``)."""
    if policy.extero:
        return _c_source_extero(policy, c_identifier(prefix))
    prefix = c_identifier(prefix)
    weights, biases, mean, low, high = folded_layers(policy)
    for arr in [*weights, *biases, mean, low, high]:
        if not np.isfinite(arr).all():
            raise KdistillError("the policy holds NaN or infinite weights; export a trained, finite policy.")
    sizes = [weights[0].shape[0]] + [w.shape[1] for w in weights]
    guard = f"{prefix.upper()}_H"
    header = (f"/* Generated by kdistill: the policy of task {policy.task!r}. */\n"
              f"#ifndef {guard}\n#define {guard}\n\n"
              f"#define {prefix.upper()}_OBS_SIZE {sizes[0]}   /* tokens x student features, raw (not normalised) */\n"
              f"#define {prefix.upper()}_ACTION_SIZE {sizes[-1]}\n\n"
              f"/* Mean actions for one raw flat student observation. Reentrant; no allocation. */\n"
              f"void {prefix}_act(const float *obs, float *action);\n\n#endif\n")
    parts = [f"/* Generated by kdistill: the policy of task {policy.task!r}.\n"
             f" * Layers {' -> '.join(map(str, sizes))}; the observation normaliser and clipping are folded in. */\n",
             f'#include "{prefix}.h"\n', KERNEL]
    for i, (w, b) in enumerate(zip(weights, biases)):
        parts.append(f"static const float {prefix}_w{i}[{w.size}] = {{\n{_floats(w)}\n}};\n")
        parts.append(f"static const float {prefix}_b{i}[{b.size}] = {{\n{_floats(b)}\n}};\n")
    for name, arr in (("mean", mean), ("low", low), ("high", high)):
        parts.append(f"static const float {prefix}_{name}[{arr.size}] = {{\n{_floats(arr)}\n}};\n")
    n = len(weights)
    widest = max(sizes)
    parts.append(
        f"static const int {prefix}_sizes[{n + 1}] = {{{', '.join(map(str, sizes))}}};\n"
        f"static const float *const {prefix}_ws[{n}] = {{{', '.join(f'{prefix}_w{i}' for i in range(n))}}};\n"
        f"static const float *const {prefix}_bs[{n}] = {{{', '.join(f'{prefix}_b{i}' for i in range(n))}}};\n\n"
        f"void {prefix}_act(const float *obs, float *action) {{\n"
        f"    float buf_a[{widest}], buf_b[{widest}];\n"
        f"    kd_mlp({n}, {prefix}_sizes, {prefix}_ws, {prefix}_bs, {prefix}_mean, {prefix}_low, {prefix}_high,\n"
        f"           obs, action, buf_a, buf_b);\n}}\n")
    return header, "\n".join(parts)


def _c_source_extero(policy, prefix: str) -> tuple[str, str]:
    """``(header, source)`` of a policy with an exteroception encoder: ``<prefix>_act_extero(obs, extero, action)``."""
    weights, biases, mean, low, high = folded_layers(policy)
    encoder = [(np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)) for w, b in policy.extero]
    for arr in [*weights, *biases, mean, low, high, *(a for pair in encoder for a in pair)]:
        if not np.isfinite(arr).all():
            raise KdistillError("the policy holds NaN or infinite weights; export a trained, finite policy.")
    sizes = [weights[0].shape[0]] + [w.shape[1] for w in weights]
    ext_sizes = [encoder[0][0].shape[0]] + [w.shape[1] for w, _ in encoder]
    n_obs = sizes[0] - ext_sizes[-1]
    up = prefix.upper()
    header = (f"/* Generated by kdistill: the policy of task {policy.task!r}. */\n"
              f"#ifndef {up}_H\n#define {up}_H\n\n"
              f"#define {up}_OBS_SIZE {n_obs}   /* tokens x student features, raw (not normalised) */\n"
              f"#define {up}_EXTERO_SIZE {ext_sizes[0]}   /* the raw exteroception (e.g. a height map), not "
              f"normalised */\n"
              f"#define {up}_ACTION_SIZE {sizes[-1]}\n\n"
              f"/* Mean actions for one raw flat student observation and its raw exteroception. Reentrant; no "
              f"allocation. */\n"
              f"void {prefix}_act_extero(const float *obs, const float *extero, float *action);\n\n#endif\n")
    parts = [f"/* Generated by kdistill: the policy of task {policy.task!r}.\n"
             f" * Encoder {' -> '.join(map(str, ext_sizes))} (ReLU after every layer) on the raw exteroception; its "
             f"output follows the\n * normalised observation ({n_obs} values) as the input of layers "
             f"{' -> '.join(map(str, sizes))}; the observation normaliser and clipping are folded in. */\n",
             f'#include "{prefix}.h"\n', EXTERO_KERNEL]
    for j, (w, b) in enumerate(encoder):
        parts.append(f"static const float {prefix}_ew{j}[{w.size}] = {{\n{_floats(w)}\n}};\n")
        parts.append(f"static const float {prefix}_eb{j}[{b.size}] = {{\n{_floats(b)}\n}};\n")
    for i, (w, b) in enumerate(zip(weights, biases)):
        parts.append(f"static const float {prefix}_w{i}[{w.size}] = {{\n{_floats(w)}\n}};\n")
        parts.append(f"static const float {prefix}_b{i}[{b.size}] = {{\n{_floats(b)}\n}};\n")
    for name, arr in (("mean", mean), ("low", low), ("high", high)):
        parts.append(f"static const float {prefix}_{name}[{arr.size}] = {{\n{_floats(arr)}\n}};\n")
    n, m = len(weights), len(encoder)
    widest = max(sizes + ext_sizes[1:])
    parts.append(
        f"static const int {prefix}_ext_sizes[{m + 1}] = {{{', '.join(map(str, ext_sizes))}}};\n"
        f"static const float *const {prefix}_ews[{m}] = {{{', '.join(f'{prefix}_ew{j}' for j in range(m))}}};\n"
        f"static const float *const {prefix}_ebs[{m}] = {{{', '.join(f'{prefix}_eb{j}' for j in range(m))}}};\n"
        f"static const int {prefix}_sizes[{n + 1}] = {{{', '.join(map(str, sizes))}}};\n"
        f"static const float *const {prefix}_ws[{n}] = {{{', '.join(f'{prefix}_w{i}' for i in range(n))}}};\n"
        f"static const float *const {prefix}_bs[{n}] = {{{', '.join(f'{prefix}_b{i}' for i in range(n))}}};\n\n"
        f"void {prefix}_act_extero(const float *obs, const float *extero, float *action) {{\n"
        f"    float buf_a[{widest}], buf_b[{widest}], buf_c[{widest}];\n"
        f"    kd_mlp_extero({m}, {prefix}_ext_sizes, {prefix}_ews, {prefix}_ebs, extero,\n"
        f"                  {n}, {prefix}_sizes, {prefix}_ws, {prefix}_bs, {prefix}_mean, {prefix}_low, {prefix}_high,\n"
        f"                  obs, action, buf_a, buf_b, buf_c);\n}}\n")
    return header, "\n".join(parts)


def write_c(policy, out: str | Path, prefix: str = "policy", stem: str | None = None) -> dict:
    """Write ``<stem>.h`` and ``<stem>.c`` (``stem`` defaults to ``prefix``) into the folder ``out`` atomically;
    the function is ``<prefix>_act``, or ``<prefix>_act_extero`` for a policy with an exteroception encoder. Returns
    the paths and sizes."""

    out = Path(out)
    prefix = c_identifier(prefix)
    stem = stem or prefix
    header, source = c_source(policy, prefix)
    source = source.replace(f'#include "{prefix}.h"', f'#include "{stem}.h"')
    atomic_write_text(out / f"{stem}.h", header)
    atomic_write_text(out / f"{stem}.c", source)
    return {"header": str(out / f"{stem}.h"), "source": str(out / f"{stem}.c"), "function": act_function(policy, prefix),
            "obs_size": int(policy.input_size), **({"extero_size": int(policy.extero_size)} if policy.extero else {}),
            "action_size": int(policy.output_size), "num_params": int(policy.num_params), "flops": int(policy.flops)}


def check_c(info: dict, observations: np.ndarray, expected: np.ndarray, extero: np.ndarray | None = None) -> float | None:
    """Compile the written source with the system compiler, run it on ``observations`` (raw flat student
    observations, with their raw ``extero`` rows for a two-input policy), and return the largest difference from
    ``expected``; None when no compiler is found."""
    import ctypes
    import shutil
    import subprocess
    import tempfile

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "policy.so"
        subprocess.run([compiler, "-std=c99", "-O2", "-fPIC", "-shared", info["source"], "-o", str(lib)], check=True,
                       capture_output=True, timeout=300)
        act = getattr(ctypes.CDLL(str(lib)), info["function"])
        act.restype = None
        obs = np.ascontiguousarray(observations, np.float32)
        got = np.empty((len(obs), info["action_size"]), np.float32)
        if extero is None:
            for row, out in zip(obs, got):
                act(ctypes.c_void_p(row.ctypes.data), ctypes.c_void_p(out.ctypes.data))
        else:
            ext = np.ascontiguousarray(extero, np.float32)
            for row, e, out in zip(obs, ext, got):
                act(ctypes.c_void_p(row.ctypes.data), ctypes.c_void_p(e.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    return float(np.abs(got - expected).max())
