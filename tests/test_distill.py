"""Distillation on toy expert data: learning, determinism, resumption, validation split and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from distill_toy import ToyTeacher, ToyTokenDomain
from kdistill.distill.expert_data import CollectSettings, collect_expert_data
from kdistill.distill.training import DistillConfig, distill, split_tasks, train_student
from kdistill.errors import CheckpointError, DataError, KdistillError
from kdistill.io import load_run_checkpoint, read_jsonl

SMALL_HN = {"hidden": 32, "embed": 16}
QUICK = DistillConfig(epochs=4, batch_size=256, checkpoint_every=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    domain, teacher = ToyTokenDomain(num_train=6, num_test=0), ToyTeacher()
    out = tmp_path_factory.mktemp("expert")
    collect_expert_data(domain, teacher, teacher.normalizer.state(), domain.tasks("train"), out,
                        CollectSettings(samples_per_task=600, num_envs=6), teacher_ref="toy")
    return out


def weights(run):
    tensors, meta = load_run_checkpoint(run)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}, meta


def test_hnmlp_learns_the_teacher_and_beats_the_plain_mlp(data):
    config = DistillConfig(epochs=12, batch_size=256)
    hn = distill(data, "hnmlp", SMALL_HN, config)
    mlp = distill(data, "mlp", {"hidden": 32}, config)
    first = distill(data, "hnmlp", SMALL_HN, DistillConfig(epochs=1, batch_size=256))
    assert hn["train_loss"] < 0.05 * first["train_loss"]
    # the teacher's action depends on the context, which only the HN-MLP sees
    assert hn["train_loss"] < 0.3 * mlp["train_loss"]


def test_same_seed_same_weights_and_other_seed_other_weights(data, tmp_path):
    distill(data, "hnmlp", SMALL_HN, QUICK, out=tmp_path / "a")
    distill(data, "hnmlp", SMALL_HN, QUICK, out=tmp_path / "b")
    distill(data, "hnmlp", SMALL_HN, DistillConfig(epochs=4, batch_size=256, checkpoint_every=2, seed=1), out=tmp_path / "c")
    a, b, c = weights(tmp_path / "a")[0], weights(tmp_path / "b")[0], weights(tmp_path / "c")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_exactly_like_an_uninterrupted_run(data, tmp_path):
    config = DistillConfig(epochs=4, batch_size=256, checkpoint_every=2, val_tasks=1)
    hn = {**SMALL_HN, "context_dropout": 0.1}  # dropout draws must resume too
    distill(data, "hnmlp", hn, config, out=tmp_path / "full")
    distill(data, "hnmlp", hn, DistillConfig(epochs=2, batch_size=256, checkpoint_every=2, val_tasks=1), out=tmp_path / "part")
    assert weights(tmp_path / "part")[1]["counters"]["epoch"] == 2
    resumed = distill(data, "hnmlp", hn, config, out=tmp_path / "part", resume=True)
    assert resumed["resumed_from_epoch"] == 2
    full_w, full_meta = weights(tmp_path / "full")
    part_w, part_meta = weights(tmp_path / "part")
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)
    rows = 5 * 600  # one of the six tasks is held out
    steps = 4 * math.ceil(rows / 256)
    assert full_meta["counters"] == part_meta["counters"] == {"epoch": 4, "step": steps, "samples": 4 * rows}
    losses = lambda run: [(r["epoch"], r["train_loss"], r["val_loss"]) for r in read_jsonl(run / "metrics.jsonl")]
    assert losses(tmp_path / "full") == losses(tmp_path / "part")
    # a finished run resumed again does nothing and reports its last epoch
    again = distill(data, "hnmlp", hn, config, out=tmp_path / "part", resume=True)
    assert again["steps"] == steps and again["train_loss"] == losses(tmp_path / "full")[-1][1]


def test_run_folder_holds_a_student_checkpoint_metrics_and_curve(data, tmp_path):
    from kdistill.loading import load_policy

    result = distill(data, "mlp", {"hidden": 16}, DistillConfig(epochs=3, batch_size=500, checkpoint_every=2, val_tasks=2),
                     out=tmp_path / "run")
    _, meta = weights(tmp_path / "run")
    assert meta["kind"] == "student" and meta["arch"] == "mlp" and meta["domain"] == "toytokens"
    assert meta["normalizer"]["shape"] == [3, 3] and len(meta["train_tasks"]) == 4
    assert set(meta["val_tasks"]).isdisjoint(meta["train_tasks"]) and result["val_tasks"] == meta["val_tasks"]
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3] and all(r["val_loss"] > 0 for r in records)
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_policy(tmp_path / "run").kind == "student"


def test_validation_split_is_deterministic_and_keeps_a_training_task():
    tasks = [f"t{i}" for i in range(10)]
    train, val = split_tasks(tasks, 3, seed=0)
    assert len(val) == 3 and sorted(train + val) == sorted(tasks)
    assert split_tasks(tasks, 3, seed=0) == (train, val)
    with pytest.raises(DataError, match="leaves no training task"):
        split_tasks(tasks, 10, seed=0)


def test_refuses_to_overwrite_or_resume_with_other_settings(data, tmp_path):
    distill(data, "hnmlp", SMALL_HN, DistillConfig(epochs=1, batch_size=1000), out=tmp_path / "run")
    with pytest.raises(KdistillError, match="--resume"):
        distill(data, "hnmlp", SMALL_HN, DistillConfig(epochs=2, batch_size=1000), out=tmp_path / "run")
    with pytest.raises(CheckpointError, match="lr"):
        distill(data, "hnmlp", SMALL_HN, DistillConfig(epochs=2, batch_size=1000, lr=0.1), out=tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="cannot stand for"):
        distill(data, "mlp", None, DistillConfig(epochs=2, batch_size=1000), out=tmp_path / "run", resume=True)
    with pytest.raises(DataError, match="not 'unimal'"):
        distill(data, "hnmlp", SMALL_HN, DistillConfig(epochs=1), domain="unimal")
    with pytest.raises(KdistillError, match="unknown student"):
        distill(data, "transformer-xl", None, DistillConfig(epochs=1))
    with pytest.raises(KdistillError, match="unknown loss"):
        distill(data, "mlp", None, DistillConfig(epochs=1, loss="huber"))


def test_logp_loss_trains_towards_the_mean_too(data):
    model, result = train_student(data, "hnmlp", SMALL_HN, DistillConfig(epochs=6, batch_size=256, loss="logp"))
    model = model.eval()
    from kdistill.distill.expert_data import load_expert_data
    from kdistill.distill.losses import mse_loss
    from kdistill.distill.training import TorchData, student_mu

    td = TorchData(load_expert_data(data))
    batch = td.batch(torch.arange(len(td)))
    with torch.no_grad():
        mse_after = mse_loss(student_mu(model, td, batch), batch).item()
    # predicting zero actions: the loss a student that learned nothing would have
    mse_zero = mse_loss(torch.zeros_like(batch["mu"]), batch).item()
    assert mse_after < 0.2 * mse_zero
    assert json.dumps({k: v for k, v in result.items() if k != "model"})  # the summary is JSON-able


def test_unreadable_data_leaves_no_run_folder_and_a_restart_drops_stale_metrics(data, tmp_path):
    """The run folder is made only once the data has been read; a run restarted before its first checkpoint logs
    its epochs once, not after the lines of the start that was cut short."""
    import shutil

    from kdistill.io import append_jsonl, claim_folder

    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    shard = broken / next(iter(json.loads((broken / "meta.json").read_text())["tasks"].values()))["shard"]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(KdistillError):
        distill(broken, "mlp", {"hidden": 16}, DistillConfig(epochs=1, batch_size=500), out=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    run = claim_folder(tmp_path / "cut", "student-run")
    append_jsonl(run / "metrics.jsonl", {"epoch": 1, "train_loss": 123.0})  # a start killed before its checkpoint
    distill(data, "mlp", {"hidden": 16}, DistillConfig(epochs=2, batch_size=500, checkpoint_every=2), out=run)
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and 123.0 not in [r["train_loss"] for r in records]


def test_resume_refuses_data_collected_again_under_the_same_path(tmp_path):
    import shutil

    domain, teacher = ToyTokenDomain(num_train=3, num_test=0), ToyTeacher()
    data = tmp_path / "data"

    def collect(seed: int) -> None:
        collect_expert_data(domain, teacher, teacher.normalizer.state(), domain.tasks("train"), data,
                            CollectSettings(samples_per_task=200, num_envs=4, seed=seed), teacher_ref="toy")

    collect(0)
    config = DistillConfig(epochs=2, batch_size=256, checkpoint_every=1, val_tasks=0)
    distill(data, "mlp", {"hidden": 16}, DistillConfig(epochs=1, batch_size=256, checkpoint_every=1, val_tasks=0),
            out=tmp_path / "run")
    assert distill(data, "mlp", {"hidden": 16}, config, out=tmp_path / "run", resume=True)["resumed_from_epoch"] == 1
    shutil.rmtree(data)
    collect(5)  # the same path, other rows
    with pytest.raises(CheckpointError, match="other rows"):
        distill(data, "mlp", {"hidden": 16}, DistillConfig(epochs=3, batch_size=256, checkpoint_every=1, val_tasks=0),
                out=tmp_path / "run", resume=True)
