"""A C kernel for one observation, compiled once into a shared library and called through ctypes.

``kdistill.deploy.runtime`` uses it for single observations, where numpy's per-call overhead, not arithmetic, is the
cost. The library is built with the system C compiler on first use and cached (``$KDISTILL_CACHE`` or
``~/.cache/kdistill``, keyed by the source and flags, written atomically); without a compiler, or with
``KDISTILL_NO_KERNEL=1``, ``load_kernel()`` returns None and the runtime stays on numpy. Importing this
module imports neither torch nor the compiler.
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
# The exported C is plain C99 for any compiler; this build may use GCC/Clang vector types: blocks of 32
# outputs live in four 8-wide registers across the whole input loop (then blocks of 8, then single outputs),
# summing each output in input order like the plain kernel.
_FAST = r"""
typedef float kd_v8 __attribute__((vector_size(32)));
typedef float kd_v8u __attribute__((vector_size(32), aligned(4)));
typedef int kd_i8 __attribute__((vector_size(32)));
#define KD_LD(p) (*(const kd_v8u *)(p))
#define KD_RELU(a) ((a) = (kd_v8)((kd_i8)((a) > zero) & (kd_i8)(a)))
static void kd_layer_fast(int n_in, int n_out, const float *w, const float *b, const float *h, float *out, int relu) {
    const kd_v8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
    int o0 = 0;
    for (; o0 + 32 <= n_out; o0 += 32) {
        kd_v8 a0 = KD_LD(b + o0), a1 = KD_LD(b + o0 + 8), a2 = KD_LD(b + o0 + 16), a3 = KD_LD(b + o0 + 24);
        for (int i = 0; i < n_in; ++i) {
            const float *row = w + (long)i * n_out + o0;
            const kd_v8 hv = zero + h[i];
            a0 += KD_LD(row) * hv; a1 += KD_LD(row + 8) * hv; a2 += KD_LD(row + 16) * hv; a3 += KD_LD(row + 24) * hv;
        }
        if (relu) { KD_RELU(a0); KD_RELU(a1); KD_RELU(a2); KD_RELU(a3); }
        *(kd_v8u *)(out + o0) = a0; *(kd_v8u *)(out + o0 + 8) = a1;
        *(kd_v8u *)(out + o0 + 16) = a2; *(kd_v8u *)(out + o0 + 24) = a3;
    }
    for (; o0 + 8 <= n_out; o0 += 8) {
        kd_v8 a = KD_LD(b + o0);
        for (int i = 0; i < n_in; ++i) a += KD_LD(w + (long)i * n_out + o0) * (zero + h[i]);
        if (relu) KD_RELU(a);
        *(kd_v8u *)(out + o0) = a;
    }
    for (int o = o0; o < n_out; ++o) {
        float acc = b[o];
        for (int i = 0; i < n_in; ++i) acc += w[(long)i * n_out + o] * h[i];
        out[o] = (relu && acc < 0.0f) ? 0.0f : acc;
    }
}

"""
_loaded: dict[str, object] = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("KDISTILL_CACHE") or Path.home() / ".cache" / "kdistill") / "kernels"


def load_kernel():
    """The compiled ``kd_act`` function, or None when it cannot be had here (no compiler, disabled)."""
    if os.environ.get("KDISTILL_NO_KERNEL") == "1":
        return None
    if "fn" in _loaded:
        return _loaded["fn"]
    from kdistill.deploy.c_source import mlp_driver

    source = _FAST + mlp_driver("kd_act", "kd_layer_fast", storage="")
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
            fn = ctypes.CDLL(str(lib)).kd_act
            fn.restype = None
        except (OSError, subprocess.SubprocessError):
            fn = None
    _loaded["fn"] = fn
    return fn


class KernelPlan:
    """Pointers prepared once for one policy, so a call passes only the observation and the result."""

    def __init__(self, fn, layers: list[np.ndarray], biases: list[np.ndarray], mean: np.ndarray, low: np.ndarray,
                 high: np.ndarray):
        self.fn = fn
        self._keep = [np.ascontiguousarray(a, np.float32) for a in (*layers, *biases, mean, low, high)]
        n = len(layers)
        ws, bs = self._keep[:n], self._keep[n:2 * n]
        mean, low, high = self._keep[2 * n:]
        sizes = np.array([ws[0].shape[0]] + [w.shape[1] for w in ws], np.int32)
        self._sizes = sizes
        ptr = ctypes.c_void_p
        self._w = (ptr * n)(*[w.ctypes.data for w in ws])
        self._b = (ptr * n)(*[b.ctypes.data for b in bs])
        widest = int(sizes.max())
        self._buf_a = np.empty(widest, np.float32)
        self._buf_b = np.empty(widest, np.float32)
        self.out = np.empty(int(sizes[-1]), np.float32)
        self._fixed = (ctypes.c_int(n), ptr(sizes.ctypes.data), self._w, self._b, ptr(mean.ctypes.data),
                       ptr(low.ctypes.data), ptr(high.ctypes.data))
        self._tail = (ptr(self.out.ctypes.data), ptr(self._buf_a.ctypes.data), ptr(self._buf_b.ctypes.data))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Mean actions of one raw flat observation (float32, contiguous) into ``self.out``."""
        self.fn(*self._fixed, ctypes.c_void_p(x.ctypes.data), *self._tail)
        return self.out
