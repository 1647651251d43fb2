"""Teacher against generated students: parameters, FLOPs and single-thread latency, for any domain.

``build_subjects`` gathers what is compared: the teacher's actor (from a teacher run, or freshly built from
the domain's default teacher at its ``paper`` preset), the student (from a student run, or a fresh ``hnmlp``
at ``paper``) and the student's MLP for one task, folded and exported. ``run_bench`` then times, per batch
size, every way of running them:

* ``teacher``        the teacher's actor, torch inference mode, fused MHA fast path on (its fastest standard
                     runtime); it reads normalised observations;
* ``hnmlp-per-token`` the HN-MLP as the reference runs it: per-token generated weights stored for every row,
                     einsum (only for students whose weights are per token, e.g. ``hnmlp``);
* ``student-batched`` the student's ``forward_with`` (kdistill's grouped-bmm path, the one training uses);
* ``dense-torch``    the task's folded MLP as ``torch.nn.Linear`` layers;
* ``numpy-runtime``  the exported MLP in ``kdistill.deploy.runtime`` on numpy (normalises raw observations itself);
* ``compiled-runtime`` the same export through the runtime's compiled batch-1 kernel (``kdistill.deploy.kernel``;
                     batch 1 only, and only where a C compiler is available), called the way ``act()`` calls it
                     here: the extension module, or ctypes without Python headers (``environment.compiled_runtime``);
* ``compiled-ctypes`` the same kernel forced through ctypes, the extension's fallback (only when the extension ran);
* ``onnxruntime``    the ONNX export (``kdistill export --format onnx``) in onnxruntime, on the torch thread count
                     (only when onnx and onnxruntime are installed);

and the one-off cost of writing one task's weights (``generate``: hypernetwork + fold). Costs are counted two
ways (``kdistill.bench.flops``). Ratios are teacher / fastest student, all measured in the same run: on a shared
machine compare ratios, not absolute times. Latency is the best per-call time over the rounds (``min_s``;
the median is kept too), as ``timeit`` advises: noise only ever adds time. The machine's single-thread matmul
peak (a 1024^3 float32 GEMM, same run) gives each student's FLOP limit: its FLOPs per step at that peak, and
``vs_limit_b<batch>`` is the fastest student's latency as a multiple of it. At batch 1 no weight is reused, so the
weights must stream from cache once per call: where the compiled kernel runs, the bytes it reads per observation
(``kernel_read_bytes``) at the core's measured read bandwidth for a buffer that size (``read_bytes_per_s``) give
``student_read_limit_s``, and ``vs_read_limit_b1`` the fastest batch-1 student as a multiple of it.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import numpy as np
import torch
from torch import nn

from kdistill.bench import flops as F
from kdistill.deploy import runtime
from kdistill.deploy.export import export_policy, extero_layers, fold_policy, load_student_run, onnx_model_bytes, onnx_session
from kdistill.deploy.kernel import read_bandwidth
from kdistill.distill.students import StudentPolicy, build_student, per_row_forward
from kdistill.domain import Domain, Layout, TaskContext
from kdistill.errors import KdistillError
from kdistill.loading import load_policy
from kdistill.plots import pyplot, save_figure
from kdistill.policy import TeacherPolicy
from kdistill.rl.normalise import ObsNormalizer
from kdistill.teachers.lookup import find_teacher_spec, teacher_preset

TEACHER = "teacher"
STUDENT_ROWS = ("hnmlp-per-token", "student-batched", "dense-torch", "numpy-runtime", "compiled-runtime", "compiled-ctypes",
                "onnxruntime")


def _positive_ints(value) -> tuple[int, ...]:
    out = tuple(int(v) for v in value)
    if not out or any(v <= 0 for v in out):
        raise ValueError(f"batches must be positive integers, got {value}")
    return out


_positive = attrs.validators.gt(0)


@attrs.frozen
class BenchConfig:
    """How long and how often each (model, batch size) is timed."""

    batches: tuple[int, ...] = attrs.field(default=(1, 32, 1024), converter=_positive_ints)
    threads: int = attrs.field(default=1, validator=_positive)
    rounds: int = attrs.field(default=7, validator=_positive)  # timing rounds; the best is reported
    round_time: float = attrs.field(default=0.1, validator=_positive)  # seconds of calls per round
    max_time: float = attrs.field(default=12.0, validator=_positive)  # cap per (model, batch); at least 3 rounds
    generate_rounds: int = attrs.field(default=5, validator=_positive)
    seed: int = 0

    @classmethod
    def presets(cls) -> dict[str, "BenchConfig"]:
        return {
            "default": cls(),
            # seconds, not minutes: smoke tests and CI
            "quick": cls(batches=(1, 8), rounds=3, round_time=0.005, max_time=1.0, generate_rounds=1),
            # steadier figures on a busy machine
            "thorough": cls(rounds=15, round_time=0.25, max_time=40.0, generate_rounds=15),
        }


# -------------------------------------------------------------------------------------------------
# threads

@contextmanager
def limit_threads(threads: int) -> Iterator[str]:
    """Run torch and numpy's BLAS on ``threads`` threads; yields how BLAS was limited.

    BLAS threads are set with ``threadpoolctl`` when it is installed; without it only the environment
    (``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` set before numpy is imported) can limit them.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with ExitStack() as stack:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
                how = ("environment " + ", ".join(f"{k}={v}" for k, v in env.items())) if env else \
                    "not limited (install threadpoolctl or set OPENBLAS_NUM_THREADS before starting)"
            else:
                stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
                how = f"threadpoolctl ({threads})"
            yield how
    finally:
        torch.set_num_threads(before)


# -------------------------------------------------------------------------------------------------
# what is compared

@attrs.define
class Subjects:
    """The teacher, the student and one task's exported MLP, ready to time and count."""

    domain: str
    layout: Layout
    task: str
    context: TaskContext
    teacher: nn.Module
    teacher_arch: str
    teacher_source: str
    student: nn.Module
    student_arch: str
    student_source: str
    policy: Any  # kdistill.distill.students.StudentPolicy
    layers: list[tuple[np.ndarray, np.ndarray]]  # the task's folded MLP
    runtime: Any  # kdistill.deploy.runtime.ExportedPolicy
    extero: list[tuple[np.ndarray, np.ndarray]] = attrs.Factory(list)  # the student's exteroception encoder, if any

    def describe(self) -> dict[str, Any]:
        return {"domain": self.domain, "task": self.task, **({"extero_encoder": [int(self.extero[0][0].shape[0])]
                                                                + [int(w.shape[1]) for w, _ in self.extero]}
                                                               if self.extero else {}),
                "teacher": {"arch": self.teacher_arch, "source": self.teacher_source},
                "student": {"arch": self.student_arch, "source": self.student_source},
                "generated_mlp": [int(self.layers[0][0].shape[0])] + [int(w.shape[1]) for w, _ in self.layers]}


def _fresh_teacher(domain: Domain, arch: str | None, preset: str) -> tuple[nn.Module, str, str]:
    arch, spec = find_teacher_spec(domain, arch)
    name = teacher_preset(spec, preset)
    return spec.build(domain.layout, spec.config_cls.presets()[name]), arch, f"fresh {arch} ({name} preset)"


def build_subjects(domain: Domain, teacher_run: str | None = None, student_run: str | None = None,
                   task: str | None = None, teacher_arch: str | None = None, teacher_preset: str = "paper",
                   student_arch: str = "hnmlp", student_preset: str = "paper", seed: int = 0,
                   export_dir: str | Path | None = None) -> Subjects:
    """Load (or freshly build, seeded) the teacher and student of ``domain`` and export the student's MLP for
    ``task`` (default: the first training task). ``export_dir`` keeps the export (else a temporary folder)."""

    layout = domain.layout
    splits = domain.splits()
    task = domain.tasks(names=[task])[0] if task else (splits.get("train") or domain.tasks("all"))[0]
    context = domain.context(task)
    torch.manual_seed(seed)
    if teacher_run:
        loaded = load_policy(teacher_run, domain=domain)
        if not isinstance(loaded, TeacherPolicy):
            raise KdistillError(f"{teacher_run} holds a {loaded.kind!r} policy; --teacher takes a run from `kdistill teacher train`.")
        teacher, arch, source = loaded.model, str(loaded.meta.get("arch")), str(teacher_run)
    else:
        teacher, arch, source = _fresh_teacher(domain, teacher_arch, teacher_preset)
    teacher.eval()
    if student_run:
        policy = load_student_run(student_run, domain)
        student_source = str(student_run)
    else:
        student = build_student(student_arch, layout, preset=student_preset)
        norm = ObsNormalizer((layout.max_tokens, layout.student_token_features))
        norm.training = False
        policy = StudentPolicy(student, norm, {"domain": domain.name, "arch": student_arch})
        student_source = f"fresh {student_arch} ({student_preset} preset)"
    policy.student.eval()
    layers = fold_policy(policy, context)
    with ExitStack() as stack:
        folder = Path(export_dir) if export_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        export_policy(policy, task, context, folder / "student", source=student_source, domain=domain)
        exported = runtime.load(folder / "student")
    return Subjects(domain.name, layout, task, context, teacher, arch, source, policy.student,
                    str(policy.meta.get("arch", policy.student.name)), student_source, policy, layers, exported,
                    extero_layers(policy))


# -------------------------------------------------------------------------------------------------
# inputs and the ways of running them

def _teacher_obs(s: Subjects, batch: int, rng: np.random.Generator, all_real: bool = False) -> dict[str, torch.Tensor]:
    layout = s.layout
    mask = np.zeros(layout.max_tokens, bool) if all_real else np.asarray(s.context.mask, bool)
    act_mask = np.zeros(layout.num_actions, bool) if all_real else np.asarray(s.context.act_mask, bool)
    tokens = np.asarray(s.context.tokens, np.float32)
    obs = {
        "obs": torch.from_numpy(rng.standard_normal((batch, layout.max_tokens, layout.obs_features), np.float32)),
        "obs_mask": torch.from_numpy(np.repeat(mask[None], batch, axis=0)),
        "act_mask": torch.from_numpy(np.repeat(act_mask[None], batch, axis=0)),
        "context": torch.from_numpy(np.repeat(tokens[None], batch, axis=0)),
    }
    if layout.extero_features:
        obs["extero"] = torch.from_numpy(rng.standard_normal((batch, layout.extero_features), np.float32))
    return obs


def teacher_actor(model: nn.Module) -> Callable[[dict], torch.Tensor]:
    """The teacher's mean-action path: ``mu(obs)`` when it has one, else the first output of ``forward``."""
    mu = getattr(model, "mu", None)
    return mu if callable(mu) else (lambda obs: model(obs)[0])


def _generated(s: Subjects) -> dict:
    tokens = torch.from_numpy(np.asarray(s.context.tokens, np.float32))[None]
    mask = torch.from_numpy(np.asarray(s.context.mask, bool))[None]
    with torch.no_grad():
        return s.student.generate(tokens, mask)


def _per_row(params: dict, batch: int) -> dict:
    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.expand(batch, *t.shape[1:]).contiguous()  # stored per row, as the reference's generate_params does

    out = {"w_in": rows(params["w_in"]), "b_in": rows(params["b_in"]),
           "hidden": [(rows(w), rows(b)) for w, b in params["hidden"]],
           "w_out": rows(params["w_out"]), "b_out": rows(params["b_out"])}
    if "w_ext" in params:
        out["w_ext"], out["b_ext"] = rows(params["w_ext"]), rows(params["b_ext"])
    return out


def dense_torch(layers: list[tuple[np.ndarray, np.ndarray]], relu_last: bool = False) -> nn.Sequential:
    """The folded MLP as ``torch.nn.Linear`` layers with ReLU between them (and after the last with ``relu_last``)."""
    mods: list[nn.Module] = []
    for i, (w, b) in enumerate(layers):
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if i < len(layers) - 1 or relu_last:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


class DenseWithExtero(nn.Module):
    """The exported two-input policy in torch: the exteroception encoder, its output after the flat observation,
    then the folded MLP (``forward(flat, extero)``)."""

    def __init__(self, layers, extero):
        super().__init__()
        self.encoder, self.mlp = dense_torch(extero, relu_last=True), dense_torch(layers)

    def forward(self, flat: torch.Tensor, extero: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([flat, self.encoder(extero)], dim=1))


def dense_student(s: "Subjects") -> nn.Module:
    """The folded student as a torch module: ``module(flat)``, or ``module(flat, extero)`` with exteroception."""
    return DenseWithExtero(s.layers, s.extero).eval() if s.extero else dense_torch(s.layers)


def _has_per_token_weights(params: dict) -> bool:
    return all(k in params for k in ("w_in", "b_in", "hidden", "w_out", "b_out"))


def make_callers(s: Subjects, batch: int, seed: int = 0) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables, one per way of running a policy step on ``batch`` rows (inputs prebuilt)."""
    rng = np.random.default_rng(seed)
    layout = s.layout
    T, S = layout.max_tokens, layout.student_token_features
    obs = _teacher_obs(s, batch, rng)
    actor = teacher_actor(s.teacher)
    callers: dict[str, Callable[[], Any]] = {TEACHER: lambda: actor(obs)}

    x = torch.from_numpy(rng.standard_normal((batch, T, S), np.float32))
    mask = obs["obs_mask"]
    ext = obs.get("extero")  # the student reads the same exteroception as the teacher
    extra = {"extero": ext} if ext is not None else {}
    params = _generated(s)
    if _has_per_token_weights(params):
        rows = _per_row(params, batch)
        real = (~mask).to(torch.float32)
        n_real = real.sum(-1, keepdim=True).clamp(min=1.0)
        encoder = getattr(s.student, "extero_encoder", None)
        if ext is None:
            callers["hnmlp-per-token"] = lambda: per_row_forward(rows, x, real, n_real)
        elif encoder is not None and "w_ext" in rows:
            callers["hnmlp-per-token"] = lambda: per_row_forward(rows, x, real, n_real, encoder(ext))
    index = torch.zeros(batch, dtype=torch.long)
    callers["student-batched"] = lambda: s.student.forward_with(params, x, mask, index, **extra)
    dense = dense_student(s)
    flat = x.reshape(batch, T * S)
    callers["dense-torch"] = (lambda: dense(flat, ext)) if ext is not None else (lambda: dense(flat))
    mean, var = s.runtime.mean, s.runtime.std ** 2
    raw = (mean + np.sqrt(var) * rng.standard_normal((batch, T * S))).astype(np.float32)
    out = np.empty((batch, s.runtime.output_size), np.float32)
    on_numpy = _numpy_only(s.runtime)
    ext_np = ext.numpy() if ext is not None else None
    if ext_np is not None:
        callers["numpy-runtime"] = lambda: on_numpy.act(raw, ext_np, out=out)
    else:
        callers["numpy-runtime"] = lambda: on_numpy.act(raw, out=out)
    if batch == 1 and compiled_path(s.runtime) != "numpy":
        row, one = raw[0].copy(), np.empty(s.runtime.output_size, np.float32)
        ways = {"compiled-runtime": s.runtime}
        if s.runtime.kernel_path == "extension":
            ways["compiled-ctypes"] = _ctypes_only(s.runtime)
        ext_row = ext_np[0].copy() if ext_np is not None else None
        for name, policy in ways.items():
            if ext_row is not None:
                callers[name] = lambda policy=policy: policy.act(row, ext_row, out=one)
            else:
                callers[name] = lambda policy=policy: policy.act(row, out=one)
    session = _onnx_session(s)
    if session is not None:
        feed = {"obs": raw, **({"extero": ext_np} if ext_np is not None else {})}
        callers["onnxruntime"] = lambda: session.run(None, feed)
    return callers


def _numpy_only(exported):
    """A copy of an exported policy that never takes the compiled path."""
    import copy

    clone = copy.copy(exported)
    clone._plans = {}
    clone.use_kernel = False
    return clone


def _ctypes_only(exported):
    """A copy of an exported policy whose single observations run the compiled kernel through ctypes."""
    import copy

    clone = copy.copy(exported)
    clone._fast = None
    return clone


def compiled_path(exported) -> str:
    """How ``exported`` runs one observation once its kernel is prepared: ``extension``, ``ctypes`` or ``numpy``."""
    if exported.use_kernel and exported._kernel is None:
        exported._prepare_kernel()
    return exported.kernel_path


def kernel_read_bytes(s: Subjects, rows: int = 64, seed: int = 0) -> float:
    """Mean bytes of weights and biases the compiled kernel reads per observation, over ``rows`` raw observations
    drawn as the timed ones are (which rows it skips depends on the input)."""
    rt = s.runtime
    rng = np.random.default_rng(seed)
    raw = (rt.mean + rt.std * rng.standard_normal((rows, rt.input_size))).astype(np.float32)
    ext = rng.standard_normal((rows, rt.extero_size)).astype(np.float32) if rt.extero else [None] * rows
    return float(np.mean([rt._kernel.bytes_read(x, e) for x, e in zip(raw, ext)]))


def gemm_peak_flops(size: int = 1024, rounds: int = 5) -> float:
    """FLOP/s of a ``size``^3 float32 matmul on the current BLAS threads (best of ``rounds``)."""
    a = np.random.default_rng(0).standard_normal((size, size), np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        np.matmul(a, a, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _onnx_session(s: Subjects):
    """An onnxruntime session on the task's ONNX export (torch's thread count), or None without onnx/onnxruntime."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None

    norm = s.policy.normalizer
    model = onnx_model_bytes(s.layers, np.asarray(norm.rms.mean), np.asarray(norm.rms.var), norm.clip, norm.epsilon,
                             extero=s.extero)
    return onnx_session(model, threads=torch.get_num_threads())


# -------------------------------------------------------------------------------------------------
# timing

def time_call(fn: Callable[[], Any], rounds: int = 7, round_time: float = 0.1,
              max_time: float | None = 12.0) -> dict[str, Any]:
    """Seconds per call of ``fn``: best (``min_s``) and median over ``rounds`` rounds of ``number`` calls each.

    ``number`` is chosen so a round lasts about ``round_time``; fewer rounds (at least 3) are run when
    ``rounds`` would take longer than ``max_time`` (None: no cap). Two warm-up calls come first.
    """
    fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-9)
    number = max(1, int(round_time / one))
    if max_time is not None:
        rounds = max(min(rounds, int(max_time / (one * number))), 3)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return {"min_s": min(times), "median_s": statistics.median(times), "rounds": rounds, "number": number}


def time_generation(s: Subjects, rounds: int = 5) -> dict[str, Any]:
    """The one-off cost of one task's weights: hypernetwork forward on its context, then the fold."""
    tokens = torch.from_numpy(np.asarray(s.context.tokens, np.float32))[None]
    mask = torch.from_numpy(np.asarray(s.context.mask, bool))[None]

    def generate():
        with torch.inference_mode():
            return s.student.fold(s.student.generate(tokens, mask), mask[0])

    return time_call(generate, rounds=rounds, round_time=0.0, max_time=None)


# -------------------------------------------------------------------------------------------------
# counting

def count_costs(s: Subjects) -> dict[str, Any]:
    """Parameters and per-sample FLOPs of the teacher's actor and of the generated MLP, both conventions.

    Counted at every token slot real (the reference counts every padded token slot).
    """
    rng = np.random.default_rng(0)
    batch = 2
    obs = _teacher_obs(s, batch, rng, all_real=True)
    actor = teacher_actor(s.teacher)
    net = getattr(s.teacher, "actor", s.teacher)
    T = s.layout.max_tokens
    teacher: dict[str, Any] = {
        "measured": {"flops": F.measured_flops(lambda: actor(obs), batch), "params": F.parameter_count(net)},
    }
    sizes = F.token_transformer_sizes(net)
    if sizes is not None:
        args = {k: v for k, v in sizes.items() if k != "style"}
        styles = {style: F.token_transformer_cost(T, **args, style=style).to_dict() for style in F.STYLES}
        teacher["analytic"] = {**styles[sizes["style"]], "style": sizes["style"]}
        teacher["analytic_styles"] = styles
    else:
        teacher["analytic"] = {**F.analytic_cost(lambda: actor(obs), s.teacher, batch).to_dict(), "style": "linear layers"}

    dense = dense_student(s)
    if s.extero:  # the encoder runs at every step too: counted in both conventions
        flat = torch.zeros(batch, s.runtime.input_size)
        ext = torch.zeros(batch, s.layout.extero_features)
        call = lambda: dense(flat, ext)  # noqa: E731
    else:
        flat = torch.zeros(batch, s.layers[0][0].shape[0])
        call = lambda: dense(flat)  # noqa: E731
    student = {
        "measured": {"flops": F.measured_flops(call, batch), "params": F.parameter_count(dense)},
        "analytic": (F.dense_cost(s.layers) + F.dense_cost(s.extero)).to_dict(),
    }
    # what the other ways of running the student execute, for reference (FlopCounterMode, per sample)
    callers = make_callers(s, batch)
    per_row = {name: F.measured_flops(callers[name], batch)
               for name in ("hnmlp-per-token", "student-batched") if name in callers}
    return {"teacher": teacher, "generated_mlp": student, "student_paths_measured_flops": per_row,
            "conventions": {"measured": F.MEASURED, "analytic": F.ANALYTIC}}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else float(a) / float(b)


def run_bench(s: Subjects, config: BenchConfig | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Count and time everything (see the module docstring); returns the JSON-able result."""
    config = config or BenchConfig()
    result: dict[str, Any] = {"subjects": s.describe(), "config": {**attrs.asdict(config), "batches": list(config.batches)}}
    total = 2 + len(config.batches)
    with limit_threads(config.threads) as blas:
        result["environment"] = {
            "torch_threads": torch.get_num_threads(), "blas_threads": blas, "torch": torch.__version__,
            "numpy": np.__version__, "machine": platform.machine(), "processor": _cpu_name(),
            "mha_fast_path": bool(torch.backends.mha.get_fastpath_enabled()), "statistic": "min_s (best round)",
        }
        result["environment"]["gemm_flops_per_s"] = gemm_peak_flops()
        result["environment"]["compiled_runtime"] = compiled_path(s.runtime)
        if s.runtime._kernel:
            nbytes = kernel_read_bytes(s, seed=config.seed)
            result["environment"]["kernel_read_bytes"] = nbytes
            result["environment"]["read_bytes_per_s"] = read_bandwidth(int(nbytes))
        if progress:
            progress("counting FLOPs and parameters", 0, total)
        result["costs"] = count_costs(s)
        latency: dict[str, dict[str, Any]] = {}
        for k, batch in enumerate(config.batches):
            if progress:
                progress(f"timing batch {batch}", 1 + k, total)
            callers = make_callers(s, batch, seed=config.seed)
            with torch.inference_mode():
                for name, fn in callers.items():
                    latency.setdefault(name, {})[str(batch)] = time_call(fn, config.rounds, config.round_time, config.max_time)
            del callers
        if progress:
            progress("timing weight generation", total - 1, total)
        result["generate"] = time_generation(s, config.generate_rounds)
    result["latency"] = latency
    result["ratios"] = _ratios(result, config.batches)
    if progress:
        progress("done", total, total)
    return result


def _ratios(result: dict[str, Any], batches) -> dict[str, Any]:
    costs = result["costs"]
    teacher, student = costs["teacher"], costs["generated_mlp"]
    ratios: dict[str, Any] = {
        "flops": _ratio(teacher["measured"]["flops"], student["measured"]["flops"]),
        "params": _ratio(teacher["measured"]["params"], student["measured"]["params"]),
        "flops_analytic": _ratio(teacher["analytic"]["flops"], student["analytic"]["flops"]),
        "params_analytic": _ratio(teacher["analytic"]["params"], student["analytic"]["params"]),
    }
    if "analytic_styles" in teacher:
        ratios["analytic_styles"] = {
            style: {"flops": _ratio(c["flops"], student["analytic"]["flops"]),
                    "params": _ratio(c["params"], student["analytic"]["params"])}
            for style, c in teacher["analytic_styles"].items()}
    fastest: dict[str, str] = {}
    for batch in batches:
        key = str(batch)
        students = {n: rows[key]["min_s"] for n, rows in result["latency"].items() if n != TEACHER and key in rows}
        best = min(students, key=students.get)
        fastest[key] = best
        ratios[f"latency_b{batch}"] = _ratio(result["latency"][TEACHER][key]["min_s"], students[best])
    ratios["fastest_student"] = fastest
    peak = result.get("environment", {}).get("gemm_flops_per_s")
    if peak:
        limit = student["measured"]["flops"] / peak
        ratios["student_flop_limit_s"] = limit
        for batch in batches:
            key = str(batch)
            best = result["latency"][fastest[key]][key]["min_s"]
            ratios[f"vs_limit_b{batch}"] = best / (limit * batch)
    bandwidth = result.get("environment", {}).get("read_bytes_per_s")
    if bandwidth and "1" in fastest:
        # batch 1 reuses no weight, so reading them from cache bounds it before the FLOPs do
        ratios["student_read_limit_s"] = result["environment"]["kernel_read_bytes"] / bandwidth
        ratios["vs_read_limit_b1"] = result["latency"][fastest["1"]]["1"]["min_s"] / ratios["student_read_limit_s"]
    ratios["definition"] = ("teacher / fastest student; flops, params: measured convention (generated MLP); "
                            "*_analytic: the reference's convention; latency: best per-call time, same run")
    return ratios


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -------------------------------------------------------------------------------------------------
# figure

def plot_latency(result: dict[str, Any], path: str | Path) -> None:
    """Per-call latency against batch size, log-log, one line per way of running a policy."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rows in result["latency"].items():
        batches = sorted(int(b) for b in rows)
        ax.plot(batches, [rows[str(b)]["min_s"] * 1e3 for b in batches], marker="o",
                lw=2.2 if name == TEACHER else 1.4, color="black" if name == TEACHER else None,
                label=f"{name} ({result['subjects']['teacher']['arch']})" if name == TEACHER else name)
    limit = result.get("ratios", {}).get("student_flop_limit_s")
    if limit:
        batches = sorted({int(b) for rows in result["latency"].values() for b in rows})
        ax.plot(batches, [limit * b * 1e3 for b in batches], ls="--", color="tab:red", lw=1.2,
                label="student FLOP limit (GEMM peak, 1 thread)")
    read = result.get("ratios", {}).get("student_read_limit_s")
    if read:
        ax.plot([1], [read * 1e3], marker="_", ms=14, mew=2, ls="none", color="tab:red",
                label="batch-1 read limit (weights read once at cache bandwidth)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size (observations per call)")
    ax.set_ylabel("latency per call (ms, best round)")
    sub = result["subjects"]
    ax.set_title(f"{sub['domain']}: teacher vs generated student, {result['environment']['torch_threads']} thread(s)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: inside it hides lines
    save_figure(fig, path)
