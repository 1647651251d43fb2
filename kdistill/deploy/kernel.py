"""A C kernel for one observation, compiled once into a shared library and called through ctypes.

``kdistill.deploy.runtime`` uses it for single observations, where numpy's per-call overhead, not arithmetic, is the
cost. The library is built with the system C compiler on first use and cached (``$KDISTILL_CACHE`` or
``~/.cache/kdistill``, keyed by the source and flags, written atomically); without a compiler, or with
``KDISTILL_NO_KERNEL=1``, ``load_kernel()`` returns None and the runtime stays on numpy. Importing this
module imports neither torch nor the compiler.

A policy with an encoder on a second input (exteroception) runs it first, with the same layer code, straight into
the first layer's input behind the normalised observation, then the dense chain.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=gnu99"]
# The exported C is plain C99 for any compiler; this build may use GCC/Clang vector types. Three things make
# one observation cheap:
# - ReLU makes many hidden activations exactly 0 (and padded inputs are 0): their weight rows add nothing, so
#   each layer first lists its non-zero inputs and reads only those rows (the sums of the rest are unchanged,
#   term for term, in input order);
# - blocks of 8 vectors of outputs live in registers across the whole input loop (16-wide vectors where the
#   CPU has them, else 8-wide; eight independent accumulators keep both FMA ports busy), then blocks of 4
#   vectors, then of one, then single outputs;
# - everything a call needs sits in one plan struct, so the call from Python passes a single pointer.
_FAST = r"""
#if defined(__AVX512F__)
#define KD_W 16
#else
#define KD_W 8
#endif
typedef float kd_v __attribute__((vector_size(4 * KD_W)));
typedef float kd_vu __attribute__((vector_size(4 * KD_W), aligned(4)));
typedef int kd_vi __attribute__((vector_size(4 * KD_W)));
#define KD_LD(p) (*(const kd_vu *)(p))
#define KD_ST(p, a) (*(kd_vu *)(p) = (a))
#define KD_RELU(a) ((a) = (kd_v)((kd_vi)((a) > zero) & (kd_vi)(a)))

static void kd_layer_fast(int n_in, int n_out, const float *w, const float *b, const float *h, float *out, int relu,
                          int *nz) {
    const kd_v zero = {0};
    int m = 0;
    for (int i = 0; i < n_in; ++i) if (h[i] != 0.0f) nz[m++] = i;
    int o0 = 0;
    for (; o0 + 8 * KD_W <= n_out; o0 += 8 * KD_W) {
        kd_v a[8];
        for (int j = 0; j < 8; ++j) a[j] = KD_LD(b + o0 + j * KD_W);
        for (int k = 0; k < m; ++k) {
            const int i = nz[k];
            const float *row = w + (long)i * n_out + o0;
            const kd_v hv = zero + h[i];
            for (int j = 0; j < 8; ++j) a[j] += KD_LD(row + j * KD_W) * hv;
        }
        for (int j = 0; j < 8; ++j) { if (relu) KD_RELU(a[j]); KD_ST(out + o0 + j * KD_W, a[j]); }
    }
    for (; o0 + 4 * KD_W <= n_out; o0 += 4 * KD_W) {
        kd_v a0 = KD_LD(b + o0), a1 = KD_LD(b + o0 + KD_W), a2 = KD_LD(b + o0 + 2 * KD_W), a3 = KD_LD(b + o0 + 3 * KD_W);
        for (int k = 0; k < m; ++k) {
            const int i = nz[k];
            const float *row = w + (long)i * n_out + o0;
            const kd_v hv = zero + h[i];
            a0 += KD_LD(row) * hv; a1 += KD_LD(row + KD_W) * hv;
            a2 += KD_LD(row + 2 * KD_W) * hv; a3 += KD_LD(row + 3 * KD_W) * hv;
        }
        if (relu) { KD_RELU(a0); KD_RELU(a1); KD_RELU(a2); KD_RELU(a3); }
        KD_ST(out + o0, a0); KD_ST(out + o0 + KD_W, a1); KD_ST(out + o0 + 2 * KD_W, a2); KD_ST(out + o0 + 3 * KD_W, a3);
    }
    for (; o0 + KD_W <= n_out; o0 += KD_W) {
        kd_v a = KD_LD(b + o0);
        for (int k = 0; k < m; ++k) a += KD_LD(w + (long)nz[k] * n_out + o0) * (zero + h[nz[k]]);
        if (relu) KD_RELU(a);
        KD_ST(out + o0, a);
    }
    for (int o = o0; o < n_out; ++o) {
        float acc = b[o];
        for (int k = 0; k < m; ++k) acc += w[(long)nz[k] * n_out + o] * h[nz[k]];
        out[o] = (relu && acc < 0.0f) ? 0.0f : acc;
    }
}

typedef struct {
    int n_layers;
    const int *sizes;
    const float *const *w;
    const float *const *b;
    const float *mean, *low, *high;
    const float *x;
    float *y, *buf_a, *buf_b;
    int *nz;
    /* an optional encoder branch (n_ext 0: none) on a second raw input, ReLU after every layer; its output
       follows the normalised x as the first layer's input */
    int n_ext;
    const int *ext_sizes;
    const float *const *ext_w;
    const float *const *ext_b;
    const float *ext_x;
    float *ext_buf;
} kd_plan;

void kd_run(const kd_plan *p) {
    float *h = p->buf_a, *next = p->buf_b;
    const int n_obs = p->n_ext ? p->sizes[0] - p->ext_sizes[p->n_ext] : p->sizes[0];
    if (p->n_ext) {
        /* buf_a's head is not written yet, so the encoder's intermediates ping-pong in buf_b and ext_buf and its
           last layer writes straight behind where the normalised observation goes */
        const float *e = p->ext_x;
        float *spare = p->buf_b, *other = p->ext_buf;
        for (int l = 0; l < p->n_ext; ++l) {
            float *out = l == p->n_ext - 1 ? h + n_obs : spare;
            kd_layer_fast(p->ext_sizes[l], p->ext_sizes[l + 1], p->ext_w[l], p->ext_b[l], e, out, 1, p->nz);
            e = out; spare = other; other = out;
        }
    }
    for (int i = 0; i < n_obs; ++i) {
        float v = p->x[i] - p->mean[i];
        v = v < p->low[i] ? p->low[i] : v;
        h[i] = v > p->high[i] ? p->high[i] : v;
    }
    for (int l = 0; l < p->n_layers; ++l) {
        const int last = l == p->n_layers - 1;
        float *out = last ? p->y : next;
        kd_layer_fast(p->sizes[l], p->sizes[l + 1], p->w[l], p->b[l], h, out, !last, p->nz);
        if (!last) { float *t = h; h = out; next = t; }
    }
}
"""
_loaded: dict[str, object] = {}


class _Plan(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_int), ("sizes", ctypes.c_void_p), ("w", ctypes.c_void_p), ("b", ctypes.c_void_p),
                ("mean", ctypes.c_void_p), ("low", ctypes.c_void_p), ("high", ctypes.c_void_p), ("x", ctypes.c_void_p),
                ("y", ctypes.c_void_p), ("buf_a", ctypes.c_void_p), ("buf_b", ctypes.c_void_p), ("nz", ctypes.c_void_p),
                ("n_ext", ctypes.c_int), ("ext_sizes", ctypes.c_void_p), ("ext_w", ctypes.c_void_p),
                ("ext_b", ctypes.c_void_p), ("ext_x", ctypes.c_void_p), ("ext_buf", ctypes.c_void_p)]


def _cache_dir() -> Path:
    return Path(os.environ.get("KDISTILL_CACHE") or Path.home() / ".cache" / "kdistill") / "kernels"


def load_kernel():
    """The compiled ``kd_act`` function, or None when it cannot be had here (no compiler, disabled)."""
    if os.environ.get("KDISTILL_NO_KERNEL") == "1":
        return None
    if "fn" in _loaded:
        return _loaded["fn"]
    source = _FAST
    compiler = shutil.which(os.environ.get("CC", "cc"))
    fn = None
    if compiler is not None:
        key = hashlib.sha256((source + " ".join(FLAGS)).encode()).hexdigest()[:16]
        lib = _cache_dir() / f"kd_mlp-{key}.so"
        try:
            if not lib.exists():
                lib.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory() as tmp:
                    src = Path(tmp) / "kd_mlp.c"
                    src.write_text(source)
                    built = Path(tmp) / "kd_mlp.so"
                    subprocess.run([compiler, *FLAGS, str(src), "-o", str(built)], check=True, capture_output=True,
                                   timeout=60)
                    fd, partial = tempfile.mkstemp(prefix=".kd_mlp-", suffix=".so", dir=lib.parent)
                    os.close(fd)
                    shutil.copyfile(built, partial)
                    os.replace(partial, lib)
            fn = ctypes.CDLL(str(lib)).kd_run
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = None
        except (OSError, subprocess.SubprocessError):
            fn = None
    _loaded["fn"] = fn
    return fn


class KernelPlan:
    """Buffers and a ``kd_plan`` struct prepared once for one policy: a call copies the observation into the
    plan's input buffer and passes the struct's address, nothing else.

    ``extero`` (``[(weight (in, out), bias)]``, ReLU after every layer) is an encoder on a second raw input whose
    output follows the normalised observation in the first layer's input (``layers[0]`` then has rows for both)."""

    def __init__(self, fn, layers: list[np.ndarray], biases: list[np.ndarray], mean: np.ndarray, low: np.ndarray,
                 high: np.ndarray, extero: list[tuple[np.ndarray, np.ndarray]] = ()):
        self.fn = fn
        self._keep = [np.ascontiguousarray(a, np.float32) for a in (*layers, *biases, mean, low, high)]
        n = len(layers)
        ws, bs = self._keep[:n], self._keep[n:2 * n]
        mean, low, high = self._keep[2 * n:]
        sizes = np.array([ws[0].shape[0]] + [w.shape[1] for w in ws], np.int32)
        ext_ws = [np.ascontiguousarray(w, np.float32) for w, _ in extero]
        ext_bs = [np.ascontiguousarray(b, np.float32) for _, b in extero]
        ext_sizes = np.array([ext_ws[0].shape[0]] + [w.shape[1] for w in ext_ws] if ext_ws else [0], np.int32)
        widest = int(max(sizes.max(), ext_sizes.max()))
        self._arrays = {"sizes": sizes, "buf_a": np.empty(widest, np.float32), "buf_b": np.empty(widest, np.float32),
                        "nz": np.empty(widest, np.int32), "ext_sizes": ext_sizes,
                        "ext_buf": np.empty(widest, np.float32), "ext_ws": ext_ws, "ext_bs": ext_bs}
        self.x = np.empty(int(sizes[0]) - (int(ext_sizes[-1]) if ext_ws else 0), np.float32)
        self.extero = np.empty(int(ext_sizes[0]), np.float32)
        self.out = np.empty(int(sizes[-1]), np.float32)
        ptr = ctypes.c_void_p
        self._w = (ptr * n)(*[w.ctypes.data for w in ws])
        self._b = (ptr * n)(*[b.ctypes.data for b in bs])
        self._ext_w = (ptr * max(len(ext_ws), 1))(*[w.ctypes.data for w in ext_ws])
        self._ext_b = (ptr * max(len(ext_bs), 1))(*[b.ctypes.data for b in ext_bs])
        a = self._arrays
        self._plan = _Plan(n, a["sizes"].ctypes.data, ctypes.addressof(self._w), ctypes.addressof(self._b),
                           mean.ctypes.data, low.ctypes.data, high.ctypes.data, self.x.ctypes.data,
                           self.out.ctypes.data, a["buf_a"].ctypes.data, a["buf_b"].ctypes.data, a["nz"].ctypes.data,
                           len(ext_ws), a["ext_sizes"].ctypes.data, ctypes.addressof(self._ext_w),
                           ctypes.addressof(self._ext_b), self.extero.ctypes.data, a["ext_buf"].ctypes.data)
        self._address = ctypes.addressof(self._plan)

    def __call__(self, x: np.ndarray, extero: np.ndarray | None = None) -> np.ndarray:
        """Mean actions of one raw flat observation (and, with an encoder, one raw ``extero``) into ``self.out``."""
        self.x[...] = x
        if extero is not None:
            self.extero[...] = extero
        self.fn(self._address)
        return self.out
