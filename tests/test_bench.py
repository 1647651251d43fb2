"""kdistill.bench.bench and `kdistill bench`: every way of running the student agrees, the figures and ratios hang
together, runs load from folders, any domain works. Timings are never asserted (see tests/benchmarks/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

from kdistill.bench import bench as B
from kdistill.deploy import kernel
from kdistill.deploy.export import fold_policy
from kdistill.errors import KdistillError
from kdistill.plugins import get_domain, get_plugins

ROOT = Path(__file__).resolve().parents[1]
QUICK = attrs.evolve(B.BenchConfig.presets()["quick"], batches=(1, 3))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cartpole():
    return get_domain("cartpole", config="small")


def test_time_call_counts_calls_and_orders_statistics():
    calls = []
    stats = B.time_call(lambda: calls.append(1), rounds=4, round_time=0.0, max_time=None)
    assert stats["number"] == 1 and stats["rounds"] == 4 and len(calls) == 2 + 4
    assert 0 <= stats["min_s"] <= stats["median_s"]
    # a cap smaller than one call still gives three rounds
    stats = B.time_call(lambda: sum(range(2000)), rounds=50, round_time=0.0, max_time=1e-9)
    assert stats["rounds"] == 3


def test_bench_config_presets_and_validation():
    presets = B.BenchConfig.presets()
    assert presets["default"].batches == (1, 32, 1024) and presets["default"].threads == 1
    with pytest.raises(ValueError):
        B.BenchConfig(batches=(1, 0))
    with pytest.raises(ValueError):
        B.BenchConfig(threads=0)


def test_every_student_path_computes_the_same_actions(unimal_dir):
    """Reference per-limb einsum, the batched path, the folded torch MLP and the numpy runtime agree with
    the student's own per-sample forward on a padded UNIMAL robot."""
    domain = get_domain("unimal", data_dir=str(unimal_dir))
    task = "vt-5506-1-16-02-19-08-46"
    s = B.build_subjects(domain, task=task, seed=0)
    with torch.no_grad():
        for name, p in s.student.named_parameters():
            if name.endswith("_gen.weight"):
                p.normal_(0, 0.01)
    s = attrs.evolve(s, layers=fold_policy(s.policy, s.context))
    assert s.context.mask.any()  # the robot has padded limb slots
    batch, T, S = 4, s.layout.max_tokens, s.layout.student_token_features
    x = torch.randn(batch, T, S)
    mask = torch.from_numpy(np.repeat(np.asarray(s.context.mask)[None], batch, 0))
    context = torch.from_numpy(np.repeat(np.asarray(s.context.tokens, np.float32)[None], batch, 0))
    with torch.no_grad():
        want = s.student.forward(x, context, mask)
        params = B._generated(s)
        real = (~mask).float()
        per_token = B.per_row_forward(B._per_row(params, batch), x, real, real.sum(-1, keepdim=True))
        batched = s.student.forward_with(params, x, mask, torch.zeros(batch, dtype=torch.long))
        dense = B.dense_torch(s.layers)(x.reshape(batch, T * S))
    assert want.abs().max() > 0.05
    for got in (per_token, batched, dense):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_bench_result_on_cartpole_hangs_together(cartpole, tmp_path):
    s = B.build_subjects(cartpole, seed=3)
    assert s.teacher_arch == "context-mlp" and "default preset" in s.teacher_source  # no 'paper' preset: fallback
    result = B.run_bench(s, QUICK)
    costs, ratios = result["costs"], result["ratios"]
    layout = cartpole.layout
    # the fresh hnmlp at its paper preset: (T*S -> 256 -> 256 -> T*A), counted independently
    inp, out = layout.max_tokens * layout.student_token_features, layout.num_actions
    mlp_params = (inp + 1) * 256 + 257 * 256 + 257 * out
    mlp_flops = 2 * (inp * 256 + 256 * 256 + 256 * out)
    assert costs["generated_mlp"]["analytic"] == {"flops": mlp_flops, "params": mlp_params}
    assert costs["generated_mlp"]["measured"] == {"flops": mlp_flops, "params": mlp_params}
    teacher = costs["teacher"]
    assert teacher["measured"]["params"] == sum(p.numel() for p in s.teacher.actor.parameters())
    assert teacher["analytic"]["style"] == "linear layers"
    assert ratios["flops"] == pytest.approx(teacher["measured"]["flops"] / mlp_flops)
    assert ratios["params_analytic"] == pytest.approx(teacher["analytic"]["params"] / mlp_params)
    lat = result["latency"]
    path = result["environment"]["compiled_runtime"]
    assert path == ("numpy" if not shutil.which("cc") else "extension" if kernel._include_dirs() else "ctypes")
    compiled = {"extension": {"compiled-runtime", "compiled-ctypes"}, "ctypes": {"compiled-runtime"}}.get(path, set())
    assert set(lat) == {"teacher", "hnmlp-per-token", "student-batched", "dense-torch", "numpy-runtime",
                        "onnxruntime"} | compiled
    assert all(set(lat[name]) == {"1"} for name in compiled)  # the compiled path is for one row only
    if compiled:  # the kernel reads biases and the weight rows of non-zero inputs, at most every padded row
        padded = sum(4 * -(-w.shape[1] // kernel.ALIGN) * kernel.ALIGN * (w.shape[0] + 1) for w, _ in s.layers)
        env = result["environment"]
        assert 0 < env["kernel_read_bytes"] <= padded and 0 < env["read_bytes_per_s"] < float("inf")
        assert ratios["vs_read_limit_b1"] == pytest.approx(
            lat[ratios["fastest_student"]["1"]]["1"]["min_s"] * env["read_bytes_per_s"] / env["kernel_read_bytes"])
    peak = result["environment"]["gemm_flops_per_s"]
    assert 0 < peak < float("inf") and ratios["student_flop_limit_s"] == pytest.approx(mlp_flops / peak)
    for b in QUICK.batches:
        students = {n: rows[str(b)]["min_s"] for n, rows in lat.items() if n != "teacher" and str(b) in rows}
        assert ratios[f"vs_limit_b{b}"] == pytest.approx(min(students.values()) / (mlp_flops / peak * b))
        fastest = min(students, key=students.get)
        assert ratios["fastest_student"][str(b)] == fastest
        assert ratios[f"latency_b{b}"] == pytest.approx(lat["teacher"][str(b)]["min_s"] / students[fastest])
    assert result["generate"]["min_s"] > 0
    assert result["environment"]["torch_threads"] == 1
    assert torch.get_num_threads() == 1  # restored to the fixture's setting
    B.plot_latency(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(result)  # JSON-able as is


def test_fresh_models_are_seeded(cartpole):
    a, b = B.build_subjects(cartpole, seed=5), B.build_subjects(cartpole, seed=5)
    c = B.build_subjects(cartpole, seed=6)
    wa, wb, wc = (next(s.teacher.parameters()).detach() for s in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_bench_loads_teacher_and_student_runs(cartpole, tmp_path):
    from kdistill.distill.students import build_student, student_tensors
    from kdistill.io import save_run_checkpoint
    from kdistill.rl.normalise import ObsNormalizer

    layout = cartpole.layout
    spec = get_plugins().teachers.get("context-mlp")
    config = spec.config_cls.presets()["small"]
    torch.manual_seed(0)
    teacher = spec.build(layout, config)
    norm = ObsNormalizer((layout.max_tokens, layout.obs_features))
    save_run_checkpoint(tmp_path / "teacher", 0, {f"model.{k}": v for k, v in teacher.state_dict().items()},
                        {"kind": "teacher", "domain": "cartpole", "arch": "context-mlp", "config": config.to_dict(),
                         "layout": layout.to_dict(), "normalizer": norm.state(), "counters": {"env_steps": 0}})
    student = build_student("mlp", layout, preset="small")
    snorm = ObsNormalizer((layout.max_tokens, layout.student_token_features))
    save_run_checkpoint(tmp_path / "student", 1, student_tensors(student),
                        {"kind": "student", "domain": "cartpole", "arch": "mlp", "config": attrs.asdict(student.config),
                         "layout": layout.to_dict(), "normalizer": snorm.state(), "counters": {"epoch": 1, "step": 1}})
    s = B.build_subjects(cartpole, teacher_run=str(tmp_path / "teacher"), student_run=str(tmp_path / "student"),
                         task="test-01")
    assert (s.teacher_arch, s.student_arch, s.task) == ("context-mlp", "mlp", "test-01")
    assert torch.equal(next(s.teacher.parameters()), next(teacher.parameters()))
    costs = B.count_costs(s)
    assert costs["teacher"]["measured"]["params"] == sum(p.numel() for p in teacher.actor.parameters())
    inp = layout.max_tokens * layout.student_token_features
    assert costs["generated_mlp"]["analytic"]["params"] == (inp + 1) * 64 + 65 * 64 + 65 * layout.num_actions
    assert "hnmlp-per-token" not in B.make_callers(s, 2)  # the plain MLP has no per-token weights
    with pytest.raises(KdistillError, match="student"):
        B.build_subjects(cartpole, teacher_run=str(tmp_path / "student"))
    with pytest.raises(KdistillError):
        B.build_subjects(cartpole, teacher_arch="context-mlp", teacher_preset="huge")


def test_parse_batches():
    from kdistill.cli.bench import parse_batches

    assert parse_batches("1, 32,1024,32") == (1, 32, 1024)
    for bad in ("", "0", "a,2", "1,-3"):
        with pytest.raises(KdistillError, match="--batches"):
            parse_batches(bad)


def kdistill(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdistill.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_json_table_and_errors(tmp_path):
    r = kdistill("bench", "cartpole", "--preset", "quick", "--batches", "1,2", "--json", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # one JSON document, nothing else
    for key in ("flops", "params", "latency_b1", "latency_b2", "flops_analytic", "params_analytic"):
        assert result["ratios"][key] > 0
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["ratios"]["flops"] == result["ratios"]["flops"]
    assert (tmp_path / "b" / "bench.png").exists()
    r = kdistill("bench", "cartpole", "--preset", "quick", "--batches", "2", "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr
    assert "ratio" in r.stdout and "numpy-runtime" in r.stdout
    r = kdistill("bench", "cartpole", "--batches", "0", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--batches" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = kdistill("bench", "cartpole", "--task", "nope", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_unimal_paper_ratios(unimal_dir, tmp_path):
    env_dir = str(unimal_dir)
    r = kdistill("bench", "unimal", "--data-dir", env_dir, "--preset", "quick", "--batches", "1", "--json",
                 "--out", str(tmp_path / "u"))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    ratios = result["ratios"]
    # the paper's efficiency, both conventions: FLOPs >= 160x, parameters >= 13x
    assert ratios["flops"] >= 160 and ratios["params"] >= 13
    assert ratios["analytic_styles"]["modumorph"]["flops"] >= 160 and ratios["analytic_styles"]["modumorph"]["params"] >= 13
    assert ratios["flops_analytic"] >= 160 and ratios["params_analytic"] >= 13
    assert result["costs"]["generated_mlp"]["analytic"] == {"flops": 247_808, "params": 124_440}
    assert result["subjects"]["generated_mlp"] == [204, 256, 256, 24]
