"""A resume continues exactly the run it resumes: its own settings, and never rows of another teacher or seed."""

from __future__ import annotations

import json

from conftest import assert_one_line_error
from kdistill.io import latest_checkpoint, read_json, read_jsonl


def collect(cli, teacher, out, *extra):
    return cli("expert", "collect", "cartpole", "--teacher", teacher, "--samples-per-task", "16", "--envs", "2",
               "--out", out, "--json", *extra)


def test_expert_resume_with_another_seed_is_refused(cli, pipeline, tmp_path):
    out = tmp_path / "expert"
    assert collect(cli, pipeline["teacher"], out, "--num-tasks", "1").code == 0
    before = (out / "meta.json").read_text()
    assert json.loads(before)["seed"] == 0
    res = collect(cli, pipeline["teacher"], out, "--num-tasks", "2", "--seed", "1")
    assert_one_line_error(res, str(out), "--seed", as_json=True)
    assert (out / "meta.json").read_text() == before
    assert len(list((out / "shards").iterdir())) == 1
    # the same seed resumes
    res = collect(cli, pipeline["teacher"], out, "--num-tasks", "2")
    assert res.code == 0 and res.json()["collected"] == ["train-01"] and res.json()["skipped"] == ["train-00"]


def test_expert_resume_after_the_teacher_gained_a_checkpoint_is_refused(cli, pipeline, copy_of, tmp_path):
    teacher = copy_of(pipeline["teacher"])
    out = tmp_path / "expert"
    assert collect(cli, teacher, out, "--num-tasks", "1").code == 0
    pinned = read_json(out / "meta.json")["teacher_sha256"]
    assert pinned == read_json(latest_checkpoint(teacher) / "meta.json")["weights_sha256"]
    res = cli("teacher", "train", "cartpole", "--out", teacher, "--resume", "--steps", "8192", "--threads", "1", "--json")
    assert res.code == 0, res.err
    assert read_json(latest_checkpoint(teacher) / "meta.json")["weights_sha256"] != pinned
    before = (out / "meta.json").read_text()
    res = collect(cli, teacher, out, "--num-tasks", "2")
    assert_one_line_error(res, str(out), "another teacher checkpoint", as_json=True)
    assert (out / "meta.json").read_text() == before
    assert len(list((out / "shards").iterdir())) == 1


def test_distill_resume_takes_the_runs_own_settings(cli, pipeline, copy_of):
    run = copy_of(pipeline["student"])  # demo preset, 2 epochs, batch 64, small student
    args = ("distill", "cartpole", "--data", pipeline["expert"], "--out", run, "--resume", "--threads", "1", "--json")
    res = cli(*args)
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["epochs"] == 2 and doc["resumed_from_epoch"] == 2 and doc["distill"]["batch_size"] == 64
    res = cli(*args, "--epochs", "3")
    assert res.code == 0, res.err
    assert res.json()["epochs"] == 3 and res.json()["resumed_from_epoch"] == 2
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    meta = read_json(latest_checkpoint(run) / "meta.json")
    assert meta["counters"]["epoch"] == 3 and meta["distill"]["batch_size"] == 64
    # a setting that changes what is learnt is still refused
    res = cli(*args, "--batch", "128")
    assert_one_line_error(res, str(run), "batch_size", as_json=True)


def test_teacher_resume_takes_the_runs_own_settings(cli, pipeline, copy_of):
    run = copy_of(pipeline["teacher"])  # 2 tasks, 4096 steps
    res = cli("teacher", "train", "cartpole", "--out", run, "--resume", "--threads", "1", "--json")
    assert res.code == 0, res.err
    assert res.json()["tasks"] == 2 and res.json()["env_steps"] == 4096
