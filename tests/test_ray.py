"""The Ray executor (kdistill_ray) on a local Ray cluster of 2 CPUs: the same evaluation, the same expert data and the
same PPO rollouts as the local executor for the same seeds, and a worker killed mid-task or mid-rollout is retried
with nothing lost or duplicated."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_ppo import make_trainer

# in CI the Ray tests must run (ray is in the dev extra), never skip
ray = importlib.import_module("ray") if os.environ.get("CI") else pytest.importorskip("ray")

from executor_checks import PLUGINS, SETTINGS, same_folders, train_toy_teacher  # noqa: E402
from kdistill.distill.expert_data import CollectSettings, collect_expert_data  # noqa: E402
from kdistill.evaluate import evaluate_policy  # noqa: E402
from kdistill.loading import load_policy  # noqa: E402
from kdistill.plugins import get_domain, get_plugins, reset_plugins  # noqa: E402
from kdistill_ray.executor import RayExecutor  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def toy_plugins():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDISTILL_PLUGINS", PLUGINS)  # the executor passes KDISTILL_* to its workers
        reset_plugins()
        yield mp
    reset_plugins()


@pytest.fixture(scope="module")
def teacher_run(toy_plugins, tmp_path_factory):
    return train_toy_teacher(tmp_path_factory.mktemp("teacher") / "run")


@pytest.fixture(scope="module")
def local_data(teacher_run, tmp_path_factory):
    domain = get_domain("fragile")
    teacher = load_policy(teacher_run)
    out = tmp_path_factory.mktemp("local") / "data"
    summary = collect_expert_data(domain, teacher, teacher.meta["normalizer"], domain.tasks("all"), out, SETTINGS,
                                  teacher_ref="toy")
    return out, summary


def _collect_on_ray(teacher_run, out):
    domain = get_domain("fragile")
    teacher = load_policy(teacher_run)
    with RayExecutor(workers=2) as executor:
        return collect_expert_data(domain, teacher, teacher.meta["normalizer"], domain.tasks("all"), out, SETTINGS,
                                   teacher_ref="toy", executor=executor)


def test_ray_is_a_registered_executor(toy_plugins):
    assert "ray" in get_plugins().executors and get_plugins().executors.entry("ray").plugin == "ray"


def test_evaluation_on_two_ray_workers_equals_the_local_executor(cluster, teacher_run):
    domain = get_domain("toy")
    tasks = domain.tasks("all")
    for deterministic in (True, False):  # stochastic actions too: each task draws from its own seed
        policy = load_policy(teacher_run, seed=3)
        local = evaluate_policy(domain, policy, tasks, episodes=3, seed=5, deterministic=deterministic)
        policy = load_policy(teacher_run, seed=3)
        with RayExecutor(workers=2) as executor:
            seen = []
            remote = evaluate_policy(domain, policy, tasks, episodes=3, seed=5, deterministic=deterministic,
                                     executor=executor, on_task=lambda row, seen=seen: seen.append(row["name"]))
        assert remote == local
        assert sorted(seen) == sorted(tasks)


def test_eval_command_takes_executor_options(cluster, teacher_run, monkeypatch, capsys):
    from test_teacher import _cli

    args = ["eval", "toy", "--policy", str(teacher_run), "--split", "all", "--episodes", "2", "--json"]
    code, out, err = _cli(args, monkeypatch, capsys)
    assert code == 0, err
    local = json.loads(out)
    code, out, err = _cli([*args, "--executor", "ray", "--workers", "2"], monkeypatch, capsys)
    assert code == 0, err
    remote = json.loads(out)
    assert remote["tasks"] == local["tasks"] and remote["summary"] == local["summary"]
    assert remote["executor"]["executor"] == "ray" and local["executor"] == {"executor": "local", "workers": 1}
    code, out, err = _cli([*args, "--workers", "2"], monkeypatch, capsys)
    assert code == 2 and "use --executor processes" in err and len(err.strip().splitlines()) == 1
    code, out, err = _cli([*args, "--executor", "dask"], monkeypatch, capsys)
    assert code == 2 and "dask" in err and len(err.strip().splitlines()) == 1
    code, out, err = _cli([*args, "--executor", "ray", "--address", "127.0.0.1:1"], monkeypatch, capsys)
    assert code == 2 and "no Ray cluster answers there" in err and len(err.strip().splitlines()) == 1


def test_expert_data_on_two_ray_workers_equals_the_local_executor(cluster, teacher_run, local_data, tmp_path):
    summary = _collect_on_ray(teacher_run, tmp_path / "data")
    same_folders(local_data[0], tmp_path / "data")
    assert summary == {**local_data[1], "out": str(tmp_path / "data")}


def test_a_worker_killed_mid_task_is_retried_and_nothing_is_lost_or_duplicated(cluster, teacher_run, local_data,
                                                                               tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv("KDISTILL_TEST_KILL_MARKER", str(marker))  # the first worker to step 10 times kills itself
    summary = _collect_on_ray(teacher_run, tmp_path / "data")
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker died, not this process
    tasks = get_domain("fragile").tasks("all")
    assert summary["collected"] == tasks  # each task once
    same_folders(local_data[0], tmp_path / "data")


def test_expert_data_of_per_task_experts_on_two_ray_workers_equals_the_local_executor(cluster, tmp_path):
    # experts have no normaliser of their own: the data's is fitted on their rollouts, which run on the workers too
    import torch

    from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, ExpertTrainer, export_experts

    torch.set_num_threads(1)
    domain, tiny = get_domain("cartpole"), ExpertConfig.presets()["tiny"]
    tasks = domain.tasks("train")[:3]
    settings = ExpertRunSettings(domain="cartpole", tasks=tasks, preset="tiny", seed=0, steps_per_task=tiny.batch_size)
    ExpertTrainer(domain, settings, tiny, run_dir=tmp_path / "run").train()
    export_experts(tmp_path / "run", tmp_path / "experts")
    teacher = load_policy(tmp_path / "experts", domain="cartpole")
    collect = dict(settings=CollectSettings(samples_per_task=60, num_envs=3, seed=2), teacher_ref="experts")
    local = collect_expert_data(domain, teacher, None, tasks, tmp_path / "local", **collect)
    with RayExecutor(workers=2) as executor:
        remote = collect_expert_data(domain, teacher, None, tasks, tmp_path / "ray", executor=executor, **collect)
    same_folders(tmp_path / "local", tmp_path / "ray")
    assert remote == {**local, "out": str(tmp_path / "ray")}


def test_expert_collect_command_on_a_ray_cluster_it_starts_itself_equals_the_local_executor(teacher_run, tmp_path):
    # the command starts its own local cluster, whose workers inherit its environment (the toy plugins) instead of
    # being given a runtime env
    domain = get_domain("toy")
    local = collect_expert_data(domain, load_policy(teacher_run), load_policy(teacher_run).meta["normalizer"],
                                domain.tasks("all"), tmp_path / "local", SETTINGS, teacher_ref=str(teacher_run))
    cmd = [sys.executable, "-m", "kdistill", "expert", "collect", "toy", "--teacher", str(teacher_run), "--split", "all",
           "--samples-per-task", str(SETTINGS.samples_per_task), "--envs", str(SETTINGS.num_envs), "--seed",
           str(SETTINGS.seed), "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "KDISTILL_PLUGINS": PLUGINS})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["collected"] == local["collected"]
    same_folders(tmp_path / "local", tmp_path / "ray")


def test_a_freed_worker_gets_its_next_task_before_the_driver_handles_the_result(cluster, tmp_path):
    started = [tmp_path / "first", tmp_path / "second"]
    with RayExecutor(workers=1) as executor:
        results = executor.imap_unordered(Path.touch, started)
        assert next(results)[0] == 0
        # the driver holds the first result (collection writes its shard now): the one worker runs the second task
        deadline = time.monotonic() + 60
        while not started[1].exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started[1].exists()
        assert [index for index, _ in results] == [1]


def test_experts_sharded_over_two_ray_workers_equal_one_process(cluster, tmp_path):
    import torch

    from kdistill.executors import LocalExecutor
    from kdistill.io import load_checkpoint
    from kdistill.rl.expert_shards import train_sharded
    from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, export_experts, read_shard_plan, start_or_resume

    torch.set_num_threads(1)
    domain = get_domain("cartpole")
    tiny = ExpertConfig.presets()["tiny"]
    settings = ExpertRunSettings(domain="cartpole", tasks=domain.tasks("train")[:4], preset="tiny", seed=2,
                                 steps_per_task=3 * tiny.batch_size, checkpoint_every=1)
    trainer = start_or_resume(domain, settings, tiny, tmp_path / "one", resume=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    export_experts(tmp_path / "one", tmp_path / "one-experts")
    # two shards on Ray, stopped after one update each; then resumed here, one shard after the other
    with RayExecutor(workers=2) as executor:
        first = train_sharded(domain, settings, tmp_path / "two", executor, max_updates=1)
    assert first["shards"] == 2 and first["active_tasks"] == 4
    assert read_shard_plan(tmp_path / "two")["shards"] == [list(settings.tasks[:2]), list(settings.tasks[2:])]
    done = train_sharded(domain, settings, tmp_path / "two", LocalExecutor(), resume=True)
    assert done["active_tasks"] == 0 and done["env_steps"] == 4 * 3 * tiny.batch_size
    export_experts(tmp_path / "two", tmp_path / "two-experts")
    (a, meta_a), (b, meta_b) = load_checkpoint(tmp_path / "one-experts"), load_checkpoint(tmp_path / "two-experts")
    assert [t["name"] for t in meta_a["tasks"]] == [t["name"] for t in meta_b["tasks"]] == list(settings.tasks)
    assert sorted(a) == sorted(b)
    for key in a:  # each task trains the same in a shard as beside all the others
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    with pytest.raises(Exception, match="already holds a sharded expert run"):
        train_sharded(domain, settings, tmp_path / "two", LocalExecutor())


# PPO rollout workers ------------------------------------------------------------------------------------------

def _ppo_rollouts(domain_name, executor, iterations=3):
    """The toy run of tests/test_rollout_workers.py on 2 rollout workers of ``executor``: every rollout's batch and
    the final weights. A checkpoint boundary at iteration 2 restarts every episode."""
    from kdistill.rl.trainer import PPOTrainer
    from test_rollout_workers import CONFIG, recorded_rollouts

    base = make_trainer(get_domain(domain_name), iterations=iterations, config=CONFIG, every=2)
    base.close()
    trainer = PPOTrainer(base.domain, base.settings, base.teacher_spec, base.teacher_config, CONFIG,
                         executor=executor, rollout_workers=2)
    return recorded_rollouts(trainer), trainer.model.state_dict()


def _same_rollouts(a, b) -> None:
    import torch

    assert len(a[0]) == len(b[0])
    for batch_a, batch_b in zip(a[0], b[0]):
        assert sorted(batch_a) == sorted(batch_b)
        for key in batch_a:
            assert torch.equal(batch_a[key], batch_b[key]), key
    for key in a[1]:
        assert torch.equal(a[1][key], b[1][key]), key


def test_ppo_rollouts_on_two_ray_workers_equal_the_local_executor(cluster, toy_plugins):
    import torch

    from kdistill.executors import LocalExecutor

    torch.set_num_threads(1)
    local = _ppo_rollouts("toy", LocalExecutor())
    with RayExecutor(workers=2) as executor:
        remote = _ppo_rollouts("toy", executor)
    _same_rollouts(local, remote)


def test_a_rollout_worker_killed_mid_rollout_is_retried_and_no_sample_is_lost_or_repeated(cluster, toy_plugins,
                                                                                          tmp_path, monkeypatch):
    import torch

    from kdistill.executors import LocalExecutor

    torch.set_num_threads(1)
    local = _ppo_rollouts("fragile", LocalExecutor(), iterations=2)
    marker = tmp_path / "killed"
    monkeypatch.setenv("KDISTILL_TEST_KILL_MARKER", str(marker))  # the first worker to step 10 times kills itself
    with RayExecutor(workers=2) as executor:
        remote = _ppo_rollouts("fragile", executor, iterations=2)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker died, not this process
    # it died in the first rollout, whose episodes start from their seeds anyway: its replacement's trajectories are
    # the ones it would have returned, each slot's steps once
    _same_rollouts(local, remote)


def test_teacher_train_command_takes_executor_options(cluster, toy_plugins, tmp_path, monkeypatch, capsys):
    from kdistill.io import read_jsonl
    from test_teacher import _cli

    run = tmp_path / "run"
    args = ["teacher", "train", "toy", "--out", str(run), "--threads", "1", "--json"]
    code, out, err = _cli([*args, "--steps", "4096", "--executor", "ray", "--workers", "2"], monkeypatch, capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["iterations"] == 1 and first["executor"]["executor"] == "ray" and first["executor"]["workers"] == 2
    assert [r["rollout_workers"] for r in read_jsonl(run / "metrics.jsonl")] == [2]
    # rollout workers seed every env slot alike: a resume may use another number of them, while the learner's own
    # rollout continues the run only on purpose (--new-split)
    code, _, err = _cli([*args, "--resume", "--steps", "8192"], monkeypatch, capsys)
    assert code == 2 and "rollout-workers" in err and "--new-split" in err
    code, out, err = _cli([*args, "--resume", "--steps", "8192", "--executor", "ray", "--workers", "1"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["env_steps"] == 8192, err
    code, out, err = _cli([*args, "--resume", "--steps", "12288", "--new-split"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["env_steps"] == 12288 and "executor" not in json.loads(out)
    for bad, words in ((["--workers", "0"], "needs --workers N"), (["--workers", "17"], "exceeds the 16 envs")):
        code, _, err = _cli([*args, "--resume", "--steps", "16384", "--executor", "ray", "--new-split", *bad], monkeypatch,
                            capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
