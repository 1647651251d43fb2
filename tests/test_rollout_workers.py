"""PPO rollout workers (``kdistill.rl.rollout_workers``) on the local executor's pinned workers: the trajectories do not
depend on how the envs are sliced (up to float rounding), resume is exact, and a worker that lost its state restarts
its slice's episodes without losing or repeating any sample. The Ray executor's equality is in tests/test_ray.py."""

from __future__ import annotations

import pytest
import torch

from kdistill.errors import KdistillError
from kdistill.executors import LocalExecutor
from kdistill.io import latest_checkpoint
from kdistill.rl.rollout_workers import plan_slices
from kdistill.rl.trainer import PPOTrainer, start_or_resume
from test_ppo import make_trainer, small_config, toy  # noqa: F401  (toy is a fixture)
from test_teacher import _metrics_without_timing

CONFIG = small_config(num_steps=40)  # episodes of 30 steps straddle rollouts


def on_workers(domain, rollout_workers: int, iterations: int = 3, run_dir=None, every: int = 2) -> PPOTrainer:
    """``make_trainer``'s run, with its rollouts on ``rollout_workers`` pinned workers of the local executor."""
    base = make_trainer(domain, iterations=iterations, config=CONFIG, run_dir=run_dir, every=every)
    base.close()
    return PPOTrainer(domain, base.settings, base.teacher_spec, base.teacher_config, CONFIG, run_dir=run_dir,
                      executor=LocalExecutor(), rollout_workers=rollout_workers)


def recorded_rollouts(trainer: PPOTrainer, **train_kw) -> list[dict[str, torch.Tensor]]:
    """Train, keeping every rollout's batch."""
    batches, rollout = [], trainer.rollout
    trainer.rollout = lambda: batches.append(rollout()) or batches[-1]
    try:
        trainer.train(**train_kw)
    finally:
        trainer.close()
    return [b for b, _ in batches]


def test_slices_cover_the_envs_once():
    assert [(s.start, s.count) for s in plan_slices(8, 3)] == [(0, 3), (3, 3), (6, 2)]
    with pytest.raises(KdistillError, match="--workers 9 exceeds the 8 envs"):
        plan_slices(8, 9)


def test_trajectories_do_not_depend_on_how_the_envs_are_sliced(toy):
    torch.set_num_threads(1)
    runs = {k: recorded_rollouts(on_workers(toy, k)) for k in (1, 2, 3)}
    assert len(runs[1]) == 3 and runs[1][0]["obs"].shape[0] == CONFIG.batch_size
    for k in (2, 3):  # only the batching of the policy's forward passes differs: float rounding
        for a, b in zip(runs[1], runs[k]):
            assert sorted(a) == sorted(b)
            for key in a:
                torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=f"{k} workers: {key}")


def test_resume_on_rollout_workers_gives_the_same_result_as_an_uninterrupted_run(toy, tmp_path):
    torch.set_num_threads(1)
    full = on_workers(toy, 2, iterations=5, run_dir=tmp_path / "full")
    recorded_rollouts(full)
    part = on_workers(toy, 2, iterations=5, run_dir=tmp_path / "part")
    recorded_rollouts(part, stop_at_iteration=3)  # "killed" after iteration 3: the checkpoint of iteration 2 survives
    assert latest_checkpoint(tmp_path / "part").name == f"ckpt-{2 * CONFIG.batch_size:012d}"
    resumed = start_or_resume(toy, part.settings, part.teacher_spec, part.teacher_config, CONFIG, tmp_path / "part",
                              resume=True, executor=LocalExecutor(), rollout_workers=2)
    recorded_rollouts(resumed)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    metrics = _metrics_without_timing(tmp_path / "part" / "metrics.jsonl")
    assert metrics == _metrics_without_timing(tmp_path / "full" / "metrics.jsonl")
    assert [m["rollout_workers"] for m in metrics] == [2] * 5


def test_a_worker_that_lost_its_state_restarts_its_slice_and_loses_no_sample(toy):
    torch.set_num_threads(1)
    steady = recorded_rollouts(on_workers(toy, 2, iterations=2, every=10))
    reset_at_1 = recorded_rollouts(on_workers(toy, 2, iterations=2, every=1))  # every episode restarts at iteration 1
    trainer = on_workers(toy, 2, iterations=2, every=10)
    trainer.train(stop_at_iteration=1)
    trainer.pool.states[1].clear()  # worker 1 was replaced: its envs and episodes are gone
    restarted = recorded_rollouts(trainer)[0]
    assert trainer.iteration == 2 and trainer.env_steps == 2 * CONFIG.batch_size
    assert restarted["obs"].shape[0] == CONFIG.batch_size  # every slot's steps, each once
    half = CONFIG.num_envs // 2

    def slots(batch, key, part):
        return batch[key].reshape(CONFIG.num_steps, CONFIG.num_envs, *batch[key].shape[1:])[:, part]

    for key in ("obs", "actions", "logp", "values", "dones"):
        # worker 0 went on as if nothing happened; worker 1 restarted its episodes as after a checkpoint
        assert torch.equal(slots(restarted, key, slice(None, half)), slots(steady[1], key, slice(None, half))), key
        assert torch.equal(slots(restarted, key, slice(half, None)), slots(reset_at_1[1], key, slice(half, None))), key
    assert not torch.equal(slots(restarted, "obs", slice(half, None)), slots(steady[1], "obs", slice(half, None)))
