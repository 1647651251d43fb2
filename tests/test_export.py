"""Export and the numpy runtime: same actions as the student for every task; no torch at run time; the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_toy import ToyTokenDomain, teacher_normalizer
from kdistill.deploy import runtime
from kdistill.deploy.export import export_policy, fold_policy
from kdistill.distill.expert_data import slice_normalizer_state
from kdistill.distill.students import StudentPolicy, build_student
from kdistill.errors import DataError
from kdistill.rl.normalise import ObsNormalizer

ROOT = Path(__file__).resolve().parents[1]
TOY_PLUGIN = Path(__file__).with_name("distill_toy.py")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_policy(name: str, layout, normalizer_state: dict, config: dict, seed: int = 0, scale: float = 0.05) -> StudentPolicy:
    """A student whose generators are perturbed from their init, so every task gets its own MLP."""
    torch.manual_seed(seed)
    student = build_student(name, layout, config)
    with torch.no_grad():
        for pname, p in student.named_parameters():
            if pname.endswith("_gen.weight"):
                p.normal_(0, scale)
    return StudentPolicy(student, ObsNormalizer.from_state(normalizer_state), {"domain": "x", "arch": name})


def rollout_obs(env, steps: int, seed: int) -> dict[str, np.ndarray]:
    obs, _ = env.reset(seed=seed)
    seen = [obs]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        seen.append(obs)
        if terminated or truncated:
            obs, _ = env.reset(seed=seed + 1)
    return {k: np.stack([o[k] for o in seen]) for k in seen[0]}


@pytest.mark.parametrize("name,config", [("hnmlp", {"hidden": 32, "embed": 16, "layers": 3}), ("mlp", {"hidden": 32})])
def test_runtime_matches_the_student_on_every_toy_task(tmp_path, name, config):
    domain = ToyTokenDomain()
    norm_state = slice_normalizer_state(teacher_normalizer().state(), domain.layout.student_features)
    policy = make_policy(name, domain.layout, norm_state, config)
    outputs = []
    for task in domain.tasks("all"):
        ctx = domain.context(task)
        info = export_policy(policy, task, ctx, tmp_path / task)
        exported = runtime.load(tmp_path / f"{task}.json")
        assert exported.task == task and info["num_params"] == exported.num_params
        obs = rollout_obs(domain.make_env(task), 40, seed=len(outputs))
        policy.prepare(task, ctx)
        want = policy.act(obs)
        got = exported.act_obs(obs)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(exported.act(exported.flat_observation(obs)[0]), want[0], atol=1e-5, rtol=0)
        assert exported.valid_actions(got).shape == (len(got), int((~ctx.act_mask).sum()))
        outputs.append(got[0])
    assert not np.allclose(outputs[0], outputs[1])  # tasks really differ


def test_export_layout_and_sizes(tmp_path):
    domain = ToyTokenDomain()
    norm_state = slice_normalizer_state(teacher_normalizer().state(), domain.layout.student_features)
    policy = make_policy("hnmlp", domain.layout, norm_state, {"hidden": 8, "embed": 8})
    ctx = domain.context("toy-0")
    info = export_policy(policy, "toy-0", ctx, tmp_path / "e.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "e.safetensors"]
    meta = json.loads((tmp_path / "e.json").read_text())
    assert [(layer["in"], layer["out"], layer["activation"]) for layer in meta["layers"]] == [(9, 8, "relu"), (8, 8, "relu"), (8, 6, None)]
    assert meta["act_mask"] == ctx.act_mask.tolist() and meta["input"]["student_features"] == [0, 2, 3]
    assert info["num_params"] == 9 * 8 + 8 + 8 * 8 + 8 + 8 * 6 + 6 and info["flops"] == 2 * (9 * 8 + 8 * 8 + 8 * 6)
    layers = fold_policy(policy, ctx)
    padded_rows = np.repeat(ctx.mask, 3)
    assert np.count_nonzero(layers[0][0][padded_rows]) == 0
    exported = runtime.load(tmp_path / "e")
    out = np.empty((5, 6), np.float32)
    result = exported.act(np.zeros((5, 9), np.float32), out=out)
    assert result is out


def test_runtime_rejects_damaged_or_mismatched_files(tmp_path):
    domain = ToyTokenDomain()
    norm_state = slice_normalizer_state(teacher_normalizer().state(), domain.layout.student_features)
    policy = make_policy("mlp", domain.layout, norm_state, {"hidden": 8})
    export_policy(policy, "toy-1", domain.context("toy-1"), tmp_path / "e")
    exported = runtime.load(tmp_path / "e.json")
    with pytest.raises(DataError, match="flat observations of 9 values"):
        exported.act(np.zeros((2, 10), np.float32))
    blob = bytearray((tmp_path / "e.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "e.safetensors").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="does not match"):
        runtime.load(tmp_path / "e")
    with pytest.raises(DataError, match="does not exist"):
        runtime.load(tmp_path / "missing.json")


def test_runtime_runs_without_torch(tmp_path):
    domain = ToyTokenDomain()
    norm_state = slice_normalizer_state(teacher_normalizer().state(), domain.layout.student_features)
    policy = make_policy("hnmlp", domain.layout, norm_state, {"hidden": 8, "embed": 8})
    ctx = domain.context("toy-2")
    export_policy(policy, "toy-2", ctx, tmp_path / "e")
    flat = np.random.default_rng(0).normal(0, 1, (4, 9)).astype(np.float32)
    np.save(tmp_path / "x.npy", flat)
    code = (
        "import sys, numpy as np\n"
        "import kdistill.deploy.runtime as rt\n"
        f"p = rt.load({str(tmp_path / 'e.json')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, p.act(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "assert 'torch' not in sys.modules, 'runtime imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    obs = {"obs": np.zeros((4, 3, 5), np.float32)}
    obs["obs"][..., [0, 2, 3]] = flat.reshape(4, 3, 3)
    policy.prepare("toy-2", ctx)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), policy.act(obs), atol=1e-5, rtol=0)


def test_runtime_matches_the_paper_sized_student_on_every_unimal_robot(tmp_path, unimal_dir):
    from kdistill.plugins import get_domain

    domain = get_domain("unimal", data_dir=str(unimal_dir))
    layout = domain.layout
    rng = np.random.default_rng(0)
    teacher_norm = ObsNormalizer((layout.max_tokens, layout.obs_features))
    teacher_norm.rms.mean = rng.normal(0, 0.5, teacher_norm.shape)
    teacher_norm.rms.var = rng.uniform(0.2, 4, teacher_norm.shape)
    # generator noise of 0.01 gives every robot its own MLP with actions of order 1, as a trained student's
    policy = make_policy("hnmlp", layout, slice_normalizer_state(teacher_norm.state(), layout.student_features), None,
                         scale=0.01)
    tasks = domain.tasks("all")
    assert len(tasks) >= 190
    worst = 0.0
    for i, task in enumerate(tasks):
        ctx = domain.context(task)
        export_policy(policy, task, ctx, tmp_path / "robot")
        exported = runtime.load(tmp_path / "robot")
        assert exported.num_params == 204 * 256 + 256 + 256 * 256 + 256 + 256 * 24 + 24
        env = domain.make_env(task)
        obs = rollout_obs(env, 3, seed=i)
        env.close()
        policy.prepare(task, ctx)
        want = policy.act(obs)
        assert 0.05 < np.abs(want).max() < 5
        diff = float(np.max(np.abs(exported.act_obs(obs) - want)))
        assert diff < 1e-5, f"{task}: runtime differs from the student by {diff:.2e}"
        worst = max(worst, diff)
    print(f"max |runtime - student| over {len(tasks)} UNIMAL robots: {worst:.2e}")


# -------------------------------------------------------------------------------------------------
# the command line, end to end on the toy domain

def kdistill(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdistill.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_collect_distill_export_compare(tmp_path):
    from distill_toy import write_teacher_run

    write_teacher_run(tmp_path / "teacher")
    env = {**os.environ, "KDISTILL_PLUGINS": str(TOY_PLUGIN), "OMP_NUM_THREADS": "1"}
    r = kdistill("expert", "collect", "toytokens", "--teacher", str(tmp_path / "teacher"), "--split", "all",
                 "--samples-per-robot", "300", "--envs", "3", "--out", str(tmp_path / "data"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    collected = json.loads(r.stdout)
    assert len(collected["collected"]) == 8 and collected["samples"] == 8 * 300

    r = kdistill("distill", "toytokens", "--data", str(tmp_path / "data"), "--student", "hnmlp", "--student-preset", "small",
                 "--epochs", "2", "--batch", "512", "--val-tasks", "2", "--out", str(tmp_path / "hn"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 2 * 4 and len(summary["val_tasks"]) == 2 and summary["train_loss"] > 0

    r = kdistill("export", "toytokens", "--student", str(tmp_path / "hn"), "--robot", "toy-test-1",
                 "--out", str(tmp_path / "exp" / "robot"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout)
    assert exported["task"] == "toy-test-1" and exported["check"]["max_abs_diff"] < 1e-5
    assert runtime.load(tmp_path / "exp" / "robot").task == "toy-test-1"

    r = kdistill("compare", "toytokens", "--policies", f"teacher={tmp_path / 'teacher'},hnmlp={tmp_path / 'hn'}",
                 "--episodes", "2", "--num-tasks", "2", "--out", str(tmp_path / "cmp"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)
    assert set(table["returns"]) == {"train", "test"}
    assert set(table["returns"]["train"]) == {"teacher", "hnmlp", "random"}
    assert table["fraction_of_teacher"]["test"]["hnmlp"] == pytest.approx(
        table["returns"]["test"]["hnmlp"] / table["returns"]["test"]["teacher"])
    assert (tmp_path / "cmp" / "compare.png").exists()

    # bad input: one clear line, exit code 2
    r = kdistill("export", "toytokens", "--student", str(tmp_path / "teacher"), "--robot", "toy-1",
                 "--out", str(tmp_path / "x" / "sub" / "policy"), env=env)
    assert r.returncode == 2 and "teacher" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # the export's folders are made when it is written, not before the checks


def test_compare_policy_list_parsing():
    from kdistill.cli.options import parse_policies
    from kdistill.errors import KdistillError

    assert parse_policies("teacher=runs/t, hnmlp=runs/h") == {"teacher": "runs/t", "hnmlp": "runs/h"}
    for bad in ("teacher", "a=x,a=y", "random=x", ","):
        with pytest.raises(KdistillError):
            parse_policies(bad)
