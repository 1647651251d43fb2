"""A C kernel for one observation, compiled once and called from Python as a small extension module (or,
failing that, as a shared library through ctypes).

``kdistill.deploy.runtime`` uses it for single observations, where numpy's per-call overhead, not arithmetic, is the
cost. Both builds use the system C compiler on first use and are cached (``$KDISTILL_CACHE`` or
``~/.cache/kdistill``, keyed by the source, the flags and, for the extension, the Python and numpy versions; written
atomically). The extension needs the Python and numpy headers; without them ``load_extension()`` returns None and
the runtime calls the same kernel through ctypes. Without a compiler, or with ``KDISTILL_NO_KERNEL=1``, both loaders
return None and the runtime stays on numpy. Importing this module imports neither torch nor the compiler.

A policy with an encoder on a second input (exteroception) runs it first, with the same layer code, straight into
the first layer's input behind the normalised observation, then the dense chain.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=gnu99"]
# Every weight row and bias is zero-padded to a multiple of ALIGN floats (64 bytes) and every array starts on a
# 64-byte boundary, so each vector load reads whole cache lines (a 16-wide load across two lines costs about twice
# as much) and no layer needs a scalar tail (a serial chain per output, slow on narrow last layers).
ALIGN = 16
# The exported C is plain C99 for any compiler; this build may use GCC/Clang vector types. What makes one
# observation cheap:
# - ReLU makes many hidden activations exactly 0 (and padded inputs are 0): their weight rows add nothing, so
#   each layer first lists its non-zero inputs and reads only those rows (the sums of the rest are unchanged,
#   term for term, in input order). The list is built without branches (a compress per 16 inputs on AVX-512):
#   which inputs are 0 changes with every observation, so a branch per input mispredicts about half the time;
# - likewise a row of only zero weights adds nothing for a finite input: a generated MLP has one for every
#   observation slot of a padded token, about a quarter of the first layer on UNIMAL. A layer's ``live`` bits
#   (one per input, 16 to a word) leave those rows out of the list unless their input is NaN, which the dense
#   sum would carry (0 * NaN is NaN);
# - blocks of 8 vectors of outputs live in registers across the whole input loop (16-wide vectors where the
#   CPU has them, else 8-wide; eight independent accumulators keep both FMA ports busy), then one block of the
#   3, 2 or 1 vectors left;
# - everything a call needs sits in one plan struct, so a call passes a single pointer.
_FAST = r"""
#include <stddef.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#define KD_W 16
#else
#define KD_W 8
#endif
#define KD_PAD(n) (((n) + KD_ALIGN - 1) / KD_ALIGN * KD_ALIGN)
_Static_assert(KD_ALIGN % KD_W == 0, "padded rows must be whole vectors");
typedef float kd_v __attribute__((vector_size(4 * KD_W)));
typedef float kd_vu __attribute__((vector_size(4 * KD_W), aligned(4)));
typedef int kd_vi __attribute__((vector_size(4 * KD_W)));
#define KD_LD(p) (*(const kd_vu *)(p))
#define KD_ST(p, a) (*(kd_vu *)(p) = (a))
/* negatives to 0; NaN stays NaN, as in numpy, torch and the exported C */
#define KD_RELU(a) ((a) = (kd_v)(~(kd_vi)((a) < zero) & (kd_vi)(a)))

/* the indices of the inputs whose rows can change the sums, into nz: h's non-zero entries (NaN included, as
   h[i] != 0 has it) and, with live given, only those whose row is live or whose value is NaN; nz has 16 spare
   slots */
static int kd_nonzero(int n, const float *h, const unsigned short *live, int *nz) {
    int m = 0, i = 0;
#if defined(__AVX512F__)
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(h + i);
        __mmask16 k = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
        if (live) k &= live[i / 16] | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        _mm512_storeu_si512((void *)(nz + m), _mm512_maskz_compress_epi32(k, idx));
        m += __builtin_popcount(k);
        idx = _mm512_add_epi32(idx, _mm512_set1_epi32(16));
    }
#endif
    for (; i < n; ++i) { nz[m] = i; m += h[i] != 0.0f && (!live || (live[i / 16] >> (i % 16) & 1) || h[i] != h[i]); }
    return m;
}

/* out[:KD_PAD(n_out)] = b + h[:n_in] @ w, ReLU'd if relu; w has rows of KD_PAD(n_out) floats; live: NULL or the
   bits of the rows that are not all zero */
static void kd_layer_fast(int n_in, int n_out, const float *w, const float *b, const float *h, float *out, int relu,
                          const unsigned short *live, int *nz) {
    const kd_v zero = {0};
    const int m = kd_nonzero(n_in, h, live, nz), width = KD_PAD(n_out);
    int o0 = 0;
#define KD_BLOCK(J)                                                                                           \
    for (; o0 + J * KD_W <= width; o0 += J * KD_W) {                                                          \
        kd_v a[J];                                                                                            \
        for (int j = 0; j < J; ++j) a[j] = KD_LD(b + o0 + j * KD_W);                                          \
        for (int k = 0; k < m; ++k) {                                                                         \
            const int i = nz[k];                                                                              \
            const float *row = w + (long)i * width + o0;                                                      \
            const kd_v hv = zero + h[i];                                                                      \
            for (int j = 0; j < J; ++j) a[j] += KD_LD(row + j * KD_W) * hv;                                   \
        }                                                                                                     \
        for (int j = 0; j < J; ++j) { if (relu) KD_RELU(a[j]); KD_ST(out + o0 + j * KD_W, a[j]); }           \
    }
    KD_BLOCK(8) KD_BLOCK(4) KD_BLOCK(3) KD_BLOCK(2) KD_BLOCK(1)
#undef KD_BLOCK
}

typedef struct {
    int n_layers;
    const int *sizes;
    const float *const *w;
    const float *const *b;
    const unsigned short *const *live; /* per layer: NULL or its live-row bits */
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

/* reads n floats (a whole number of 8-vector blocks) reps times with the kernel's loads and adds: the cache
   bandwidth a batch-1 call is bound by (kdistill bench); the sum keeps the reads from being optimised away */
float kd_stream(const float *p, long n, long reps) {
    kd_v a[8] = {{0}};
    for (long r = 0; r < reps; ++r)
        for (long i = 0; i + 8 * KD_W <= n; i += 8 * KD_W)
            for (int j = 0; j < 8; ++j) a[j] += KD_LD(p + i + j * KD_W);
    float s = 0.0f;
    for (int j = 0; j < 8; ++j) for (int k = 0; k < KD_W; ++k) s += a[j][k];
    return s;
}

void kd_run(const kd_plan *p) {
    float *h = p->buf_a, *next = p->buf_b;
    const int n_obs = p->n_ext ? p->sizes[0] - p->ext_sizes[p->n_ext] : p->sizes[0];
    if (p->n_ext) {
        /* buf_a's head is not written yet, so the encoder's intermediates ping-pong in buf_b and ext_buf and its
           last layer writes straight behind where the normalised observation goes (its zero padding after) */
        const float *e = p->ext_x;
        float *spare = p->buf_b, *other = p->ext_buf;
        for (int l = 0; l < p->n_ext; ++l) {
            float *out = l == p->n_ext - 1 ? h + n_obs : spare;
            kd_layer_fast(p->ext_sizes[l], p->ext_sizes[l + 1], p->ext_w[l], p->ext_b[l], e, out, 1, NULL, p->nz);
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
        kd_layer_fast(p->sizes[l], p->sizes[l + 1], p->w[l], p->b[l], h, out, !last, p->live[l], p->nz);
        if (!last) { float *t = h; h = out; next = t; }
    }
}
"""
# The extension: a ``Runner`` object per plan whose call checks the arguments with a few flag tests, runs the
# kernel straight on the caller's arrays and copies the actions out. Arguments it does not take as they are
# (another dtype or type, non-contiguous, a wrong size, other keywords) go unchanged to its ``fallback``, the
# caller's general path, or without one make it return NotImplemented. With the fallback the Runner can stand in
# for ``act`` itself, which saves a Python frame per call (a few percent of a 3 us step). The GIL stays held: the
# plan's buffers serve one call at a time.
_EXT_HEAD = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <stddef.h>
#include <string.h>
"""
_EXT = r"""
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    const kd_plan *plan;
    PyObject *owner; /* keeps the plan's memory alive */
    PyObject *fallback; /* NULL: return NotImplemented instead */
    npy_intp n_x, n_ext, n_out;
} kd_runner;

/* a native-endian, aligned, C-contiguous float32 ndarray of n values: (n,) or, when rows is 1, (1, n) */
static int kd_takes(PyObject *o, npy_intp n, int ndim, int writeable) {
    if (!PyArray_CheckExact(o)) return 0;
    PyArrayObject *a = (PyArrayObject *)o;
    const int need = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | (writeable ? NPY_ARRAY_WRITEABLE : 0);
    if (PyArray_TYPE(a) != NPY_FLOAT32 || !PyArray_ISNOTSWAPPED(a) || !PyArray_CHKFLAGS(a, need)) return 0;
    if (ndim == 0) return PyArray_SIZE(a) == n; /* out: any shape of n values */
    if (PyArray_NDIM(a) != ndim) return 0;
    return ndim == 1 ? PyArray_DIM(a, 0) == n : PyArray_DIM(a, 0) == 1 && PyArray_DIM(a, 1) == n;
}

static PyObject *kd_runner_call(PyObject *self_, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    kd_runner *self = (kd_runner *)self_;
    if (self->owner == NULL) { /* cleared by the garbage collector: the plan may be gone */
        PyErr_SetString(PyExc_RuntimeError, "this Runner's policy is gone");
        return NULL;
    }
    const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    const Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *x = nargs > 0 ? args[0] : NULL, *e = nargs > 1 ? args[1] : Py_None, *out = nargs > 2 ? args[2] : Py_None;
    int fits = nargs >= 1 && nargs + nkw <= 3;
    for (Py_ssize_t k = 0; fits && k < nkw; ++k) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        if (nargs < 2 && PyUnicode_CompareWithASCIIString(name, "extero") == 0) e = args[nargs + k];
        else if (nargs < 3 && PyUnicode_CompareWithASCIIString(name, "out") == 0) out = args[nargs + k];
        else fits = 0;
    }
    const int ndim = fits && PyArray_CheckExact(x) ? PyArray_NDIM((PyArrayObject *)x) : 0;
    fits = fits && (ndim == 1 || ndim == 2) && kd_takes(x, self->n_x, ndim, 0) &&
           (self->n_ext ? kd_takes(e, self->n_ext, ndim, 0) : e == Py_None) &&
           (out == Py_None || kd_takes(out, self->n_out, 0, 1));
    if (!fits) {
        if (self->fallback != NULL) return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
        if (nargs < 1 || nargs + nkw > 3) {
            PyErr_SetString(PyExc_TypeError, "Runner(x, extero=None, out=None) takes up to three arguments");
            return NULL;
        }
        Py_RETURN_NOTIMPLEMENTED;
    }
    kd_plan local = *self->plan;
    local.x = (const float *)PyArray_DATA((PyArrayObject *)x);
    if (self->n_ext) local.ext_x = (const float *)PyArray_DATA((PyArrayObject *)e);
    kd_run(&local);
    if (out == Py_None) {
        npy_intp dims[2] = {1, self->n_out};
        out = PyArray_SimpleNew(ndim, ndim == 1 ? dims + 1 : dims, NPY_FLOAT32);
        if (out == NULL) return NULL;
    } else {
        Py_INCREF(out);
    }
    memcpy(PyArray_DATA((PyArrayObject *)out), local.y, sizeof(float) * self->n_out);
    return out;
}

static PyObject *kd_runner_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    unsigned long long address;
    PyObject *owner, *fallback = Py_None;
    if (!PyArg_ParseTuple(args, "KO|O:Runner", &address, &owner, &fallback)) return NULL;
    kd_runner *self = (kd_runner *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    const kd_plan *p = (const kd_plan *)(uintptr_t)address;
    self->vectorcall = kd_runner_call;
    self->plan = p;
    Py_INCREF(owner);
    self->owner = owner;
    self->fallback = fallback == Py_None ? NULL : Py_NewRef(fallback);
    self->n_ext = p->n_ext ? p->ext_sizes[0] : 0;
    self->n_x = p->sizes[0] - (p->n_ext ? p->ext_sizes[p->n_ext] : 0);
    self->n_out = p->sizes[p->n_layers];
    return (PyObject *)self;
}

static int kd_runner_traverse(kd_runner *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    Py_VISIT(self->fallback);
    return 0;
}
static int kd_runner_clear(kd_runner *self) { Py_CLEAR(self->owner); Py_CLEAR(self->fallback); return 0; }
static void kd_runner_dealloc(kd_runner *self) {
    PyObject_GC_UnTrack(self);
    kd_runner_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject kd_runner_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_kd_fast.Runner",
    .tp_doc = "Runner(plan_address, owner, fallback=None): the kernel on one observation; call(x, extero=None, out=None).",
    .tp_basicsize = sizeof(kd_runner),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(kd_runner, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = kd_runner_new,
    .tp_traverse = (traverseproc)kd_runner_traverse,
    .tp_clear = (inquiry)kd_runner_clear,
    .tp_dealloc = (destructor)kd_runner_dealloc,
};

static struct PyModuleDef kd_module = {PyModuleDef_HEAD_INIT, "_kd_fast", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__kd_fast(void) {
    import_array();
    if (PyType_Ready(&kd_runner_type) < 0) return NULL;
    PyObject *m = PyModule_Create(&kd_module);
    if (m == NULL) return NULL;
    Py_INCREF(&kd_runner_type);
    if (PyModule_AddObject(m, "Runner", (PyObject *)&kd_runner_type) < 0) {
        Py_DECREF(&kd_runner_type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
"""
_loaded: dict[str, object] = {}


class _Plan(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_int), ("sizes", ctypes.c_void_p), ("w", ctypes.c_void_p), ("b", ctypes.c_void_p),
                ("live", ctypes.c_void_p), ("mean", ctypes.c_void_p), ("low", ctypes.c_void_p), ("high", ctypes.c_void_p), ("x", ctypes.c_void_p),
                ("y", ctypes.c_void_p), ("buf_a", ctypes.c_void_p), ("buf_b", ctypes.c_void_p), ("nz", ctypes.c_void_p),
                ("n_ext", ctypes.c_int), ("ext_sizes", ctypes.c_void_p), ("ext_w", ctypes.c_void_p),
                ("ext_b", ctypes.c_void_p), ("ext_x", ctypes.c_void_p), ("ext_buf", ctypes.c_void_p)]


def _cache_dir() -> Path:
    return Path(os.environ.get("KDISTILL_CACHE") or Path.home() / ".cache" / "kdistill") / "kernels"


def _source() -> str:
    return f"#define KD_ALIGN {ALIGN}\n{_FAST}"


def _build(name: str, source: str, flags: list[str], key_extra: str = "") -> Path | None:
    """The cached shared object built from ``source``, compiling it on first use; None without a compiler or when
    the build fails."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    key = hashlib.sha256((source + " ".join(flags) + key_extra).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"{name}-{key}.so"
    if lib.exists():
        return lib
    try:
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / f"{name}.c"
            src.write_text(source)
            built = Path(tmp) / f"{name}.so"
            subprocess.run([compiler, *flags, str(src), "-o", str(built)], check=True, capture_output=True, timeout=120)
            fd, partial = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=lib.parent)
            os.close(fd)
            shutil.copyfile(built, partial)
            os.replace(partial, lib)
    except (OSError, subprocess.SubprocessError):
        return None
    return lib


def _include_dirs() -> list[str] | None:
    """The Python and numpy header folders, or None when either is missing."""
    dirs = [sysconfig.get_paths()["include"], np.get_include()]
    ok = all(Path(d).is_dir() for d in dirs) and (Path(dirs[0]) / "Python.h").is_file()
    return dirs if ok else None


def load_extension():
    """The compiled ``_kd_fast`` extension module, or None when it cannot be had here (no compiler or headers,
    disabled)."""
    if os.environ.get("KDISTILL_NO_KERNEL") == "1":
        return None
    if "ext" in _loaded:
        return _loaded["ext"]
    module = None
    includes = _include_dirs()
    if includes is not None:
        flags = [*FLAGS, *(f"-I{d}" for d in includes)]
        if sys.platform == "darwin":
            flags.append("-Wl,-undefined,dynamic_lookup")
        # the module is bound to this interpreter's ABI and numpy's C API: both are in the key
        lib = _build("kd_ext", _EXT_HEAD + _source() + _EXT, flags,
                     f"{sys.version} {sysconfig.get_config_var('EXT_SUFFIX')} numpy {np.__version__}")
        if lib is not None:
            try:
                spec = importlib.util.spec_from_file_location(
                    "_kd_fast", lib, loader=importlib.machinery.ExtensionFileLoader("_kd_fast", str(lib)))
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            except (ImportError, OSError):
                module = None
    _loaded["ext"] = module
    return module


def load_kernel():
    """The compiled ``kd_run`` as a ctypes function (from the extension's library when it loads, so one build
    serves both), or None when it cannot be had here (no compiler, disabled)."""
    if os.environ.get("KDISTILL_NO_KERNEL") == "1":
        return None
    if "fn" in _loaded:
        return _loaded["fn"]
    fn = None
    ext = load_extension()
    path = Path(ext.__file__) if ext is not None else _build("kd_mlp", _source(), FLAGS)
    if path is not None:
        try:
            lib = ctypes.CDLL(str(path))  # the extension's own library is already loaded: this is the same handle
            fn = lib.kd_run
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = None
            lib.kd_stream.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
            lib.kd_stream.restype = ctypes.c_float
            _loaded["stream"] = lib.kd_stream
        except (OSError, AttributeError):
            fn = None
    _loaded["fn"] = fn
    return fn


def read_bandwidth(nbytes: int, round_time: float = 0.02, rounds: int = 5) -> float | None:
    """Bytes per second at which one core reads a 64-byte-aligned buffer of about ``nbytes`` over and over with the
    kernel's vector loads (best of ``rounds``); None without a kernel. Sized like the weights a call reads, this is
    the cache bandwidth a batch-1 call is bound by."""
    if load_kernel() is None or "stream" not in _loaded:
        return None
    stream = _loaded["stream"]
    buf = _aligned(max(-(-nbytes // 4 // (8 * ALIGN)) * 8 * ALIGN, 8 * ALIGN))
    buf[:] = 1.0
    start = time.perf_counter()
    stream(buf.ctypes.data, buf.size, 10)
    reps = max(10, int(round_time / max((time.perf_counter() - start) / 10, 1e-9)))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        stream(buf.ctypes.data, buf.size, reps)
        best = min(best, (time.perf_counter() - start) / reps)
    return buf.nbytes / best


def _pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _aligned(shape, dtype=np.float32) -> np.ndarray:
    """Zeros of ``shape`` starting on a 64-byte boundary."""
    size = int(np.prod(shape))
    raw = np.zeros(size + 64 // np.dtype(dtype).itemsize, dtype)
    start = (-raw.ctypes.data % 64) // np.dtype(dtype).itemsize
    return raw[start:start + size].reshape(shape)


def _live_bits(w: np.ndarray) -> np.ndarray | None:
    """The kernel's live-row bits of weight ``w`` (in, out): bit ``i % 16`` of word ``i // 16`` is set where row ``i``
    has a non-zero weight; None when every row has one."""
    live = np.any(w != 0, axis=1)
    if live.all():
        return None
    bits = np.zeros(-(-live.size // 16) * 16, np.uint32)
    bits[:live.size] = live
    return (bits.reshape(-1, 16) << np.arange(16, dtype=np.uint32)).sum(axis=1).astype(np.uint16)


def _padded(a: np.ndarray) -> np.ndarray:
    """``a`` (a weight (in, out) or a bias (out,)) copied with its last axis zero-padded to whole ALIGN blocks."""
    out = _aligned((*a.shape[:-1], _pad(a.shape[-1])))
    out[..., :a.shape[-1]] = a
    return out


class KernelPlan:
    """Buffers and a ``kd_plan`` struct prepared once for one policy: a call copies the observation into the
    plan's input buffer and passes the struct's address, nothing else (the extension's ``Runner`` reads the
    caller's arrays in place instead).

    ``extero`` (``[(weight (in, out), bias)]``, ReLU after every layer) is an encoder on a second raw input whose
    output follows the normalised observation in the first layer's input (``layers[0]`` then has rows for both)."""

    def __init__(self, fn, layers: list[np.ndarray], biases: list[np.ndarray], mean: np.ndarray, low: np.ndarray,
                 high: np.ndarray, extero: list[tuple[np.ndarray, np.ndarray]] = ()):
        self.fn = fn
        ws = [_padded(np.asarray(w, np.float32)) for w in layers]
        bs = [_padded(np.asarray(b, np.float32)) for b in biases]
        ext_ws = [_padded(np.asarray(w, np.float32)) for w, _ in extero]
        ext_bs = [_padded(np.asarray(b, np.float32)) for _, b in extero]
        mean, low, high = (_padded(np.asarray(a, np.float32)) for a in (mean, low, high))
        sizes = np.array([layers[0].shape[0]] + [w.shape[1] for w in layers], np.int32)
        ext_sizes = np.array([w.shape[0] for w, _ in extero[:1]] + [w.shape[1] for w, _ in extero] or [0], np.int32)
        # every layer writes whole padded rows; the encoder's last one lands behind the observation in buf_a
        widest = _pad(int(max(sizes.max(), ext_sizes.max()))) + ALIGN
        self._layers, self._extero, self._norm = list(zip(ws, bs)), list(zip(ext_ws, ext_bs)), (mean, low, high)
        self._arrays = {"sizes": sizes, "buf_a": _aligned(widest), "buf_b": _aligned(widest),
                        "nz": _aligned(widest + ALIGN, np.int32), "ext_sizes": ext_sizes,
                        "ext_buf": _aligned(widest), "y": _aligned(_pad(int(sizes[-1])))}
        n_ext = len(ext_ws)
        self.x = _aligned(int(sizes[0]) - (int(ext_sizes[-1]) if n_ext else 0))
        self.extero = _aligned(int(ext_sizes[0]))
        self.out = self._arrays["y"][:int(sizes[-1])]
        ptr = ctypes.c_void_p
        n = len(ws)
        self._w = (ptr * n)(*[w.ctypes.data for w in ws])
        self._b = (ptr * n)(*[b.ctypes.data for b in bs])
        self._live_bits = [_live_bits(np.asarray(w)) for w in layers]
        self._live = (ptr * n)(*[None if bits is None else bits.ctypes.data for bits in self._live_bits])
        self._ext_w = (ptr * max(n_ext, 1))(*[w.ctypes.data for w in ext_ws])
        self._ext_b = (ptr * max(n_ext, 1))(*[b.ctypes.data for b in ext_bs])
        a = self._arrays
        self._plan = _Plan(n, a["sizes"].ctypes.data, ctypes.addressof(self._w), ctypes.addressof(self._b),
                           ctypes.addressof(self._live), mean.ctypes.data, low.ctypes.data, high.ctypes.data, self.x.ctypes.data,
                           a["y"].ctypes.data, a["buf_a"].ctypes.data, a["buf_b"].ctypes.data, a["nz"].ctypes.data,
                           n_ext, a["ext_sizes"].ctypes.data, ctypes.addressof(self._ext_w),
                           ctypes.addressof(self._ext_b), self.extero.ctypes.data, a["ext_buf"].ctypes.data)
        self._address = ctypes.addressof(self._plan)

    def bytes_read(self, x: np.ndarray, extero: np.ndarray | None = None) -> int:
        """Bytes of weights and biases a call reads for this observation: each layer's padded bias and the padded
        weight rows it lists (non-zero inputs with a live row, or NaN; found with numpy, so an activation within
        rounding of 0 may count differently)."""
        total = 0

        def layer(h, w, b, relu, live=None):
            nonlocal total
            h = h[:w.shape[0]]
            listed = h != 0
            if live is not None:
                bits = (live[:, None] >> np.arange(16, dtype=np.uint16)) & 1
                listed &= bits.reshape(-1)[:h.size].astype(bool) | np.isnan(h)
            total += 4 * w.shape[1] * (int(np.count_nonzero(listed)) + 1)
            h = h @ w + b
            return np.maximum(h, 0.0) if relu else h

        n_obs = self.x.size
        mean, low, high = (a[:n_obs] for a in self._norm)
        h = np.clip(np.asarray(x, np.float32) - mean, low, high)
        if self._extero:
            e = np.asarray(extero, np.float32)
            for w, b in self._extero:
                e = layer(e, w, b, True)
            h = np.concatenate([h, e])
        for k, (w, b) in enumerate(self._layers):
            h = layer(h, w, b, k < len(self._layers) - 1, self._live_bits[k])
        return total

    def runner(self, ext, fallback=None):
        """The extension's ``Runner`` on this plan: ``runner(x, extero=None, out=None)`` gives the actions of one raw
        observation as a new array (or into ``out``); arguments it does not take as they are go to ``fallback``
        unchanged, or without one give NotImplemented."""
        return ext.Runner(self._address, self, fallback)

    def __call__(self, x: np.ndarray, extero: np.ndarray | None = None) -> np.ndarray:
        """Mean actions of one raw flat observation (and, with an encoder, one raw ``extero``) into ``self.out``."""
        self.x[...] = x
        if extero is not None:
            self.extero[...] = extero
        self.fn(self._address)
        return self.out
