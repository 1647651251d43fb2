"""Policy latency, single thread: the paper-preset UNIMAL teacher against every way of running its student.

Run (skipped by the default test run)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/pytest tests/benchmarks/test_policy_latency.py --benchmark-only

One benchmark group per batch size (1, 32, 1024), so the teacher and the students sit side by side:

* ``teacher``          MetaMorph actor, paper preset, torch inference mode, fused MHA fast path on;
* ``hnmlp-per-token``   the HN-MLP as the reference runs it (per-limb generated weights per row, einsum);
* ``student-batched``  the student's ``forward_with`` (kdistill's grouped-bmm path);
* ``dense-torch``      the robot's folded MLP as torch Linear layers;
* ``numpy-runtime``    the exported MLP in ``kdistill.deploy.runtime``;
* ``compiled-runtime`` the same export through the runtime's compiled kernel, called by its extension module
                       (batch 1 only: larger batches take the numpy path, so they are not timed twice);
* ``compiled-ctypes``  the same kernel through ctypes, the extension's fallback (batch 1 only);
* ``onnxruntime``      the ONNX export in onnxruntime (one intra-op thread);

plus the one-off cost of writing one robot's weights (group ``one-off``), and the same models at batch 1 on
variable terrain (group ``vt batch    1``), where the student also runs its height-map encoder (two inputs; the
compiled kernel runs the encoder, then the chain). Threads: torch runs on one
(``torch.set_num_threads(1)``) and numpy's BLAS on one through ``threadpoolctl`` when installed; without it,
``OPENBLAS_NUM_THREADS=1`` in the command above does it (it must be set before numpy is imported, hence on the
command line). ``extra_info`` holds per-sample FLOPs (FlopCounterMode) and parameters of each model.
"""

from __future__ import annotations

import pytest
import torch

from kdistill.bench import bench as B

BATCHES = (1, 32, 1024)
MODELS = ("teacher", "hnmlp-per-token", "student-batched", "dense-torch", "numpy-runtime", "compiled-runtime",
          "compiled-ctypes", "onnxruntime")
COMPILED = ("compiled-runtime", "compiled-ctypes")


@pytest.fixture(scope="module")
def single_thread():
    with B.limit_threads(1) as blas:
        yield blas


@pytest.fixture(scope="module")
def subjects(unimal_dir, single_thread):
    from kdistill.plugins import get_domain

    domain = get_domain("unimal", data_dir=str(unimal_dir))
    return B.build_subjects(domain, task="floor-1409-11-11-01-08-26-42", seed=0)


@pytest.fixture(scope="module")
def costs(subjects):
    return B.count_costs(subjects)


@pytest.fixture(scope="module")
def terrain_subjects(unimal_dir, single_thread):
    from kdistill.plugins import get_domain

    domain = get_domain("unimal:vt", data_dir=str(unimal_dir))
    return B.build_subjects(domain, task="floor-1409-11-11-01-08-26-42", seed=0)


class CallerCache:
    """Inputs and callables of one batch size at a time (the per-token weights at 1024 rows take 0.5 GB)."""

    def __init__(self, subjects):
        self.subjects, self.batch, self.callers = subjects, None, {}

    def get(self, batch: int) -> dict:
        if batch != self.batch:
            self.callers = {}  # free the previous batch's inputs first
            self.callers, self.batch = B.make_callers(self.subjects, batch), batch
        return self.callers


@pytest.fixture(scope="module")
def callers(subjects):
    return CallerCache(subjects)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", BATCHES)  # listed last so tests run batch by batch
def test_policy_step(benchmark, callers, costs, single_thread, batch, model):
    if model in COMPILED and batch != 1:
        pytest.skip("the compiled kernel serves single observations; batches run the numpy path")
    fn = callers.get(batch).get(model)
    if fn is None:
        pytest.fail(f"no {model} caller at batch {batch} (no C compiler or Python headers here? KDISTILL_NO_KERNEL set?)")
    benchmark.group = f"batch {batch:>4}"
    flops = costs["teacher"]["measured"] if model == "teacher" else costs["generated_mlp"]["measured"]
    benchmark.extra_info.update(batch=batch, flops_per_sample=flops["flops"], params=flops["params"],
                                blas_threads=single_thread, torch_threads=torch.get_num_threads())
    with torch.inference_mode():
        if batch >= 1024 and model in ("teacher", "hnmlp-per-token"):  # about a second per teacher call
            benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
        else:
            benchmark(fn)


@pytest.fixture(scope="module")
def terrain_callers(terrain_subjects):
    return B.make_callers(terrain_subjects, 1)


@pytest.mark.parametrize("model", MODELS)
def test_terrain_policy_step(benchmark, terrain_callers, terrain_subjects, single_thread, model):
    fn = terrain_callers.get(model)
    if fn is None:
        pytest.fail(f"no {model} caller on vt (no C compiler or Python headers here? KDISTILL_NO_KERNEL set?)")
    benchmark.group = "vt batch    1"
    benchmark.extra_info.update(batch=1, domain="unimal:vt", blas_threads=single_thread,
                                torch_threads=torch.get_num_threads())
    with torch.inference_mode():
        benchmark(fn)


def test_generate_one_robots_weights(benchmark, subjects, single_thread):
    """Hypernetwork on the robot's context, then the fold into a dense MLP: paid once per robot."""
    tokens = torch.as_tensor(subjects.context.tokens, dtype=torch.float32)[None]
    mask = torch.as_tensor(subjects.context.mask)[None]

    def generate():
        with torch.inference_mode():
            return subjects.student.fold(subjects.student.generate(tokens, mask), mask[0])

    benchmark.group = "one-off"
    layers = benchmark(generate)
    assert [tuple(w.shape) for w, _ in layers] == [(204, 256), (256, 256), (256, 24)]
