"""ONNX export (``kdistill export --format onnx``): the model onnxruntime runs matches the student within 1e-5."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill_toy import ToyTokenDomain, teacher_normalizer
from kdistill.deploy import runtime
from kdistill.deploy.export import ONNX_FORMAT, export_onnx, export_policy, onnx_path, onnx_session, random_student_observations
from kdistill.distill.expert_data import slice_normalizer_state
from kdistill.errors import KdistillError
from student_run import write_student_run
from test_export import make_policy, rollout_obs

ROOT = Path(__file__).resolve().parents[1]
TOY_PLUGIN = Path(__file__).with_name("distill_toy.py")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name,config", [("hnmlp", {"hidden": 32, "embed": 16, "layers": 3}), ("mlp", {"hidden": 32})])
def test_onnx_matches_the_student_and_the_numpy_runtime(tmp_path, name, config):
    import onnx

    domain = ToyTokenDomain()
    policy = make_policy(name, domain.layout,
                         slice_normalizer_state(teacher_normalizer().state(), domain.layout.student_features), config)
    for k, task in enumerate(domain.tasks("all")[:4]):
        ctx = domain.context(task)
        info = export_onnx(policy, task, ctx, tmp_path / task, check_obs=random_student_observations(policy, 64, seed=k))
        assert info["check"]["max_abs_diff"] <= 1e-5 and info["files"] == [str(tmp_path / f"{task}.onnx")]
        model = onnx.load(str(tmp_path / f"{task}.onnx"))
        onnx.checker.check_model(model)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["format"] == ONNX_FORMAT and props["task"] == task
        assert json.loads(props["act_mask"]) == np.asarray(ctx.act_mask, bool).tolist()
        # real env observations (not only the random ones of the check), batch and single row
        obs = rollout_obs(domain.make_env(task), 30, seed=k)
        export_policy(policy, task, ctx, tmp_path / f"{task}-np")
        exported = runtime.load(tmp_path / f"{task}-np")
        flat = exported.flat_observation(obs).astype(np.float32)
        session = onnx_session((tmp_path / f"{task}.onnx").read_bytes())
        got = session.run(["mu"], {"obs": flat})[0]
        policy.prepare(task, ctx)
        np.testing.assert_allclose(got, policy.act(obs), atol=1e-5, rtol=0)
        np.testing.assert_allclose(got, exported.act(flat), atol=1e-5, rtol=0)
        np.testing.assert_allclose(session.run(["mu"], {"obs": flat[:1]})[0], got[:1], atol=1e-6, rtol=0)


def test_onnx_of_a_paper_sized_unimal_student(tmp_path, unimal_dir):
    """The paper-sized HN-MLP on UNIMAL robots of 4 to 11 limbs: onnxruntime within 1e-5 of the student."""
    from kdistill.plugins import get_domain
    from kdistill.rl.normalise import ObsNormalizer

    domain = get_domain("unimal", data_dir=str(unimal_dir))
    layout = domain.layout
    rng = np.random.default_rng(0)
    norm = ObsNormalizer((layout.max_tokens, layout.obs_features))
    norm.rms.mean = rng.normal(0, 0.5, norm.shape)
    norm.rms.var = rng.uniform(0.2, 4, norm.shape)
    policy = make_policy("hnmlp", layout, slice_normalizer_state(norm.state(), layout.student_features), None, scale=0.01)
    for i, task in enumerate(["floor-5506-3-10-01-14-19-06", "floor-1409-0-12-01-12-30-07", "vt-5506-1-16-02-19-08-46"]):
        ctx = domain.context(task)
        info = export_onnx(policy, task, ctx, tmp_path / "robot", check_obs=random_student_observations(policy, 256, i))
        assert info["check"]["max_abs_diff"] <= 1e-5
        assert info["num_params"] == 204 * 256 + 256 + 256 * 256 + 256 + 256 * 24 + 24
        env = domain.make_env(task)
        obs = rollout_obs(env, 20, seed=i)
        env.close()
        flat = obs["obs"][..., list(layout.student_features)].reshape(len(obs["obs"]), -1).astype(np.float32)
        got = onnx_session((tmp_path / "robot.onnx").read_bytes()).run(["mu"], {"obs": flat})[0]
        policy.prepare(task, ctx)
        want = policy.act(obs)
        assert 0.05 < np.abs(want).max() < 5
        assert float(np.max(np.abs(got - want))) < 1e-5


def test_onnx_path_and_refusals(tmp_path):
    assert onnx_path(tmp_path / "a") == tmp_path / "a.onnx"
    assert onnx_path(tmp_path / "a.json") == tmp_path / "a.onnx"
    assert onnx_path(tmp_path / "a.onnx") == tmp_path / "a.onnx"
    from kdistill.deploy.export import check_onnx_target

    (tmp_path / "mine.onnx").write_text("not a model")
    with pytest.raises(KdistillError, match="not a kdistill ONNX export"):
        check_onnx_target(tmp_path / "mine")


def kdistill(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdistill.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_export_onnx(tmp_path):
    domain = ToyTokenDomain()
    write_student_run(tmp_path / "hn", domain.layout, domain.name, preset="small")
    env = {**os.environ, "KDISTILL_PLUGINS": str(TOY_PLUGIN), "OMP_NUM_THREADS": "1"}
    r = kdistill("export", "toytokens", "--student", str(tmp_path / "hn"), "--robot", "toy-test-1", "--format", "onnx",
                 "--out", str(tmp_path / "exp" / "robot"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == ONNX_FORMAT and info["task"] == "toy-test-1"
    check = info["check"]
    assert (check["samples"], check["tolerance"], check["runtime"]) == (256, 1e-5, "onnxruntime")
    assert 0 <= check["max_abs_diff"] <= 1e-5
    assert (tmp_path / "exp" / "robot.onnx").is_file() and not (tmp_path / "exp" / "robot.json").exists()
    # the file itself, not only the command's own check: it acts as the student on the robot's real observations
    from kdistill.loading import load_policy

    student = load_policy(tmp_path / "hn", domain=domain)
    student.prepare("toy-test-1", domain.context("toy-test-1"))
    obs = rollout_obs(domain.make_env("toy-test-1"), 30, seed=1)
    export_policy(student, "toy-test-1", domain.context("toy-test-1"), tmp_path / "np")
    flat = runtime.load(tmp_path / "np").flat_observation(obs).astype(np.float32)
    got = onnx_session((tmp_path / "exp" / "robot.onnx").read_bytes()).run(["mu"], {"obs": flat})[0]
    np.testing.assert_allclose(got, student.act(obs), atol=1e-5, rtol=0)
    # its own export may be written over; a foreign file is refused in one line, exit 2
    from kdistill.deploy.export import check_onnx_target

    assert check_onnx_target(tmp_path / "exp" / "robot.onnx") == tmp_path / "exp" / "robot.onnx"
    (tmp_path / "other.onnx").write_bytes(b"\0junk")
    r = kdistill("export", "toytokens", "--student", str(tmp_path / "hn"), "--robot", "toy-test-1", "--format", "onnx",
                 "--out", str(tmp_path / "other"), env=env)
    assert r.returncode == 2 and "not a kdistill ONNX export" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "other.onnx").read_bytes() == b"\0junk"
