"""Data-parallel distillation: ``torchrun --nproc-per-node 2 -m kdistill distill`` (gloo, CPU) trains the same model as
one process on the same data and seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from distill_toy import ToyTeacher, ToyTokenDomain
from kdistill.distill.expert_data import CollectSettings, collect_expert_data
from kdistill.io import load_run_checkpoint, read_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    domain, teacher = ToyTokenDomain(num_train=6, num_test=0), ToyTeacher()
    out = tmp_path_factory.mktemp("expert")
    # 3,600 rows: batches of 61 leave a last batch of one row, so one of the two ranks has nothing to add there
    collect_expert_data(domain, teacher, teacher.normalizer.state(), domain.tasks("train"), out,
                        CollectSettings(samples_per_task=600, num_envs=6), teacher_ref="toy")
    return out


def _distill(args: list[str], ranks: int) -> subprocess.CompletedProcess:
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launcher, "-m", "kdistill", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_two_gloo_ranks_train_the_same_model_as_one_process(data, tmp_path):
    args = ["distill", "toytokens", "--data", str(data), "--student", "hnmlp", "--student-preset", "small",
            "--epochs", "3", "--batch", "61", "--threads", "1", "--json"]
    one = _distill([*args, "--out", str(tmp_path / "one")], 1)
    assert one.returncode == 0, one.stderr
    two = _distill([*args, "--out", str(tmp_path / "two")], 2)
    assert two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # rank 0 alone prints: one JSON document
    assert b["ranks"] == 2 and a["steps"] == b["steps"] == 3 * 60
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    wa, meta_a = load_run_checkpoint(tmp_path / "one")
    wb, meta_b = load_run_checkpoint(tmp_path / "two")
    assert sorted(wa) == sorted(wb) and meta_a["counters"] == meta_b["counters"]
    for key in wa:  # the model and Adam's moments
        assert torch.allclose(wa[key].float(), wb[key].float(), rtol=1e-4, atol=1e-6), key
    assert [r["epoch"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl")] == [1, 2, 3]


def test_dagger_under_torchrun_is_refused(tmp_path, monkeypatch, capsys, data):
    from test_teacher import _cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, err = _cli(["distill", "toytokens", "--data", str(data), "--out", str(tmp_path / "d"), "--dagger", "1",
                           "--teacher", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "--dagger runs as one process" in err and out == ""
