"""The pipeline on the terrain tasks (issue 14): DOMAIN as ``unimal:vt``, a tiny teacher, expert data with ``extero``
rows, an HN-MLP student with its exteroception encoder, evaluation, export with two inputs and its parity (numpy
runtime, compiled kernel, C); the
student encoder's cost against hand-computed numbers; a checkpoint of one kind of task refused by another."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ci import import_outside_ci_or_skip, skip_outside_ci
from kdistill.bench import flops as F
from kdistill.cli.app import app
from kdistill.deploy import runtime
from kdistill.deploy.export import extero_layers, fold_policy, load_student_run
from kdistill.distill.expert_data import load_expert_data
from kdistill.distill.students import build_student
from kdistill.domain import domain_label
from kdistill.errors import CheckpointError, DataError, KdistillError
from kdistill.loading import load_policy
from kdistill.plugins import get_domain, get_plugins
from kdistill.rl.ppo import PPOConfig
from kdistill.rl.trainer import PPOTrainer, RunSettings
from kdistill.teachers.transformer import TransformerTeacherConfig

SMALL = "floor-5506-3-10-01-14-19-06"
OTHER = "floor-1409-0-12-01-12-30-07"
E = 1410


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


def one_line_error(res) -> str:
    """The KdistillError a command raised in click's runner (``kdistill.cli.main`` prints it as one line, exit 2)."""
    assert isinstance(res.exception, KdistillError), res.output
    assert "\n" not in str(res.exception)
    return str(res.exception)


# the DOMAIN argument ------------------------------------------------------------------------------------------

def test_domain_argument_names_the_kind_of_task():
    vt = get_domain("unimal:vt")
    assert vt.task_kind == "vt" and vt.layout.extero_features == E and domain_label(vt) == "unimal:vt"
    flat = get_domain("unimal")
    assert flat.task_kind == "ft" and flat.layout.extero_features == 0 and domain_label(flat) == "unimal"
    assert get_domain("unimal", task_kind="obstacle").task_kind == "obstacle"  # env check's --kind KIND
    for bad, words in (("unimal:", "ends with ':'"), ("unimal:hills", "unknown kind"), ("cartpole:vt", "one kind")):
        with pytest.raises(KdistillError, match=words):
            get_domain(bad)
    with pytest.raises(KdistillError, match="two kinds"):
        get_domain("unimal:vt", task_kind="obstacle")


# the student's encoder and its cost ----------------------------------------------------------------------------

# MLP [1410, 64, 64]: 2 * (1410*64 + 64*64) FLOPs, (1410+1)*64 + (64+1)*64 parameters
ENCODER = (2 * (1410 * 64 + 64 * 64), 1411 * 64 + 65 * 64)


@pytest.mark.parametrize("arch,preset,flops,params", [
    # input layer (12*17 + 64) -> 256, one 256 x 256 hidden layer, 256 -> 12*2, and the encoder
    ("hnmlp", "paper", 2 * (268 * 256 + 256 * 256 + 256 * 24), 269 * 256 + 257 * 256 + 257 * 24),
    ("mlp", "paper", 2 * (268 * 256 + 256 * 256 + 256 * 24), 269 * 256 + 257 * 256 + 257 * 24),
    # two hidden layers: the reference FLOP script's student on vt/obstacle, 0.600 MFLOPs / 0.301 M parameters
    ("hnmlp", "paper-3layers", 2 * (268 * 256 + 2 * 256 * 256 + 256 * 24), 269 * 256 + 2 * 257 * 256 + 257 * 24),
])
def test_student_encoder_cost_by_hand(arch, preset, flops, params):
    from kdistill.bench.bench import DenseWithExtero
    from kdistill.distill.students import StudentPolicy
    from kdistill.rl.normalise import ObsNormalizer

    domain = get_domain("unimal:vt")
    layout = domain.layout
    torch.manual_seed(0)
    student = build_student(arch, layout, preset=preset)
    policy = StudentPolicy(student, ObsNormalizer((12, 17)), {"domain": "unimal", "arch": arch})
    ctx = _fake_context(layout)
    layers, encoder = fold_policy(policy, ctx), extero_layers(policy)
    assert [w.shape for w, _ in encoder] == [(E, 64), (64, 64)]
    assert layers[0][0].shape == (12 * 17 + 64, 256)
    analytic = F.dense_cost(layers) + F.dense_cost(encoder)
    assert (analytic.flops, analytic.params) == (flops + ENCODER[0], params + ENCODER[1])
    if preset == "paper-3layers":
        assert (analytic.flops, analytic.params) == (600_320, 301_080)
    dense = DenseWithExtero(layers, encoder)
    measured = F.measured_flops(lambda: dense(torch.zeros(2, 204), torch.zeros(2, E)), batch_size=2)
    assert (measured, F.parameter_count(dense)) == (analytic.flops, analytic.params)


def _fake_context(layout, real: int = 5):
    from kdistill.domain import TaskContext

    rng = np.random.default_rng(0)
    mask = np.arange(layout.max_tokens) >= real
    act_mask = np.repeat(mask, layout.actions_per_token)
    return TaskContext(rng.standard_normal((layout.max_tokens, layout.context_features)).astype(np.float32), mask, act_mask)


def test_flat_students_have_no_encoder():
    for arch in ("hnmlp", "mlp"):
        keys = build_student(arch, get_domain("unimal").layout).state_dict()
        assert not any("extero" in k for k in keys)


def test_bench_ratios_on_paper_presets(unimal_dir):
    from kdistill.bench.bench import build_subjects, count_costs

    s = build_subjects(get_domain("unimal:vt", data_dir=unimal_dir), task=SMALL)
    costs = count_costs(s)
    teacher, student = costs["teacher"], costs["generated_mlp"]
    assert student["measured"] == student["analytic"] == {"flops": 469_248, "params": 235_288}
    assert teacher["measured"]["flops"] / student["measured"]["flops"] >= 67
    assert teacher["measured"]["params"] / student["measured"]["params"] >= 6.6
    modumorph = teacher["analytic_styles"]["modumorph"]
    assert modumorph["flops"] / student["analytic"]["flops"] >= 67
    assert modumorph["params"] / student["analytic"]["params"] >= 6.6


def test_reference_presets_reproduce_the_papers_figures(unimal_dir):
    """ModuMorph teacher with the reference's vt decoder against the FLOP script's 3-layer student: 67.2x / 6.55x."""
    from kdistill.bench.bench import build_subjects, count_costs

    s = build_subjects(get_domain("unimal:vt", data_dir=unimal_dir), task=SMALL, teacher_arch="modumorph",
                       teacher_preset="paper-vt", student_preset="paper-3layers")
    costs = count_costs(s)
    assert costs["teacher"]["analytic"]["flops"] == 40_336_640 and costs["teacher"]["analytic"]["params"] == 1_973_176
    assert costs["generated_mlp"]["analytic"] == {"flops": 600_320, "params": 301_080}


# end to end ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(unimal_dir, tmp_path_factory):
    """A one-iteration vt teacher on two robots, its expert data, and an HN-MLP distilled from it (CLI)."""
    root = tmp_path_factory.mktemp("vt")
    domain = get_domain("unimal:vt", data_dir=unimal_dir)
    config = PPOConfig(num_envs=2, num_steps=16, epochs=1, minibatch_size=16, sampling_warmup_iterations=1)
    settings = RunSettings(domain="unimal", tasks=[SMALL, OTHER], teacher="metamorph", preset="test", seed=0,
                           total_steps=config.batch_size)
    trainer = PPOTrainer(domain, settings, get_plugins().teachers.get("metamorph"),
                         TransformerTeacherConfig(d_model=16, num_layers=1, num_heads=2, feedforward=32), config,
                         run_dir=root / "teacher")
    try:
        trainer.train()
        trainer.save()
    finally:
        trainer.close()
    common = ["--data-dir", unimal_dir]
    res = invoke("expert", "collect", "unimal:vt", "--teacher", root / "teacher", "--tasks", f"{SMALL},{OTHER}",
                 "--samples-per-task", 48, "--envs", 2, "--out", root / "data", "--json", *common)
    assert res.exit_code == 0, res.output
    res = invoke("distill", "unimal:vt", "--data", root / "data", "--student", "hnmlp", "--student-preset", "small",
                 "--epochs", 2, "--batch", 32, "--val-tasks", 0, "--out", root / "hnmlp", "--json")
    assert res.exit_code == 0, res.output
    res = invoke("distill", "unimal:vt", "--data", root / "data", "--student", "mlp", "--student-preset", "small",
                 "--epochs", 1, "--batch", 32, "--val-tasks", 0, "--out", root / "mlp", "--json")
    assert res.exit_code == 0, res.output
    return root, domain


def test_pipeline_records_the_kind_and_stores_extero(pipeline):
    root, domain = pipeline
    assert json.loads((root / "data" / "meta.json").read_text())["task_kind"] == "vt"
    data = load_expert_data(root / "data")
    assert data.extero.shape == (96, E) and np.isfinite(data.extero).all() and data.extero.std() > 0
    policy = load_student_run(root / "hnmlp", domain)
    assert policy.meta["task_kind"] == "vt" and policy.student.extero_encoder is not None
    teacher = load_policy(root / "teacher", domain=domain)
    assert teacher.meta["task_kind"] == "vt"


def test_runs_of_a_kind_resume_with_it(pipeline, unimal_dir):
    from kdistill.domain import check_task_kind
    from kdistill.io import load_run_checkpoint
    from kdistill.resume import saved_run_settings

    root, domain = pipeline
    assert saved_run_settings(root / "teacher", "unimal:vt", required=True)["tasks"] == [SMALL, OTHER]
    _, meta = load_run_checkpoint(root / "teacher", as_torch=False)
    check_task_kind(meta, domain, "run")
    with pytest.raises(CheckpointError, match="unimal:vt tasks, not unimal:obstacle"):
        check_task_kind(meta, get_domain("unimal:obstacle"), "run")
    res = invoke("expert", "collect", "unimal:vt", "--teacher", root / "teacher", "--tasks", f"{SMALL},{OTHER}",
                 "--samples-per-task", 48, "--envs", 2, "--out", root / "data", "--json", "--data-dir", unimal_dir)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["skipped"] == [SMALL, OTHER]


@pytest.mark.parametrize("student", ["hnmlp", "mlp"])
def test_eval_and_export_parity(pipeline, unimal_dir, tmp_path, student):
    root, domain = pipeline
    res = invoke("eval", "unimal:vt", "--policy", root / student, "--tasks", SMALL, "--episodes", 1, "--no-random",
                 "--json", "--data-dir", unimal_dir)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["domain"] == "unimal:vt" and np.isfinite(doc["summary"]["mean_return"])

    res = invoke("export", "unimal:vt", "--student", root / student, "--task", SMALL, "--out", tmp_path / "policy",
                 "--json", "--data-dir", unimal_dir)
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["extero"]["features"] == E and info["task_kind"] == "vt" and info["check"]["max_abs_diff"] < 1e-5
    exported = runtime.load(tmp_path / "policy")
    meta = json.loads((tmp_path / "policy.json").read_text())
    del meta["extero"]  # an export that lost its encoder's description is refused, not misread
    (tmp_path / "bad.json").write_text(json.dumps({**meta, "weights_file": "policy.safetensors"}))
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "policy.safetensors").read_bytes())
    with pytest.raises(DataError, match="the first layer takes 268"):
        runtime.load(tmp_path / "bad")
    # on real terrain observations: the student and the numpy runtime agree
    policy = load_student_run(root / student, domain)
    policy.prepare(SMALL, domain.context(SMALL))
    venv = domain.make_vec_env([SMALL], 2, seed=3)
    try:
        obs = venv.reset(seed=3)
        for _ in range(5):
            want = policy.act(obs)
            np.testing.assert_allclose(exported.act_obs(obs), want, atol=1e-5, rtol=0)
            obs = venv.step(want)[0]
    finally:
        venv.close()
    flat = exported.flat_observation(obs)
    with pytest.raises(Exception, match="reads exteroception"):
        exported.act(flat)
    # one observation at a time: the compiled kernel runs the encoder and the chain
    for row, ext, want in zip(flat, obs["extero"], policy.act(obs)):
        np.testing.assert_allclose(exported.act(row, ext), want, atol=1e-5, rtol=0)
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        skip_outside_ci("no C compiler for the C export")
    res = invoke("export", "unimal:vt", "--student", root / student, "--task", SMALL, "--out", tmp_path / "c" / "robot",
                 "--format", "c", "--check-samples", 16, "--json", "--data-dir", unimal_dir)
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["function"] == "policy_act_extero" and info["extero_size"] == E and 0 <= info["check"] <= 1e-5
    assert "policy_act_extero(const float *obs, const float *extero, float *action)" in (tmp_path / "c" / "robot.h").read_text()


def test_onnx_takes_both_inputs(pipeline, unimal_dir, tmp_path):
    import_outside_ci_or_skip("onnxruntime")
    root, _ = pipeline
    res = invoke("export", "unimal:vt", "--student", root / "hnmlp", "--task", SMALL, "--out", tmp_path / "p",
                 "--format", "onnx", "--json", "--data-dir", unimal_dir)
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["extero"] == {"name": "extero", "features": E} and info["check"]["max_abs_diff"] <= 1e-5


def test_another_kind_of_task_is_one_line(pipeline, unimal_dir):
    import subprocess
    import sys

    root, _ = pipeline
    proc = subprocess.run([sys.executable, "-m", "kdistill", "eval", "unimal", "--policy", str(root / "hnmlp"), "--tasks",
                           SMALL, "--episodes", "1", "--data-dir", str(unimal_dir)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unimal:vt" in lines[0] and "unimal:ft" in lines[0], proc.stderr
    res = invoke("expert", "collect", "unimal:obstacle", "--teacher", root / "teacher", "--tasks", SMALL, "--out",
                 root / "other", "--data-dir", unimal_dir)
    assert "unimal:obstacle" in one_line_error(res)
    res = invoke("distill", "unimal", "--data", root / "data", "--out", root / "flat-student")
    assert "unimal:vt" in one_line_error(res)
    res = invoke("export", "unimal:obstacle", "--student", root / "hnmlp", "--task", SMALL, "--out", root / "x",
                 "--data-dir", unimal_dir)
    one_line_error(res)


def test_experts_read_the_height_map(unimal_dir, tmp_path):
    from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, ExpertTrainer

    domain = get_domain("unimal:vt", data_dir=unimal_dir)
    config = ExpertConfig(envs_per_task=2, num_steps=16, epochs=1, minibatch_size=16, eval_every=10**6,
                          eval_episodes=1, min_steps=0, patience=0, hidden=(8,))
    settings = ExpertRunSettings(domain="unimal", tasks=[SMALL], preset="test", seed=0, steps_per_task=10**6,
                                 checkpoint_every=1)
    trainer = ExpertTrainer(domain, settings, config, run_dir=tmp_path / "experts")
    try:
        assert trainer.in_features == 12 * 17 + E
        trainer.train(stop_after_updates=1)
        trainer.save()
    finally:
        trainer.close()
    experts = load_policy(tmp_path / "experts", domain=domain)
    assert experts.meta["task_kind"] == "vt"
    venv = domain.make_vec_env([SMALL], 2, seed=1)
    try:
        obs = venv.reset(seed=1)
    finally:
        venv.close()
    experts.prepare(SMALL)
    mu = experts.act(obs)
    lifted = experts.act({**obs, "extero": obs["extero"] + 1.0})
    assert np.isfinite(mu).all() and not np.allclose(mu, lifted)  # the actions depend on the terrain


def test_flat_checkpoints_load_unchanged_and_stay_flat(unimal_dir):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "domains" / "unimal" / "pretrained" / "teacher-cpu10"
    if not (shipped / "latest.json").exists():
        skip_outside_ci("no shipped teacher")
    teacher = load_policy(shipped, domain=get_domain("unimal", data_dir=unimal_dir))
    assert "task_kind" not in teacher.meta
    with pytest.raises(CheckpointError, match="unimal:ft tasks, not unimal:vt") as err:
        load_policy(shipped, domain=get_domain("unimal:vt", data_dir=unimal_dir))
    assert "\n" not in str(err.value)
