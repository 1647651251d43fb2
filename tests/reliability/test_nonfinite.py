"""NaN and infinity are stopped where data enters (expert shards, checkpoints, exports) and where training runs;
JSON output is always strict JSON."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save, save_file

from conftest import assert_one_line_error
from kdistill.deploy import runtime
from kdistill.errors import DataError
from kdistill.io import latest_checkpoint, load_run_checkpoint, read_json, read_jsonl


def strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def rewrite_export(stem, change) -> None:
    """Apply ``change(arrays, meta)`` to an export and re-sign it, as a tampered but self-consistent file."""
    weights, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    arrays = {k: v.copy() for k, v in load_file(str(weights)).items()}
    meta = json.loads(meta_path.read_text())
    change(arrays, meta)
    blob = save(arrays)
    weights.write_bytes(blob)
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    meta_path.write_text(json.dumps(meta))


def rewrite_checkpoint(ckpt, change) -> None:
    tensors = {k: v.copy() for k, v in load_file(str(ckpt / "weights.safetensors")).items()}
    change(tensors)
    blob = save(tensors)
    (ckpt / "weights.safetensors").write_bytes(blob)
    meta = read_json(ckpt / "meta.json")
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_nan_rows_in_an_expert_shard_stop_distillation_before_it_starts(cli, pipeline, copy_of, tmp_path):
    data = copy_of(pipeline["expert"])
    shard = sorted((data / "shards").iterdir())[0]
    arrays = load_file(str(shard))
    arrays["obs"][5, 0, 0] = np.nan
    save_file(arrays, str(shard))
    out = tmp_path / "student"
    res = cli("distill", "cartpole", "--data", data, "--out", out, "--epochs", "1", "--batch", "64", "--json")
    line = assert_one_line_error(res, shard.name, "NaN", "'obs'", as_json=True)
    assert "first row 5" in line
    assert latest_checkpoint(out) is None


def test_a_checkpoint_with_nan_weights_is_refused(cli, pipeline, copy_of, tmp_path):
    run = copy_of(pipeline["student"])
    ckpt = latest_checkpoint(run)
    rewrite_checkpoint(ckpt, lambda t: t[next(k for k in t if k.startswith("model."))].fill(np.nan))
    res = cli("export", "cartpole", "--student", ckpt, "--task", "train-00", "--out", tmp_path / "e", "--json")
    assert_one_line_error(res, "weights.safetensors", "NaN", as_json=True)
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("what", ["nan weight", "inf bias", "nan mean", "mean of another shape"])
def test_runtime_refuses_non_finite_or_misshapen_exports(pipeline, copy_of, what):
    stem = copy_of(pipeline["export"].with_suffix(".json")).with_suffix("")
    stem.with_suffix(".safetensors").write_bytes(pipeline["export"].with_suffix(".safetensors").read_bytes())
    runtime.load(stem)  # the untouched copy loads

    def change(arrays, meta):
        if what == "nan weight":
            arrays["layer0.weight"][0, 0] = np.nan
        elif what == "inf bias":
            arrays["layer1.bias"][0] = np.inf
        elif what == "nan mean":
            arrays["norm.mean"][0] = np.nan
        else:
            arrays["norm.mean"] = np.zeros(3 * arrays["norm.mean"].size)

    rewrite_export(stem, change)
    with pytest.raises(DataError, match="export"):
        runtime.load(stem)


def test_distillation_stops_at_a_non_finite_loss_and_keeps_the_last_good_checkpoint(cli, pipeline, copy_of,
                                                                                    monkeypatch):
    import kdistill.distill.training as distill_mod

    run = copy_of(pipeline["student"])
    real = distill_mod.loss_function
    calls = {"n": 0}

    def failing_loss(name):
        fn = real(name)

        def loss(mu, batch):
            calls["n"] += 1
            value = fn(mu, batch)
            return value * float("nan") if calls["n"] > 2 else value  # epoch 3 is fine, epoch 4 diverges

        return loss

    monkeypatch.setattr(distill_mod, "loss_function", failing_loss)
    res = cli("distill", "cartpole", "--data", pipeline["expert"], "--out", run, "--resume", "--epochs", "5",
              "--threads", "1")
    assert_one_line_error(res, "diverged in epoch 4", "loss is nan", "last good checkpoint")
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "ckpt-000000000003"
    tensors, meta = load_run_checkpoint(run, as_torch=False)
    assert all(np.isfinite(v).all() for v in tensors.values())
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_ppo_stops_when_the_model_diverges_and_keeps_the_last_good_checkpoint(cli, pipeline, copy_of, monkeypatch):
    import torch

    import kdistill.rl.trainer as ppo_mod

    run = copy_of(pipeline["teacher"])  # one iteration done (4096 steps)
    real = ppo_mod.ppo_update

    def diverging(model, *args, **kwargs):
        stats = real(model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(ppo_mod, "ppo_update", diverging)
    good = latest_checkpoint(run)
    res = cli("teacher", "train", "cartpole", "--out", run, "--resume", "--steps", "12288", "--threads", "1")
    assert_one_line_error(res, "diverged at iteration 2", "last good checkpoint", good.name)
    assert latest_checkpoint(run) == good
    tensors, _ = load_run_checkpoint(run, as_torch=False)
    assert all(np.isfinite(v).all() for v in tensors.values() if v.dtype.kind == "f")


def test_json_output_is_strict(capsys):
    from kdistill.cli.options import print_json

    print_json({"loss": float("nan"), "rows": [1.0, float("inf"), -float("inf")], "arr": np.array([np.nan, 2.0])})
    doc = strict_loads(capsys.readouterr().out)
    assert doc == {"loss": None, "rows": [1.0, None, None], "arr": [None, 2.0]}


def test_files_never_hold_nan(tmp_path):
    from kdistill.io import append_jsonl, atomic_write_json

    with pytest.raises(DataError, match="NaN"):
        atomic_write_json(tmp_path / "x.json", {"mean_return": float("nan")})
    assert not (tmp_path / "x.json").exists()
    append_jsonl(tmp_path / "m.jsonl", {"loss": float("inf")})
    assert strict_loads((tmp_path / "m.jsonl").read_text()) == {"loss": None}
