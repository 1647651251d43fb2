"""The processes executor (a pool of worker processes on this machine): the same expert data, DAgger rounds and
evaluations as the local executor for the same seeds; a worker that dies stops the work with one clear error, and
running it again finishes it with nothing lost."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from executor_checks import PLUGINS, SETTINGS, same_folders, train_toy_teacher
from kdistill.distill.expert_data import CollectSettings, collect_expert_data, read_expert_meta
from kdistill.distill.training import DistillConfig
from kdistill.errors import KdistillError
from kdistill.evaluate import evaluate_policy
from kdistill.executors import ProcessExecutor, get_executor
from kdistill.loading import load_policy
from kdistill.plugins import get_domain, get_plugins, reset_plugins
from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, ExpertTrainer, export_experts

TINY = ExpertConfig.presets()["tiny"]


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Per-task experts of three cart-pole tasks (one tiny PPO update each), exported."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("experts")
    domain = get_domain("cartpole")
    tasks = domain.tasks("train")[:3]
    settings = ExpertRunSettings(domain="cartpole", tasks=tasks, preset="tiny", seed=0, steps_per_task=TINY.batch_size)
    ExpertTrainer(domain, settings, TINY, run_dir=root / "run").train()
    export_experts(root / "run", root / "experts")
    return tasks, root / "experts"


@pytest.fixture(scope="module")
def toy_plugins():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDISTILL_PLUGINS", PLUGINS)  # spawned workers inherit the environment, so they find these too
        reset_plugins()
        yield mp
    reset_plugins()


@pytest.fixture(scope="module")
def toy_teacher(toy_plugins, tmp_path_factory):
    return train_toy_teacher(tmp_path_factory.mktemp("teacher") / "run")


def test_processes_is_a_built_in_executor():
    assert get_plugins().executors.entry("processes").plugin == "core"
    with get_executor("processes", workers=3) as executor:
        assert isinstance(executor, ProcessExecutor) and not executor.in_process
        assert executor.describe() == {"executor": "processes", "workers": 3}
    with pytest.raises(KdistillError, match="runs on this machine"):
        get_executor("processes", workers=2, address="10.0.0.1:6379")


def test_expert_data_of_per_task_experts_on_two_worker_processes_equals_the_local_executor(experts, tmp_path):
    # experts have no normaliser of their own: the one fitted on their rollouts comes from the workers too
    tasks, path = experts
    domain = get_domain("cartpole")
    teacher = load_policy(path, domain="cartpole")
    collect = dict(settings=CollectSettings(samples_per_task=60, num_envs=3, seed=2), teacher_ref="experts")
    local = collect_expert_data(domain, teacher, None, tasks, tmp_path / "local", **collect)
    with ProcessExecutor(workers=2) as executor:
        remote = collect_expert_data(domain, teacher, None, tasks, tmp_path / "pool", executor=executor, **collect)
    same_folders(tmp_path / "local", tmp_path / "pool")
    assert remote == {**local, "out": str(tmp_path / "pool")}
    assert len(remote["collected"]) == 3 and remote["samples"] == 180


def test_dagger_rounds_on_worker_processes_equal_the_local_executor(experts, tmp_path):
    from safetensors.numpy import load_file

    from kdistill.distill.dagger import DaggerSettings, run_dagger
    from kdistill.io import latest_checkpoint

    tasks, path = experts
    domain = get_domain("cartpole")
    teacher = load_policy(path, domain="cartpole")
    data = tmp_path / "data"
    collect_expert_data(domain, teacher, None, tasks, data, CollectSettings(samples_per_task=200, num_envs=4, seed=1),
                        teacher_ref=str(path))
    settings = DaggerSettings(rounds=1, beta=0.5, samples_per_task=100, num_envs=4, epochs=1, seed=0)
    config = DistillConfig(epochs=1, batch_size=128, checkpoint_every=1)
    local = run_dagger(domain, teacher, str(path), data, "mlp", None, config, tmp_path / "local", settings)
    with ProcessExecutor(workers=2) as executor:
        remote = run_dagger(domain, teacher, str(path), data, "mlp", None, config, tmp_path / "pool", settings,
                            executor=executor)
    assert [r["train_rows"] for r in remote["rounds"]] == [r["train_rows"] for r in local["rounds"]] == [600, 900]
    assert [r["train_loss"] for r in remote["rounds"]] == [r["train_loss"] for r in local["rounds"]]
    meta = read_expert_meta(tmp_path / "pool" / "data-1")
    assert meta["actor"] == str((tmp_path / "pool" / "round-0").resolve()) and meta["beta"] == 0.5
    for task in tasks:  # the states the student visited, labelled by the experts: the same rows
        shard = meta["tasks"][task]["shard"]
        assert (tmp_path / "local" / "data-1" / shard).read_bytes() == (tmp_path / "pool" / "data-1" / shard).read_bytes()
    a, b = (load_file(str(latest_checkpoint(tmp_path / run) / "weights.safetensors")) for run in ("local", "pool"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_evaluation_on_two_worker_processes_equals_the_local_executor(toy_teacher):
    domain = get_domain("toy")
    tasks = domain.tasks("all")
    local = evaluate_policy(domain, load_policy(toy_teacher, seed=3), tasks, episodes=3, seed=5, deterministic=False)
    with ProcessExecutor(workers=2) as executor:
        remote = evaluate_policy(domain, load_policy(toy_teacher, seed=3), tasks, episodes=3, seed=5,
                                 deterministic=False, executor=executor)
    assert remote == local


def test_a_worker_that_dies_stops_collection_with_one_clear_error_and_a_rerun_finishes_it(toy_teacher, tmp_path,
                                                                                          monkeypatch):
    domain = get_domain("fragile")
    teacher = load_policy(toy_teacher)
    tasks = domain.tasks("all")
    args = (domain, teacher, teacher.meta["normalizer"], tasks)
    collect_expert_data(*args, tmp_path / "local", SETTINGS, teacher_ref="toy")
    marker = tmp_path / "killed"
    monkeypatch.setenv("KDISTILL_TEST_KILL_MARKER", str(marker))  # the first worker to step 10 times kills itself
    with ProcessExecutor(workers=2) as executor, pytest.raises(KdistillError, match="worker process .* died"):
        collect_expert_data(*args, tmp_path / "pool", SETTINGS, teacher_ref="toy", executor=executor)
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    kept = json.loads((tmp_path / "pool" / "meta.json").read_text())["tasks"] if (tmp_path / "pool" / "meta.json").exists() else {}
    with ProcessExecutor(workers=2) as executor:  # the marker exists: no worker dies now
        summary = collect_expert_data(*args, tmp_path / "pool", SETTINGS, teacher_ref="toy", executor=executor)
    assert sorted(summary["collected"]) == sorted(t for t in tasks if t not in kept)
    same_folders(tmp_path / "local", tmp_path / "pool")


def test_distill_takes_the_executor_options_for_dagger_only(experts, tmp_path, monkeypatch, capsys):
    from test_teacher import _cli

    tasks, path = experts
    data = tmp_path / "data"
    collect_expert_data(get_domain("cartpole"), load_policy(path, domain="cartpole"), None, tasks, data,
                        CollectSettings(samples_per_task=64, num_envs=2, seed=0), teacher_ref=str(path))
    base = ["distill", "cartpole", "--data", str(data), "--student", "mlp", "--epochs", "1", "--batch", "64", "--json"]
    code, out, err = _cli([*base, "--out", str(tmp_path / "plain"), "--executor", "processes", "--workers", "2"],
                          monkeypatch, capsys)
    assert code == 2 and "with --dagger only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "plain").exists()
    code, out, err = _cli([*base, "--out", str(tmp_path / "dagger"), "--dagger", "1", "--dagger-samples", "32",
                           "--dagger-epochs", "1", "--teacher", str(path), "--executor", "processes", "--workers", "2"],
                          monkeypatch, capsys)
    assert code == 0, err
    assert [r["train_rows"] for r in json.loads(out)["rounds"]] == [192, 192 + 3 * 32]
    # a DAgger run resumes from its own pinned settings, --resume or not (its newest checkpoint is a round's, trained
    # with --dagger-epochs, not the preset's --epochs)
    dagger = ["distill", "cartpole", "--data", str(data), "--student", "mlp", "--batch", "64", "--json", "--out",
              str(tmp_path / "d2"), "--dagger", "1", "--dagger-samples", "32", "--dagger-epochs", "1", "--teacher", str(path)]
    code, out, err = _cli(dagger, monkeypatch, capsys)
    assert code == 0, err
    code, again, err = _cli([*dagger, "--resume"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(again)["rounds"] == json.loads(out)["rounds"]


def test_a_job_error_is_raised_here_and_leaving_on_an_error_stops_the_workers_at_once():
    import time

    with ProcessExecutor(workers=1) as executor, pytest.raises(ValueError, match="invalid literal"):
        list(executor.imap_unordered(int, ["12", "not a number"]))
    with pytest.raises(RuntimeError, match="stop"):
        with ProcessExecutor(workers=2) as executor:
            results = executor.imap_unordered(time.sleep, [0.0, 600.0])
            assert next(results) == (0, None)
            workers = list(executor._pool._processes.values())
            raise RuntimeError("stop")  # the second job still sleeps: it is not waited for
    assert workers and not any(process.is_alive() for process in workers)
