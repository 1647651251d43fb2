"""The batched per-task expert trainer: per-task independence, exact resume, early stop, pinned envs, CLI."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
import torch

from kdistill.rl.experts import (
    ExpertConfig,
    ExpertRunSettings,
    ExpertTrainer,
    StackedActorCritic,
    StackedRunningMeanStd,
    pinned_vec_env,
    start_or_resume,
)
from kdistill.rl.normalise import RunningMeanStd
from kdistill.rl.sampling import PinnedSampler

TINY = ExpertConfig.presets()["tiny"]


@pytest.fixture(scope="module")
def unimal(unimal_dir):
    from kdistill_unimal.domain import UnimalDomain

    return UnimalDomain(data_dir=unimal_dir)


@pytest.fixture
def cartpole():
    from kdistill.plugins import get_domain

    return get_domain("cartpole")


def make(domain, tasks, config=TINY, seed=0, run_dir=None, steps=10**6, every=10):
    settings = ExpertRunSettings(domain=domain.name, tasks=tasks, preset="tiny", seed=seed, steps_per_task=steps,
                                 checkpoint_every=every)
    return ExpertTrainer(domain, settings, config, run_dir=run_dir)


def params_of(trainer, row):
    return {name: p.detach()[row].clone() for name, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("domain_name", ["unimal", "cartpole"])
def test_batched_run_equals_separate_runs(domain_name, request, one_torch_thread):
    domain = request.getfixturevalue(domain_name)
    tasks = domain.tasks("train")[:3]
    batched = make(domain, tasks)
    batched.train(stop_after_updates=3)
    for k, task in enumerate(tasks):
        alone = make(domain, [task])
        alone.train(stop_after_updates=3)
        mine, theirs = params_of(batched, k), params_of(alone, 0)
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-5, msg=f"{task}: {name}")
        np.testing.assert_allclose([e[1] for e in batched.evals[k]], [e[1] for e in alone.evals[0]], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(batched.obs_rms.mean[k], alone.obs_rms.mean[0], rtol=1e-3, atol=1e-5)
        assert batched.env_steps[k] == alone.env_steps[0] == 3 * TINY.batch_size
    # the tasks did learn different things: independence is not trivially true
    p = params_of(batched, 0)["actor.weights.1"]
    assert not torch.allclose(p, params_of(batched, 1)["actor.weights.1"])


def test_resume_is_exact(unimal, tmp_path, one_torch_thread):
    tasks = unimal.tasks("train")[:2]
    straight = make(unimal, tasks, run_dir=tmp_path / "a", every=2)
    straight.train(stop_after_updates=4)
    first = make(unimal, tasks, run_dir=tmp_path / "b", every=2)
    first.train(stop_after_updates=2)
    first.close()
    resumed = start_or_resume(unimal, first.settings, TINY, tmp_path / "b", resume=True)
    assert resumed.updates == 2
    resumed.train(stop_after_updates=2)
    for name, p in straight.model.named_parameters():
        assert torch.equal(p, dict(resumed.model.named_parameters())[name]), name
    assert straight.evals == resumed.evals
    np.testing.assert_array_equal(straight.obs_rms.var, resumed.obs_rms.var)
    # per-task logs hold each update exactly once
    recs = [json.loads(line) for line in (tmp_path / "b" / "tasks").glob("*.jsonl").__next__().read_text().splitlines()]
    assert [r["update"] for r in recs] == [1, 2, 3, 4]


def _stop_and_resume(domain, tasks, run_dir, stop_at: int, more: int, every: int):
    stopped = make(domain, tasks, run_dir=run_dir, every=every)
    last = stopped.train(should_stop=lambda: stopped.updates >= stop_at)
    stopped.close()
    assert last["stopped_on_request"] and last["update"] == stop_at
    resumed = start_or_resume(domain, stopped.settings, TINY, run_dir, resume=True)
    assert resumed.updates == stop_at
    resumed.train(stop_after_updates=more)
    return resumed


def _same_training(a, b) -> None:
    for name, p in a.model.named_parameters():
        assert torch.equal(p, dict(b.model.named_parameters())[name]), name
    assert a.evals == b.evals
    np.testing.assert_array_equal(a.obs_rms.var, b.obs_rms.var)
    np.testing.assert_array_equal(a.rew_ret, b.rew_ret)


def test_a_stop_request_keeps_the_running_episodes(cartpole, tmp_path, one_torch_thread):
    """A requested stop (SIGTERM in the CLI) off the checkpoint schedule writes a checkpoint with the running
    episodes: the resumed run equals the run that was never stopped."""
    from kdistill.io import latest_checkpoint, load_checkpoint

    tasks = cartpole.tasks("train")[:2]
    resumed = _stop_and_resume(cartpole, tasks, tmp_path / "a", stop_at=2, more=2, every=5)
    straight = make(cartpole, tasks, run_dir=tmp_path / "b", every=5)
    straight.train(stop_after_updates=4)
    _same_training(straight, resumed)
    assert "episodes.obs" in load_checkpoint(latest_checkpoint(tmp_path / "a"))[0]  # the stop's checkpoint
    straight.train(stop_after_updates=1)  # to update 5: a periodic checkpoint, where the episodes restart
    assert not any(k.startswith("episodes.") for k in load_checkpoint(latest_checkpoint(tmp_path / "b"))[0])


def test_a_stop_request_restarts_the_episodes_an_env_cannot_save(cartpole, tmp_path, one_torch_thread, monkeypatch):
    from kdistill_cartpole.env import CartPoleVecEnv

    monkeypatch.setattr(CartPoleVecEnv, "get_state", lambda self: None)
    tasks = cartpole.tasks("train")[:2]
    resumed = _stop_and_resume(cartpole, tasks, tmp_path / "a", stop_at=2, more=2, every=5)
    checkpointed_there = make(cartpole, tasks, run_dir=tmp_path / "b", every=2)
    checkpointed_there.train(stop_after_updates=4)
    _same_training(checkpointed_there, resumed)


def test_a_stop_request_keeps_the_running_episodes_of_real_robots(unimal, tmp_path, one_torch_thread):
    tasks = unimal.tasks("train")[:2]
    resumed = _stop_and_resume(unimal, tasks, tmp_path / "a", stop_at=1, more=2, every=5)
    straight = make(unimal, tasks, run_dir=tmp_path / "b", every=5)
    straight.train(stop_after_updates=3)
    _same_training(straight, resumed)


def test_stop_request_catches_sigterm_and_a_first_ctrl_c():
    import os
    import signal

    from kdistill.procs import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested and stop.exit_code == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == "SIGTERM" and stop.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    # Ctrl-C as in a terminal (a test run started in the background inherits SIGINT ignored)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signal == "SIGINT" and stop.exit_code == 130
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        with StopRequest() as stop:  # after a SIGTERM, Ctrl-C still interrupts at once
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
            assert stop.signal == "SIGTERM"
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # started ignoring Ctrl-C (a background job)
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_env_workers_started_during_a_stop_request_still_die_on_sigterm(cartpole):
    """Env workers keep SIGTERM's default (so close() can terminate them) and sit in their own process group (so
    a scheduler's SIGTERM to the job's group reaches only the trainer, which stops cleanly)."""
    import os
    import signal
    import time

    from kdistill.procs import StopRequest

    with StopRequest() as stop:
        envs = pinned_vec_env(cartpole, cartpole.tasks("train")[:2], 1, workers=2)
        try:
            procs = envs._procs
            assert all(os.getpgid(p.pid) == p.pid != os.getpgid(0) for p in procs)
            os.kill(procs[0].pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while procs[0].is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not procs[0].is_alive() and not stop.requested
        finally:
            envs.close()


def test_cli_sigterm_stops_after_an_update_with_a_checkpoint(tmp_path):
    """The real signal to the real command: exit code 143, a checkpoint at the last update, and --resume goes on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from kdistill.io import latest_checkpoint

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kdistill", "experts", "train", "cartpole", "--num-tasks", "2", "--preset", "tiny",
           "--steps-per-task", "1000000", "--checkpoint-every", "1000", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    updates = len((out / "metrics.jsonl").read_text().splitlines())
    assert f"stopped by SIGTERM after update {updates}" in err and "--resume" in err
    assert int(latest_checkpoint(out).name.split("-")[-1]) == updates
    resumed = subprocess.run([*cmd[:3], "experts", "train", "cartpole", "--out", str(out), "--resume",
                              "--max-updates", "1", "--json"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["updates"] == updates + 1
    # --max-updates ends the call with a checkpoint of its last update, so the run goes on from there
    assert int(latest_checkpoint(out).name.split("-")[-1]) == updates + 1


def test_resume_refuses_other_settings(unimal, tmp_path, one_torch_thread):
    from kdistill.errors import CheckpointError, KdistillError

    tasks = unimal.tasks("train")[:2]
    make(unimal, tasks, run_dir=tmp_path / "r", every=1).train(stop_after_updates=1)
    other = ExpertRunSettings(domain="unimal", tasks=tasks, preset="tiny", seed=1, steps_per_task=10**6)
    with pytest.raises(CheckpointError, match="seed"):
        start_or_resume(unimal, other, TINY, tmp_path / "r", resume=True)
    with pytest.raises(KdistillError, match="--resume"):
        start_or_resume(unimal, attrs.evolve(other, seed=0), TINY, tmp_path / "r", resume=False)


def test_plateaued_task_stops_and_others_continue(cartpole, one_torch_thread):
    tasks = cartpole.tasks("train")[:3]
    config = attrs.evolve(TINY, patience=2, min_delta=0.05, min_steps=0)
    trainer = make(cartpole, tasks, config=config)
    trainer.train(stop_after_updates=1)
    # task 0 plateaus, task 1 keeps improving by more than 5 %, task 2 improves by less
    history = {0: [100.0, 100.0, 100.0], 1: [100.0, 120.0, 150.0], 2: [100.0, 103.0, 104.0]}
    stopped = []
    for step in range(3):
        stopped.append(trainer._record_eval(np.array([history[k][step] for k in range(3)])))
    assert stopped[:2] == [[], []] and stopped[2] == [0, 2]
    assert trainer.stop_reason == ["plateau", None, "plateau"]
    assert trainer.best_return.tolist() == [100.0, 150.0, 104.0]
    # stopping narrows the model to the remaining task and keeps its weights and optimiser state
    before = params_of(trainer, 1)
    moments = trainer.optimizer.state_dict()["state"][0]["exp_avg"][1].clone()
    trainer._narrow_to(np.array([1]))
    after = params_of(trainer, 0)
    for name in before:
        assert torch.equal(before[name], after[name])
    assert torch.equal(trainer.optimizer.state_dict()["state"][0]["exp_avg"][0], moments)


def test_budget_stops_every_task(cartpole, one_torch_thread):
    tasks = cartpole.tasks("train")[:2]
    trainer = make(cartpole, tasks, steps=2 * TINY.batch_size)
    trainer.train()
    assert trainer.done and trainer.stop_reason == ["budget", "budget"]
    assert trainer.env_steps.tolist() == [2 * TINY.batch_size] * 2
    assert all(len(e) >= 1 for e in trainer.evals)


def final_state(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_a_raised_budget_continues_a_finished_run_like_a_run_started_with_it(cartpole, tmp_path, one_torch_thread):
    """The final checkpoint keeps the last tasks' training state; resuming with more steps per task trains them on
    exactly as a run given the larger budget from the start (both checkpoint, so restart episodes, every update)."""
    from kdistill.errors import CheckpointError
    from kdistill.io import load_run_checkpoint

    tasks = cartpole.tasks("train")[:2]
    B = TINY.batch_size
    short = make(cartpole, tasks, run_dir=tmp_path / "short", steps=2 * B, every=1)
    short.train()
    short.close()
    assert short.done and short.stop_reason == ["budget", "budget"]
    tensors, meta = load_run_checkpoint(tmp_path / "short")
    assert meta["model_rows"] == [0, 1] and tensors["model.actor.weights.0"].shape[0] == 2
    ended = final_state(short)

    again = start_or_resume(cartpole, short.settings, TINY, tmp_path / "short", resume=True)
    assert again.done and again.budget_raised_from is None  # the same budget: nothing left to train
    with pytest.raises(CheckpointError, match="not lower"):
        start_or_resume(cartpole, attrs.evolve(short.settings, steps_per_task=B), TINY, tmp_path / "short", resume=True)

    longer = start_or_resume(cartpole, attrs.evolve(short.settings, steps_per_task=4 * B), TINY, tmp_path / "short",
                             resume=True)
    assert longer.budget_raised_from == 2 * B and not longer.done and longer.stop_reason == [None, None]
    for name, p in final_state(longer).items():
        assert torch.equal(p, ended[name]), name
    longer.train()
    straight = make(cartpole, tasks, run_dir=tmp_path / "straight", steps=4 * B, every=1)
    straight.train()
    assert longer.env_steps.tolist() == straight.env_steps.tolist() == [4 * B, 4 * B]
    assert longer.stop_reason == ["budget", "budget"] and longer.updates == straight.updates == 4
    for name, p in final_state(straight).items():
        assert torch.equal(p, final_state(longer)[name]), name
    assert longer.evals == straight.evals


def test_a_raised_budget_leaves_plateaued_tasks_stopped(cartpole, one_torch_thread):
    tasks = cartpole.tasks("train")[:2]
    trainer = make(cartpole, tasks, steps=TINY.batch_size)
    trainer.train()
    trainer.stop_reason[0] = "plateau"
    kept = params_of(trainer, 1)
    moments = trainer.optimizer.state_dict()["state"][0]["exp_avg"][1].clone()
    trainer.settings = attrs.evolve(trainer.settings, steps_per_task=3 * TINY.batch_size)
    trainer._continue_budget_stops()
    assert trainer.active.tolist() == [False, True] and trainer.stop_reason == ["plateau", None]
    assert trainer._rows.tolist() == [1]
    for name, p in params_of(trainer, 0).items():
        assert torch.equal(p, kept[name]), name
    assert torch.equal(trainer.optimizer.state_dict()["state"][0]["exp_avg"][0], moments)
    trainer.train()
    assert trainer.env_steps.tolist() == [TINY.batch_size, 3 * TINY.batch_size]


def test_a_raised_budget_is_refused_when_no_task_can_train_on(cartpole, tmp_path, one_torch_thread):
    """Tasks stopped on a plateau stay stopped: when no task can use a raised budget the resume is refused before any
    log is touched."""
    from kdistill.errors import CheckpointError

    # the first evaluation sets the best; no later one can beat it by min_delta, so the second stops every task
    config = attrs.evolve(TINY, patience=1, min_delta=1e9, min_steps=0)
    run = tmp_path / "run"
    settings = ExpertRunSettings(domain="cartpole", tasks=cartpole.tasks("train")[:2], preset="tiny", seed=0,
                                 steps_per_task=10 * config.batch_size, checkpoint_every=1)
    trainer = ExpertTrainer(cartpole, settings, config, run_dir=run)
    trainer.train()
    trainer.close()
    assert trainer.stop_reason == ["plateau", "plateau"] and trainer.updates == 2
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="raised budget"):
        start_or_resume(cartpole, attrs.evolve(settings, steps_per_task=20 * config.batch_size), config, run,
                        resume=True)
    assert (run / "metrics.jsonl").read_text() == metrics


def test_a_sharded_run_raises_its_budget_in_its_plan_and_every_shard(cartpole, tmp_path, one_torch_thread):
    from kdistill.errors import CheckpointError
    from kdistill.executors import LocalExecutor
    from kdistill.rl.expert_shards import train_sharded
    from kdistill.rl.experts import read_shard_plan

    B = TINY.batch_size
    settings = ExpertRunSettings(domain="cartpole", tasks=cartpole.tasks("train")[:2], preset="tiny", seed=0,
                                 steps_per_task=B, checkpoint_every=1)
    first = train_sharded(cartpole, settings, tmp_path / "run", LocalExecutor())
    assert first["active_tasks"] == 0 and first["env_steps"] == 2 * B
    with pytest.raises(CheckpointError, match="not lower"):
        train_sharded(cartpole, attrs.evolve(settings, steps_per_task=B // 2), tmp_path / "run", LocalExecutor(),
                      resume=True)
    with pytest.raises(CheckpointError, match="other settings"):
        train_sharded(cartpole, attrs.evolve(settings, seed=1, steps_per_task=2 * B), tmp_path / "run",
                      LocalExecutor(), resume=True)
    assert read_shard_plan(tmp_path / "run")["settings"]["steps_per_task"] == B  # refused: the plan is untouched
    more = train_sharded(cartpole, attrs.evolve(settings, steps_per_task=2 * B), tmp_path / "run", LocalExecutor(),
                         resume=True)
    assert more["env_steps"] == 2 * 2 * B and more["active_tasks"] == 0
    assert read_shard_plan(tmp_path / "run")["settings"]["steps_per_task"] == 2 * B


def test_gradient_clip_is_per_task():
    torch.manual_seed(0)
    model = StackedActorCritic(3, 5, 2, (4,))
    for k in range(3):
        model.init_task(k, torch.Generator().manual_seed(k), 0.0, torch.zeros(5, dtype=torch.bool))
    scale = torch.tensor([1.0, 100.0, 0.01])
    x = torch.randn(3, 7, 5)
    (model.actor(x).pow(2).sum((1, 2)) * scale).sum().backward()
    expected = []
    for k in range(3):
        grads = [p.grad[k].clone() for p in model.actor.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        coef = min(1.0, 0.5 / (float(norm) + 1e-6))
        expected.append([g * coef for g in grads])
    ExpertTrainer._clip_grad_per_task(list(model.actor.parameters()), 0.5)
    for k in range(3):
        for p, want in zip(model.actor.parameters(), expected[k]):
            torch.testing.assert_close(p.grad[k], want)
    assert any(c < 1.0 for c in [0.5 / float(torch.sqrt(sum(g.pow(2).sum() for g in e)) + 1e-6) for e in expected])


def test_stacked_running_stats_match_one_task_stats():
    rng = np.random.default_rng(0)
    stacked = StackedRunningMeanStd(3, (4,))
    single = [RunningMeanStd((4,)) for _ in range(3)]
    for _ in range(5):
        x = rng.normal(size=(3, 6, 4)) * np.array([1.0, 5.0, 0.1])[:, None, None]
        rows = np.array([0, 2]) if _ % 2 else np.arange(3)
        stacked.update(x[rows], rows)
        for k in rows:
            single[k].update(x[k])
    for k in range(3):
        np.testing.assert_allclose(stacked.mean[k], single[k].mean)
        np.testing.assert_allclose(stacked.var[k], single[k].var)
        assert stacked.count[k] == pytest.approx(single[k].count)


def test_pinned_slots_play_their_task_independently(unimal):
    tasks = unimal.tasks("train")[:3]
    envs = pinned_vec_env(unimal, tasks, 2)
    assert isinstance(envs.sampler, PinnedSampler)
    try:
        seeds = [11, 12, 21, 22, 31, 32]
        envs.reset(seed=seeds)
        first = [envs.step(np.zeros((6, 24), np.float32))[0]["obs"] for _ in range(3)]
        assert envs.slot_tasks == [t for t in tasks for _ in range(2)]
    finally:
        envs.close()
    alone = pinned_vec_env(unimal, tasks[1:2], 2)
    try:
        alone.reset(seed=[21, 22])
        mine = [alone.step(np.zeros((2, 24), np.float32))[0]["obs"] for _ in range(3)]
    finally:
        alone.close()
    for a, b in zip(first, mine):
        np.testing.assert_array_equal(a[2:4], b)
    with pytest.raises(Exception, match="slot"):
        PinnedSampler(tasks, tasks).sample(np.random.default_rng(0))


def test_padded_inputs_have_zero_weights(unimal):
    tasks = unimal.tasks("train")[:2]
    trainer = make(unimal, tasks)
    w = trainer.model.actor.weights[0].detach()
    for k in range(2):
        mask = trainer.input_mask[k]
        assert mask.any() and not mask.all()
        assert torch.all(w[k][mask] == 0) and torch.all(w[k][~mask].abs().sum(1) > 0)


def test_cli_train_json_and_resume(tmp_path, unimal_dir, monkeypatch):
    from click.testing import CliRunner

    from kdistill.cli.app import app

    monkeypatch.setenv("KDISTILL_UNIMAL_DIR", str(unimal_dir))
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["experts", "train", "unimal", "--num-tasks", "2", "--preset", "tiny", "--steps-per-task", "256",
            "--out", str(out), "--json", "--threads", "1"]
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["env_steps"] == 2 * 256 and summary["active_tasks"] == 0
    assert summary["raw_random_steps_per_s"] > 0 and summary["ratio_to_raw"] > 0
    assert len(summary["tasks"]) == 2 and all(t["best_return"] is not None for t in summary["tasks"])
    assert (out / "learning_curves.png").stat().st_size > 0
    from kdistill.errors import KdistillError

    again = runner.invoke(app, args)
    assert isinstance(again.exception, KdistillError) and "--resume" in str(again.exception)
    resumed = runner.invoke(app, ["experts", "train", "unimal", "--out", str(out), "--resume", "--seed", "0", "--json"])
    assert resumed.exit_code == 0, resumed.output  # nothing left to train: the summary of the finished run
    assert json.loads(resumed.stdout)["env_steps"] == 2 * 256
    lower = runner.invoke(app, ["experts", "train", "unimal", "--out", str(out), "--resume", "--steps-per-task", "128"])
    assert lower.exit_code != 0 and "not lower" in str(lower.exception)
    longer = runner.invoke(app, ["experts", "train", "unimal", "--out", str(out), "--resume", "--steps-per-task", "384",
                                 "--json"])
    assert longer.exit_code == 0, longer.output
    raised = json.loads(longer.stdout)
    assert raised["budget_raised_from"] == 256 and raised["steps_per_task"] == 384 and raised["env_steps"] == 2 * 384
    status = runner.invoke(app, ["experts", "status", str(out), "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert report["training"] == 0 and [t["name"] for t in report["per_task"]] == [t["task"] for t in summary["tasks"]]
    assert report["mean_best_return"] == pytest.approx(raised["mean_best_return"])


def test_exported_experts_act_like_their_best_actors(cartpole, tmp_path, one_torch_thread):
    from kdistill.errors import KdistillError
    from kdistill.loading import load_policy
    from kdistill.rl.experts import export_experts

    tasks = cartpole.tasks("train")[:3]
    trainer = make(cartpole, tasks, run_dir=tmp_path / "run", steps=3 * TINY.batch_size)
    trainer.train()
    export_experts(tmp_path / "run", tmp_path / "experts")
    policy = load_policy(tmp_path / "experts", domain="cartpole")
    assert policy.kind == "experts" and policy.tasks == tasks
    envs = pinned_vec_env(cartpole, tasks, 4)
    try:
        obs = envs.reset(seed=list(range(12)))
    finally:
        envs.close()
    task_index = np.repeat(np.arange(3), 4)
    mixed = policy.act_tasks(obs, task_index)
    for k, task in enumerate(tasks):
        rows = slice(4 * k, 4 * k + 4)
        policy.prepare(task)
        one = policy.act({key: v[rows] for key, v in obs.items()})
        np.testing.assert_array_equal(one, mixed[rows])
        # by hand: features of the real slots, the task's best normaliser, its best actor
        x = obs["obs"][rows][:, :, list(cartpole.layout.student_features)].reshape(4, -1).astype(np.float64)
        x = np.clip((x - trainer.best_obs_mean[k]) / np.sqrt(trainer.best_obs_var[k] + 1e-8), -10, 10)
        h = torch.from_numpy(x.astype(np.float32))
        n_layers = len(trainer.model.actor.weights)
        for i in range(n_layers):
            h = h @ trainer.best_actor[f"weights.{i}"][k] + trainer.best_actor[f"biases.{i}"][k]
            h = torch.tanh(h) if i < n_layers - 1 else h
        np.testing.assert_allclose(one, h.clamp(-1, 1).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(KdistillError, match="no expert for task"):
        policy.prepare(cartpole.tasks("test")[0])
    with pytest.raises(KdistillError, match="another folder|not kdistill|holds"):
        export_experts(tmp_path / "run", tmp_path / "run")


def test_merged_experts_act_like_each_sets_own(cartpole, tmp_path, one_torch_thread):
    from kdistill.errors import KdistillError
    from kdistill.loading import load_policy
    from kdistill.rl.experts import export_experts

    tasks = cartpole.tasks("train")[:3]
    make(cartpole, tasks[:2], run_dir=tmp_path / "a", steps=2 * TINY.batch_size).train()
    make(cartpole, tasks[2:], run_dir=tmp_path / "b", seed=5, steps=2 * TINY.batch_size).train()
    export_experts(tmp_path / "a", tmp_path / "a-experts")
    # an exported set and a run folder merge alike
    summary = export_experts([tmp_path / "a-experts", tmp_path / "b"], tmp_path / "ab")
    assert summary["tasks"] == 3 and summary["sets"] == 2
    merged = load_policy(tmp_path / "ab", domain="cartpole")
    assert merged.tasks == tasks and "run" not in merged.meta
    envs = pinned_vec_env(cartpole, tasks, 4)
    try:
        obs = envs.reset(seed=list(range(12)))
    finally:
        envs.close()
    mixed = merged.act_tasks(obs, np.repeat(np.arange(3), 4))
    for k, (source, row) in enumerate([("a", 0), ("a", 1), ("b", 0)]):
        own = load_policy(tmp_path / source, domain="cartpole")
        rows = slice(4 * k, 4 * k + 4)
        expected = own.act_tasks({key: v[rows] for key, v in obs.items()}, np.full(4, row))
        np.testing.assert_array_equal(mixed[rows], expected)
    assert merged.meta["counters"]["env_steps"] == 3 * 2 * TINY.batch_size
    with pytest.raises(KdistillError, match="has an expert in both"):
        export_experts([tmp_path / "a", tmp_path / "a-experts"], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()


def test_snapshot_continues_in_a_new_folder(cartpole, tmp_path, one_torch_thread):
    from kdistill.errors import KdistillError
    from kdistill.io import latest_checkpoint
    from kdistill.rl.experts import snapshot_run

    tasks = cartpole.tasks("train")[:2]
    first = make(cartpole, tasks, run_dir=tmp_path / "a", every=2)
    first.train(stop_after_updates=2)
    summary = snapshot_run(tmp_path / "a", tmp_path / "snap")
    full = sum(p.stat().st_size for p in (tmp_path / "a").rglob("*.safetensors"))
    assert summary["updates"] == 2 and summary["bytes"] < full
    with pytest.raises(KdistillError, match="--resume"):
        start_or_resume(cartpole, first.settings, TINY, tmp_path / "a", resume=False, resume_from=tmp_path / "snap")
    other = attrs.evolve(first.settings, seed=5)
    with pytest.raises(Exception, match="seed"):
        start_or_resume(cartpole, other, TINY, tmp_path / "c", resume=False, resume_from=tmp_path / "snap")
    cont = start_or_resume(cartpole, first.settings, TINY, tmp_path / "b", resume=False, resume_from=tmp_path / "snap")
    assert cont.optimizer_restarted and cont.updates == 2 and cont.env_steps.tolist() == first.env_steps.tolist()
    for name, p in first.model.named_parameters():
        assert torch.equal(p, dict(cont.model.named_parameters())[name])
    assert cont.evals == first.evals and (tmp_path / "b" / "tasks").is_dir()
    cont.train(stop_after_updates=2)
    assert cont.updates == 4 and latest_updates(tmp_path / "b") == 4
    # a snapshot never lands in a training run, its own or another, and leaves that run's checkpoints as they were
    before = {p.name for p in (tmp_path / "b").glob("ckpt-*")}
    for out in (tmp_path / "a", tmp_path / "b", tmp_path / "a" / "sub"):
        with pytest.raises(KdistillError, match="own|holds a kdistill experts run"):
            snapshot_run(tmp_path / "a", out)
    assert {p.name for p in (tmp_path / "b").glob("ckpt-*")} == before and latest_updates(tmp_path / "b") == 4
    assert not (tmp_path / "a" / "sub").exists()
    # a newer snapshot into the same snapshot folder replaces the older one
    assert snapshot_run(tmp_path / "b", tmp_path / "snap")["updates"] == 4
    assert [p.name for p in (tmp_path / "snap").glob("ckpt-*")] == [latest_checkpoint(tmp_path / "b").name]


def latest_updates(run):
    from kdistill.io import latest_checkpoint, read_json

    return read_json(latest_checkpoint(run) / "meta.json")["counters"]["updates"]


def test_a_diverged_task_stops_the_run_and_keeps_the_last_checkpoint(cartpole, tmp_path, one_torch_thread):
    from kdistill.io import NonFiniteError

    tasks = cartpole.tasks("train")[:2]
    trainer = make(cartpole, tasks, run_dir=tmp_path / "run", every=1)
    trainer.train(stop_after_updates=1)
    with torch.no_grad():
        trainer.model.actor.weights[1][1, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=tasks[1]):
        trainer.train(stop_after_updates=1)
    assert latest_updates(tmp_path / "run") == 1


def test_annealed_learning_rate_falls_linearly_over_the_budget(cartpole, one_torch_thread):
    tasks = cartpole.tasks("train")[:2]
    annealed = attrs.evolve(TINY, anneal_lr=True)
    trainer = make(cartpole, tasks, config=annealed, steps=4 * TINY.batch_size)
    used: list[float] = []
    trainer.train(on_update=lambda _: used.append(trainer.optimizer.param_groups[0]["lr"]))
    assert used == pytest.approx([TINY.lr * f for f in (1.0, 0.75, 0.5, 0.25)])
    # the rate reaches the weights: the first update equals a constant-rate run's, the second does not
    steady = make(cartpole, tasks, steps=4 * TINY.batch_size)
    first = make(cartpole, tasks, config=annealed, steps=4 * TINY.batch_size)
    steady.train(stop_after_updates=1)
    first.train(stop_after_updates=1)
    assert all(torch.equal(a, b) for a, b in zip(steady.model.parameters(), first.model.parameters()))
    steady.train(stop_after_updates=1)
    first.train(stop_after_updates=1)
    assert not torch.allclose(steady.model.actor.weights[0], first.model.actor.weights[0])
    # each task's schedule is its own budget's, so a batched annealed run still equals separate runs
    alone = make(cartpole, tasks[1:], config=annealed, steps=4 * TINY.batch_size)
    alone.train()
    for name, p in alone.model.named_parameters():
        torch.testing.assert_close(dict(trainer.model.named_parameters())[name][1], p[0], rtol=1e-4, atol=1e-5)


def test_a_checkpoint_without_a_newer_setting_resumes_with_its_default(cartpole, tmp_path, one_torch_thread):
    from kdistill.errors import CheckpointError
    from kdistill.io import read_json_object

    tasks = cartpole.tasks("train")[:2]
    make(cartpole, tasks, run_dir=tmp_path / "r", every=1).train(stop_after_updates=1)
    meta_path = next((tmp_path / "r").glob("ckpt-*")) / "meta.json"
    meta = read_json_object(meta_path)
    del meta["config"]["anneal_lr"]
    meta_path.write_text(json.dumps(meta))
    settings = ExpertRunSettings(domain="cartpole", tasks=tasks, preset="tiny", seed=0, steps_per_task=10**6,
                                 checkpoint_every=1)
    assert start_or_resume(cartpole, settings, TINY, tmp_path / "r", resume=True).updates == 1
    with pytest.raises(CheckpointError, match="config"):
        start_or_resume(cartpole, settings, attrs.evolve(TINY, anneal_lr=True), tmp_path / "r", resume=True)


def test_status_reports_the_preset_and_the_learning_rate_of_an_annealed_run(cartpole, tmp_path, one_torch_thread):
    from click.testing import CliRunner

    from kdistill.cli.app import app

    annealed = attrs.evolve(TINY, anneal_lr=True)
    make(cartpole, cartpole.tasks("train")[:2], config=annealed, run_dir=tmp_path / "r", steps=4 * TINY.batch_size,
         every=1).train(stop_after_updates=3)
    res = CliRunner().invoke(app, ["experts", "status", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    # three of four updates done: the next one runs at a quarter of the rate
    assert report["preset"] == "tiny" and report["steps_per_task"] == 4 * TINY.batch_size
    assert report["learning_rate"] == pytest.approx(TINY.lr * 0.25)
    table = CliRunner().invoke(app, ["experts", "status", str(tmp_path / "r")])
    words = " ".join(table.output.split())  # the title wraps at the terminal's width
    assert "preset tiny" in words and "learning rate 7.5e-05" in words


def _rate_from_log(path):
    """Env steps per second over a run's logged updates, summed by hand: steps done over seconds spent."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    seconds = [r["rollout_s"] + r["update_s"] + r["eval_s"] for r in records]
    return sum(r["steps_per_s"] * s for r, s in zip(records, seconds)) / sum(seconds)


def test_status_reports_the_env_steps_left_and_the_time_they_take(cartpole, tmp_path, one_torch_thread):
    from click.testing import CliRunner

    from kdistill.cli.app import app
    from kdistill.executors import LocalExecutor
    from kdistill.rl.expert_shards import train_sharded
    from kdistill.rl.experts import expert_run_status, export_experts, start_or_resume

    B, tasks = TINY.batch_size, cartpole.tasks("train")[:3]
    make(cartpole, tasks, run_dir=tmp_path / "r", steps=4 * B, every=1).train(stop_after_updates=2)
    status = expert_run_status(tmp_path / "r")
    rate = _rate_from_log(tmp_path / "r" / "metrics.jsonl")
    assert status["remaining_env_steps"] == 3 * (4 * B - 2 * B) and not status["stops_early"]
    assert status["steps_per_s"] == pytest.approx(rate)
    assert status["eta_s"] == pytest.approx(3 * 2 * B / rate)
    words = " ".join(CliRunner().invoke(app, ["experts", "status", str(tmp_path / "r")]).output.split())
    assert f"{3 * 2 * B:,} env steps left at {rate:,.0f} env steps/s" in words

    class TwoShardsHere(LocalExecutor):  # two shards, trained one after the other in this process
        workers = 2

    settings = ExpertRunSettings(domain="cartpole", tasks=tasks, preset="tiny", seed=0, steps_per_task=4 * B,
                                 checkpoint_every=1)
    train_sharded(cartpole, settings, tmp_path / "s", TwoShardsHere(), max_updates=1)
    status = expert_run_status(tmp_path / "s")
    shards = [tmp_path / "s" / "shards" / f"shard-{k:03d}" for k in range(2)]
    rates = [_rate_from_log(folder / "metrics.jsonl") for folder in shards]
    left = [3 * B * len(json.loads((tmp_path / "s" / "shards.json").read_text())["shards"][k]) for k in range(2)]
    assert status["remaining_env_steps"] == sum(left) == 3 * 3 * B
    assert status["steps_per_s"] == pytest.approx(sum(rates))  # shards train side by side
    assert status["eta_s"] == pytest.approx(max(n / r for n, r in zip(left, rates)))

    start_or_resume(cartpole, settings, TINY, tmp_path / "r", resume=True).train()  # to the end of its budget
    status = expert_run_status(tmp_path / "r")
    assert status["remaining_env_steps"] == 0 and status["eta_s"] == 0.0
    export_experts(tmp_path / "r", tmp_path / "x")
    status = expert_run_status(tmp_path / "x")
    assert status["remaining_env_steps"] is None and status["steps_per_s"] is None and status["eta_s"] is None


def _experts_meta(folder, tasks):
    """An exported-experts folder holding only the meta.json that status and curves read."""
    folder.mkdir()
    meta = {"kind": "experts", "run": {"preset": "made-up", "steps_per_task": 300}, "config": {},
            "counters": {"env_steps": 0, "updates": 0},
            "tasks": [{"name": name, "active": active, "env_steps": evals[-1][0], "best_return": max(v for _, v in evals),
                       "best_step": 0, "evals": evals} for name, active, evals in tasks]}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_eval_curves_carry_a_stopped_task_and_wait_for_a_lagging_one(tmp_path):
    from kdistill.errors import KdistillError
    from kdistill.rl.experts import eval_curves

    run = _experts_meta(tmp_path / "x", [("t1", False, [[100, 10.0]]),
                                         ("t2", True, [[100, 5.0], [200, 1.0], [300, 50.0]]),
                                         ("t3", True, [[100, 7.0], [200, 9.0], [300, 11.0]])])
    c = eval_curves({"x": run})["runs"]["x"]
    assert c["steps"] == [100, 200, 300]
    # t1 stopped at 100 and keeps its value; t2's best at 200 is still its 5
    assert c["mean_eval"] == pytest.approx([22 / 3, 20 / 3, 71 / 3])
    assert c["mean_best"] == pytest.approx([22 / 3, 24 / 3, 71 / 3])
    lagging = _experts_meta(tmp_path / "y", [("t2", True, [[100, 5.0], [200, 1.0], [300, 50.0]]),
                                             ("t3", True, [[100, 7.0], [200, 9.0]])])
    both = eval_curves({"x": run, "y": lagging})
    assert both["tasks"] == 2 and both["runs"]["y"]["steps"] == [100, 200]  # not past t3's newest evaluation
    assert both["runs"]["x"]["mean_eval"] == pytest.approx([6.0, 5.0, 30.5])  # over t2 and t3 only
    assert both["common_step"] == 200
    assert both["runs"]["x"]["at_common_step"] == {"step": 200, "mean_eval": pytest.approx(5.0),
                                                   "mean_best": pytest.approx(7.0)}
    with pytest.raises(KdistillError, match="share no task"):
        eval_curves({"x": run, "z": _experts_meta(tmp_path / "z", [("t9", False, [[100, 1.0]])])})


def test_curves_compares_real_runs_on_their_shared_tasks(cartpole, tmp_path, one_torch_thread):
    from click.testing import CliRunner

    from kdistill.cli.app import app

    B, tasks = TINY.batch_size, cartpole.tasks("train")[:4]
    make(cartpole, tasks[:3], run_dir=tmp_path / "a", steps=4 * B, every=1).train()
    make(cartpole, tasks[1:], config=attrs.evolve(TINY, lr=1e-3), run_dir=tmp_path / "b", steps=4 * B,
         every=1).train(stop_after_updates=2)
    args = ["experts", "curves", f"a={tmp_path / 'a'}", str(tmp_path / "b"), "--out", str(tmp_path / "c.png"), "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    curves = json.loads(res.stdout)
    newest = sorted((tmp_path / "a").glob("ckpt-*"))[-1]
    evals = {t["name"]: t["evals"] for t in json.loads((newest / "meta.json").read_text())["tasks"]}
    shared = [evals[t] for t in tasks[1:3]]
    a = curves["runs"]["a"]
    assert curves["tasks"] == 2 and a["steps"] == [B, 2 * B, 3 * B, 4 * B]
    assert a["mean_eval"] == pytest.approx([np.mean([e[j][1] for e in shared]) for j in range(4)])
    assert a["mean_best"] == pytest.approx([np.mean([max(v for _, v in e[:j + 1]) for e in shared]) for j in range(4)])
    assert curves["runs"]["b"]["steps"] == [B, 2 * B] and curves["common_step"] == 2 * B
    assert a["at_common_step"]["mean_eval"] == pytest.approx(a["mean_eval"][1])
    png = (tmp_path / "c.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    again = CliRunner().invoke(app, args)
    assert "already exists" in str(again.exception) and (tmp_path / "c.png").read_bytes() == png  # left alone
