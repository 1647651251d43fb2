"""A generated policy as C: compiled with the system compiler, it matches the student on every training robot;
the runtime's compiled batch-1 path matches its numpy path. A terrain student (two inputs: the flat observation and
the raw height map through its encoder) does too, in C and through the compiled kernel."""

from __future__ import annotations

import copy
import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ci import IN_CI, skip_outside_ci
from distill_toy import ToyTokenDomain, teacher_normalizer
from kdistill.deploy import runtime
from kdistill.deploy.c_source import c_identifier, write_c
from kdistill.deploy.export import export_policy
from kdistill.distill.expert_data import slice_normalizer_state
from kdistill.distill.students import StudentPolicy, build_student
from kdistill.errors import DataError
from kdistill.rl.normalise import ObsNormalizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CC = shutil.which("cc") or shutil.which("gcc")
# a missing compiler skips these tests on a developer machine; in CI they run, and fail without one
needs_cc = pytest.mark.skipif(CC is None and not IN_CI, reason="no C compiler")
HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
%(includes)s
typedef void (*act_fn)(const float *, float *);
static const act_fn ACTS[] = {%(functions)s};
int main(int argc, char **argv) {
    /* stdin: for each policy k, rows of obs (int32 k, int32 rows, then rows * n_in floats); stdout: actions */
    int k, rows;
    while (fread(&k, 4, 1, stdin) == 1 && fread(&rows, 4, 1, stdin) == 1) {
        float obs[%(n_in)d], act[%(n_out)d];
        for (int r = 0; r < rows; ++r) {
            if (fread(obs, 4, %(n_in)d, stdin) != %(n_in)d) return 2;
            ACTS[k](obs, act);
            fwrite(act, 4, %(n_out)d, stdout);
        }
    }
    return 0;
}
"""

HARNESS_EXTERO = r"""
#include <stdio.h>
#include <stdlib.h>
%(includes)s
typedef void (*act_fn)(const float *, const float *, float *);
static const act_fn ACTS[] = {%(functions)s};
int main(int argc, char **argv) {
    /* stdin: for each policy k, int32 k, int32 rows, then per row n_in obs floats and n_ext extero floats */
    int k, rows;
    while (fread(&k, 4, 1, stdin) == 1 && fread(&rows, 4, 1, stdin) == 1) {
        static float obs[%(n_in)d], ext[%(n_ext)d], act[%(n_out)d];
        for (int r = 0; r < rows; ++r) {
            if (fread(obs, 4, %(n_in)d, stdin) != %(n_in)d || fread(ext, 4, %(n_ext)d, stdin) != %(n_ext)d) return 2;
            ACTS[k](obs, ext, act);
            fwrite(act, 4, %(n_out)d, stdout);
        }
    }
    return 0;
}
"""


def random_student(layout, config: dict, seed: int = 0) -> StudentPolicy:
    """A student whose generators are moved off their init (every task gets its own MLP), random normaliser."""
    torch.manual_seed(seed)
    student = build_student("hnmlp", layout, config)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name.endswith("_gen.weight"):
                p.normal_(0, 0.05)
    rng = np.random.default_rng(seed)
    shape = (layout.max_tokens, layout.student_token_features)
    state = {"shape": list(shape), "clip": 10.0, "epsilon": 1e-8, "count": 100.0,
             "mean": rng.normal(0, 0.3, shape).tolist(), "var": rng.uniform(0.2, 3.0, shape).tolist()}
    return StudentPolicy(student, ObsNormalizer.from_state(state), {"domain": "x", "arch": "hnmlp"})


def compile_and_run(tmp: Path, exports: list, observations: list[np.ndarray],
                    extero: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Write C for each export, build one program with all of them, feed it the observations (and, for two-input
    exports, their ``extero`` rows)."""
    prefixes, functions = [], []
    for k, exported in enumerate(exports):
        prefix = c_identifier(f"p{k}")
        functions.append(write_c(exported, tmp, prefix)["function"])
        prefixes.append(prefix)
    n_in, n_out = exports[0].input_size, exports[0].output_size
    fields = {"includes": "\n".join(f'#include "{p}.h"' for p in prefixes), "functions": ", ".join(functions),
              "n_in": n_in, "n_out": n_out, "n_ext": exports[0].extero_size}
    (tmp / "main.c").write_text((HARNESS if extero is None else HARNESS_EXTERO) % fields)
    sources = [str(tmp / f"{p}.c") for p in prefixes] + [str(tmp / "main.c")]
    subprocess.run([CC, "-std=c99", "-O1", "-Wall", "-Werror", "-o", str(tmp / "prog"), *sources, "-lm"], check=True,
                   capture_output=True, timeout=600)
    if extero is None:
        rows = [np.ascontiguousarray(o, np.float32) for o in observations]
    else:
        rows = [np.ascontiguousarray(np.hstack([o, e]), np.float32) for o, e in zip(observations, extero)]
    feed = b"".join(np.array([k, len(r)], np.int32).tobytes() + r.tobytes() for k, r in enumerate(rows))
    out = subprocess.run([str(tmp / "prog")], input=feed, capture_output=True, check=True, timeout=120).stdout
    flat = np.frombuffer(out, np.float32)
    results, start = [], 0
    for o in observations:
        results.append(flat[start:start + len(o) * n_out].reshape(len(o), n_out))
        start += len(o) * n_out
    return results


def visited_observations(domain, task: str, seed: int, steps: int, rng) -> list[dict]:
    """The reset observation of ``task`` and those of ``steps`` random actions after it."""
    env = domain.make_env(task)
    seen = [env.reset(seed=seed)[0]]
    for _ in range(steps):
        seen.append(env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))[0])
    env.close()
    return seen


@needs_cc
def test_c_matches_the_student_on_every_training_robot(tmp_path, unimal_dir):
    from kdistill_unimal.domain import UnimalDomain

    domain = UnimalDomain(data_dir=unimal_dir)
    tasks = domain.tasks("train")
    policy = random_student(domain.layout, {"hidden": 16, "embed": 16, "layers": 3})
    exports, observations, expected = [], [], []
    rng = np.random.default_rng(0)
    for k, task in enumerate(tasks):
        ctx = domain.context(task)
        export_policy(policy, task, ctx, tmp_path / "exports" / task)
        exports.append(runtime.load(tmp_path / "exports" / f"{task}.json"))
        seen = [o["obs"] for o in visited_observations(domain, task, k, 3, rng)]
        raw = {"obs": np.stack(seen), "obs_mask": np.repeat(ctx.mask[None], len(seen), 0)}
        raw["obs"][0] *= 50.0  # far outside the normaliser's range: the clipping must agree too
        policy.prepare(task, ctx)
        expected.append(policy.act(raw))
        observations.append(exports[-1].flat_observation(raw))
    got = compile_and_run(tmp_path / "c", exports, observations)
    worst = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    assert worst <= 1e-5, worst
    assert len(got) == len(tasks) == 100 and not np.allclose(got[0][1], got[1][1])


@needs_cc
def test_terrain_student_in_c_and_in_the_kernel(tmp_path, unimal_dir, monkeypatch):
    """A tiny vt student on real robots and real height maps: the exported C (``policy_act_extero``) and the runtime's
    compiled kernel at batch 1 both match the student within 1e-5."""
    from kdistill.deploy import kernel
    from kdistill_unimal.domain import UnimalDomain

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    kernel._loaded.clear()
    domain = UnimalDomain(data_dir=unimal_dir, task_kind="vt")
    tasks = domain.tasks("train")[::25]  # 1.4 MB of C per robot (the encoder), so four robots
    policy = random_student(domain.layout, {"hidden": 16, "embed": 16, "layers": 3})
    exports, observations, heights, expected = [], [], [], []
    rng = np.random.default_rng(0)
    for k, task in enumerate(tasks):
        ctx = domain.context(task)
        export_policy(policy, task, ctx, tmp_path / "exports" / task)
        exports.append(runtime.load(tmp_path / "exports" / f"{task}.json"))
        seen = visited_observations(domain, task, k, 4, rng)
        raw = {"obs": np.stack([o["obs"] for o in seen]), "obs_mask": np.repeat(ctx.mask[None], len(seen), 0),
               "extero": np.stack([o["extero"] for o in seen])}
        assert (raw["extero"] == 0).mean() > 0.5  # the flat start: mostly exact zeros, which the kernels skip
        raw["obs"][0] *= 50.0  # far outside the normaliser's range: the clipping must agree too
        raw["extero"][1] += rng.uniform(-3, 3, raw["extero"][1].shape).astype(np.float32)  # rough ground, no zeros
        policy.prepare(task, ctx)
        expected.append(policy.act(raw))
        observations.append(exports[-1].flat_observation(raw))
        heights.append(raw["extero"])
    got = compile_and_run(tmp_path / "c", exports, observations, heights)
    worst_c = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    fast = [np.stack([p.act(o, e) for o, e in zip(obs, ext)]) for p, obs, ext in zip(exports, observations, heights)]
    assert all(p._kernel for p in exports)  # batch 1 ran compiled, not numpy
    worst_kernel = max(float(np.abs(f - e).max()) for f, e in zip(fast, expected))
    print(f"terrain student: C {worst_c:.2e}, compiled kernel {worst_kernel:.2e} from the student")
    assert worst_c <= 1e-5 and worst_kernel <= 1e-5, (worst_c, worst_kernel)
    assert not np.allclose(got[0][2], got[1][2])  # each robot its own policy
    lifted = exports[0].act(observations[0][2], heights[0][2] + 0.5)  # the height map matters
    assert not np.allclose(lifted, fast[0][2])
    header = (tmp_path / "c" / "p0.h").read_text()
    assert "void p0_act_extero(const float *obs, const float *extero, float *action);" in header
    assert "#define P0_EXTERO_SIZE 1410" in header and "#define P0_OBS_SIZE 204" in header
    assert "#include <" not in (tmp_path / "c" / "p0.c").read_text()
    subprocess.run([CC, "-std=c99", "-pedantic", "-Wall", "-Werror", "-c", str(tmp_path / "c" / "p0.c"), "-o",
                    str(tmp_path / "p0.o")], check=True, capture_output=True, timeout=300)
    with pytest.raises(Exception, match="reads exteroception"):
        exports[0].act(observations[0][0])  # the compiled path checks its inputs as numpy does


@needs_cc
def test_generated_source_is_self_contained(tmp_path):
    domain = ToyTokenDomain()
    norm = slice_normalizer_state(teacher_normalizer().state(), domain.layout.student_features)
    torch.manual_seed(0)
    policy = StudentPolicy(build_student("mlp", domain.layout, {"hidden": 8}), ObsNormalizer.from_state(norm), {})
    export_policy(policy, "toy-0", domain.context("toy-0"), tmp_path / "e")
    info = write_c(runtime.load(tmp_path / "e.json"), tmp_path / "c")
    assert info["function"] == "policy_act" and info["obs_size"] == 9 and info["action_size"] == 6
    source = Path(info["source"]).read_text()
    assert "#include <" not in source  # nothing beyond its own header: no libc, no libm
    header = Path(info["header"]).read_text()
    assert "void policy_act(const float *obs, float *action);" in header
    subprocess.run([CC, "-std=c99", "-pedantic", "-Wall", "-Werror", "-c", info["source"], "-o", str(tmp_path / "p.o")],
                   check=True, capture_output=True)


def export_toy_student(path, seed: int) -> None:
    """A small HN-MLP of the toy domain, exported for task ``toy-1`` at ``path``."""
    domain = ToyTokenDomain()
    norm = slice_normalizer_state(teacher_normalizer().state(), domain.layout.student_features)
    torch.manual_seed(seed)
    policy = StudentPolicy(build_student("hnmlp", domain.layout, {"hidden": 32, "embed": 16}),
                           ObsNormalizer.from_state(norm), {})
    export_policy(policy, "toy-1", domain.context("toy-1"), path)


@needs_cc
def test_runtime_fast_path_matches_numpy(tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    from kdistill.deploy import kernel

    kernel._loaded.clear()
    export_toy_student(tmp_path / "e", seed=1)
    fast = runtime.load(tmp_path / "e.json")
    slow = runtime.load(tmp_path / "e.json")
    slow.use_kernel = False
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(0, 3, 9).astype(np.float32)
        np.testing.assert_allclose(fast.act(x), slow.act(x), atol=1e-6, rtol=0)
        np.testing.assert_allclose(fast.act(x[None]), slow.act(x[None]), atol=1e-6, rtol=0)
    assert fast._kernel and slow._kernel is None
    assert list((tmp_path / "cache" / "kernels").glob("*.so"))
    x64 = rng.normal(0, 1, 9)  # other dtypes are converted, not misread
    np.testing.assert_allclose(fast.act(x64), slow.act(x64.astype(np.float32)), atol=1e-6, rtol=0)
    out = np.empty(6, np.float32)
    assert fast.act(x64, out=out) is out
    if kernel._include_dirs() is not None:
        assert fast.kernel_path == "extension" and slow.kernel_path == "numpy"
        assert list((tmp_path / "cache" / "kernels").glob("kd_ext-*.so"))
    batch = rng.normal(0, 3, (5, 9)).astype(np.float32)  # batches pass the Runner by, to numpy
    np.testing.assert_array_equal(fast.act(batch), slow.act(batch))
    nan = rng.normal(0, 3, 9).astype(np.float32)
    nan[4] = np.nan  # a NaN observation gives NaN actions on both paths (ReLU keeps NaN)
    assert np.isnan(slow.act(nan)).all() and np.isnan(fast.act(nan)).all()
    if fast.kernel_path == "extension":  # the Runner stands in for act(), keywords and all
        assert type(fast.act).__name__ == "Runner"
        x = rng.normal(0, 3, 9).astype(np.float32)
        out = np.empty(6, np.float32)
        assert fast.act(x, out=out) is out
        np.testing.assert_allclose(out, slow.act(x), atol=1e-6, rtol=0)
        np.testing.assert_allclose(fast.act(flat_obs=x), slow.act(x), atol=1e-6, rtol=0)
        np.testing.assert_allclose(fast.act(x, None, out=out), slow.act(x), atol=1e-6, rtol=0)
        with pytest.raises(TypeError):
            fast.act(x, bogus=1)
        with pytest.raises(DataError):
            fast.act(x[:-1])
        clone = copy.copy(fast)  # its Runner hands on to the clone
        clone._plans = {}
        np.testing.assert_array_equal(clone.act(batch), slow.act(batch))
        assert set(clone._plans) == {5} and clone.act is not fast.act and clone.kernel_path == "extension"
        fast.use_kernel = False
        assert fast.kernel_path == "numpy" and "act" not in vars(fast)
        np.testing.assert_array_equal(fast.act(x), slow.act(x))


def random_plan_layers(rng, sizes):
    """Float32 layers (weight (in, out), bias) of ``sizes``, about half of each hidden layer ReLU'd to 0."""
    return [(rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32), rng.normal(0, 0.3, b).astype(np.float32))
            for a, b in zip(sizes[:-1], sizes[1:])]


def reference_act(layers, extero, mean, low, high, x, e=None):
    h = np.clip(x.astype(np.float64) - mean, low, high)
    if extero:
        for w, b in extero:
            e = np.maximum(e.astype(np.float64) @ w + b, 0.0)
        h = np.concatenate([h, e])
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        h = np.maximum(h, 0.0) if i < len(layers) - 1 else h
    return h


@needs_cc
@pytest.mark.parametrize("two_inputs", [False, True])
def test_extension_and_ctypes_run_the_same_kernel(tmp_path, monkeypatch, two_inputs):
    """Widths that leave every remainder of a 16-float row (3, 2, 1 vectors, a part-filled one): the extension's
    Runner and the ctypes call give the same bits, both match float64 numpy; arguments the Runner does not take as
    they are come back as NotImplemented, never misread."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    from kdistill.deploy import kernel

    kernel._loaded.clear()
    ext = kernel.load_extension()
    if ext is None:
        skip_outside_ci("no Python or numpy headers here")
    rng = np.random.default_rng(3)
    n_obs = 37
    extero = random_plan_layers(rng, [50, 33, 20]) if two_inputs else []
    layers = random_plan_layers(rng, [n_obs + (20 if two_inputs else 0), 48, 100, 176, 7])
    mean = rng.normal(0, 1, n_obs).astype(np.float32)
    high = rng.uniform(0.5, 3, n_obs).astype(np.float32)
    plan = kernel.KernelPlan(kernel.load_kernel(), [w for w, _ in layers], [b for _, b in layers], mean, -high, high,
                             extero)
    runner = plan.runner(ext)
    for _ in range(30):
        x = rng.normal(0, 3, n_obs).astype(np.float32)
        at_mean = rng.random(n_obs) < 0.3
        x[at_mean] = mean[at_mean]  # normalised to exactly 0: skipped rows
        e = np.maximum(rng.normal(0, 1, 50), 0).astype(np.float32) if two_inputs else None  # exact zeros too
        got = runner(x, e, None)
        assert isinstance(got, np.ndarray) and got.shape == (7,) and got.dtype == np.float32
        np.testing.assert_array_equal(got, plan(x, e))
        np.testing.assert_allclose(got, reference_act(layers, extero, mean, -high, high, x, e), atol=1e-5, rtol=0)
    assert runner(x[None], None if e is None else e[None], None).shape == (1, 7)
    out = np.empty((1, 7), np.float32)
    assert runner(x, e, out) is out and np.array_equal(out[0], plan(x, e))
    refused = [(x.astype(np.float64), e, None), (np.repeat(x, 2)[::2], e, None), (list(x), e, None), (x[:-1], e, None),
               (x, e, np.empty(7)), (x, e, np.empty(8, np.float32)), (x.astype(">f4"), e, None),
               (np.stack([x, x]), None if e is None else np.stack([e, e]), None)]
    if two_inputs:
        refused += [(x, None, None), (x, e[:-1], None), (x, e.astype(np.float64), None), (x, e[None], None)]
    else:
        refused += [(x, x, None)]
    for args in refused:
        assert runner(*args) is NotImplemented
    ro = x.copy()
    ro.flags.writeable = False  # read-only input is fine, read-only output is not
    assert np.array_equal(runner(ro, e, None), plan(x, e)) and runner(x, e, ro[:7]) is NotImplemented


@needs_cc
def test_the_kernel_leaves_out_rows_of_zero_weights(tmp_path, monkeypatch):
    """Rows of only zero weights (a padded token's slots) are not read for a finite input, whatever its value: the
    result still matches float64 numpy and the bytes read drop by exactly those rows; a NaN there still reaches
    the sums, as in the dense ones."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    from kdistill.deploy import kernel

    kernel._loaded.clear()
    rng = np.random.default_rng(5)
    n_obs, dead = 53, np.r_[3, 17:34, 50]  # a whole 16-input word, parts of others, and one in the scalar tail
    layers = random_plan_layers(rng, [n_obs, 40, 5])
    layers[0][0][dead] = 0.0
    mean, high = np.zeros(n_obs, np.float32), np.full(n_obs, 5.0, np.float32)
    plan = kernel.KernelPlan(kernel.load_kernel(), [w for w, _ in layers], [b for _, b in layers], mean, -high, high)
    dense = kernel.KernelPlan(kernel.load_kernel(), [layers[0][0] + 0.0, layers[1][0]], [b for _, b in layers],
                              mean, -high, high)
    dense._live[0], dense._live_bits[0] = None, None  # the same weights with every row read
    for _ in range(10):
        x = rng.normal(0, 2, n_obs).astype(np.float32)
        x[rng.random(n_obs) < 0.2] = 0.0
        got = plan(x).copy()
        np.testing.assert_allclose(got, reference_act(layers, [], mean, -high, high, x), atol=1e-5, rtol=0)
        np.testing.assert_allclose(got, dense(x), atol=1e-6, rtol=0)
        h = np.clip(x, -5, 5)
        hidden = np.maximum(h.astype(np.float64) @ layers[0][0] + layers[0][1], 0)
        live = np.ones(n_obs, bool)
        live[dead] = False
        expected = 4 * 48 * (np.count_nonzero((h != 0) & live) + 1) + 4 * 16 * (np.count_nonzero(hidden) + 1)
        assert plan.bytes_read(x) == expected
    x[dead[0]] = np.nan
    with_nan, without = plan(x).copy(), plan(np.nan_to_num(x)).copy()  # plan() returns its own output buffer
    assert np.array_equal(with_nan, dense(x), equal_nan=True) and not np.array_equal(with_nan, without)
    # a core without AVX-512 takes the scalar list: same source, same results
    so = tmp_path / "avx2.so"
    src = tmp_path / "avx2.c"
    src.write_text(kernel._source())
    subprocess.run([CC, "-O3", "-mavx2", "-mfma", "-mno-avx512f", "-fPIC", "-shared", "-std=gnu99", str(src), "-o",
                    str(so)], check=True, capture_output=True)
    fn = ctypes.CDLL(str(so)).kd_run
    fn.argtypes, fn.restype = [ctypes.c_void_p], None
    portable = kernel.KernelPlan(fn, [w for w, _ in layers], [b for _, b in layers], mean, -high, high)
    for row in [x, np.nan_to_num(x), rng.normal(0, 2, n_obs).astype(np.float32)]:
        np.testing.assert_allclose(portable(row), plan(row), atol=1e-6, rtol=0)


@needs_cc
def test_without_headers_the_runtime_calls_the_kernel_through_ctypes(tmp_path, monkeypatch):
    """No Python or numpy headers: the extension is not built and act() runs the same kernel through ctypes."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    from kdistill.deploy import kernel

    export_toy_student(tmp_path / "e", seed=2)
    xs = np.random.default_rng(0).normal(0, 3, (10, 9)).astype(np.float32)
    kernel._loaded.clear()
    compiled = runtime.load(tmp_path / "e.json")
    with_ext = [compiled.act(x) for x in xs]
    monkeypatch.setattr(kernel, "_include_dirs", lambda: None)
    kernel._loaded.clear()
    assert kernel.load_extension() is None and kernel.load_kernel() is not None
    fallback = runtime.load(tmp_path / "e.json")
    got = [fallback.act(x) for x in xs]
    assert fallback.kernel_path == "ctypes" and fallback._fast is None
    assert list((tmp_path / "cache" / "kernels").glob("kd_mlp-*.so"))
    for a, b in zip(got, with_ext):
        np.testing.assert_array_equal(a, b)
    kernel._loaded.clear()


def test_without_a_compiler_the_runtime_stays_on_numpy(tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_NO_KERNEL", "1")
    from kdistill.deploy import kernel

    kernel._loaded.clear()
    assert kernel.load_kernel() is None
    domain = ToyTokenDomain()
    norm = slice_normalizer_state(teacher_normalizer().state(), domain.layout.student_features)
    policy = StudentPolicy(build_student("mlp", domain.layout, {"hidden": 8}), ObsNormalizer.from_state(norm), {})
    export_policy(policy, "toy-0", domain.context("toy-0"), tmp_path / "e")
    exported = runtime.load(tmp_path / "e.json")
    assert exported.act(np.zeros(9, np.float32)).shape == (6,) and exported._kernel is False
    kernel._loaded.clear()


def test_importing_the_kernel_does_not_import_torch():
    code = ("import sys, kdistill.deploy.runtime, kdistill.deploy.kernel, kdistill.deploy.c_source; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_cc
def test_cli_export_c(tmp_path):
    import json
    import os

    from student_run import write_student_run

    domain = ToyTokenDomain()
    write_student_run(tmp_path / "hn", domain.layout, domain.name, preset="small")
    env = {**os.environ, "KDISTILL_PLUGINS": str(Path(__file__).with_name("distill_toy.py")), "OMP_NUM_THREADS": "1"}

    def kdistill(*args):
        return subprocess.run([sys.executable, "-m", "kdistill.cli", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    r = kdistill("export", "toytokens", "--student", str(tmp_path / "hn"), "--robot", "toy-test-1", "--format", "c",
                 "--out", str(tmp_path / "exp" / "robot"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["function"] == "policy_act" and 0 <= info["check"] <= 1e-5
    assert '#include "robot.h"' in (tmp_path / "exp" / "robot.c").read_text()
    (tmp_path / "mine.c").write_text("int main(void) { return 0; }\n")
    r = kdistill("export", "toytokens", "--student", str(tmp_path / "hn"), "--robot", "toy-test-1", "--format", "c",
                 "--out", str(tmp_path / "mine"))
    assert r.returncode == 2 and "not written by kdistill" in r.stderr
    assert (tmp_path / "mine.c").read_text() == "int main(void) { return 0; }\n"
