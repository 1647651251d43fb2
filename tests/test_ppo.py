"""PPO math, task sampling, vector envs, and learning on the toy domain."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdistill.rl.distributions import gaussian_log_prob
from kdistill.rl.normalise import ObsNormalizer
from kdistill.rl.ppo import PPOConfig, compute_gae, learning_rate, ppo_update
from kdistill.rl.sampling import BalancedSampler, FixedProbsSampler, UniformSampler
from kdistill.rl.trainer import PPOTrainer, RunSettings
from kdistill.rl.vec import SubprocVecEnv, SyncVecEnv

TOY = Path(__file__).with_name("ppo_toy.py")


@pytest.fixture
def toy(monkeypatch):
    """The toy domain, registered as a plugin file (as a user's own plugin would be)."""
    from kdistill.plugins import get_domain, reset_plugins

    monkeypatch.setenv("KDISTILL_PLUGINS", str(TOY))
    reset_plugins()
    yield get_domain("toy")
    reset_plugins()


def small_config(**kw) -> PPOConfig:
    base = dict(num_envs=8, num_steps=64, epochs=4, minibatch_size=128, sampling_warmup_iterations=3, lr=1e-3)
    base.update(kw)
    return PPOConfig(**base)


def make_trainer(domain, iterations=4, config=None, teacher="toy_tf", preset="cpu", seed=0, run_dir=None, every=2, workers=0,
                 evaluation=None):
    from kdistill.plugins import get_plugins

    config = config or small_config()
    spec = get_plugins().teachers.get(teacher)
    settings = RunSettings(domain="toy", tasks=list(domain.splits()["train"]), teacher=teacher, preset=preset, seed=seed,
                           total_steps=config.batch_size * iterations, checkpoint_every=every)
    return PPOTrainer(domain, settings, spec, spec.config_cls.presets()[preset], config, run_dir=run_dir, workers=workers,
                      evaluation=evaluation)


def trained_run(domain, run_dir, iterations=2, **kw) -> PPOTrainer:
    """A finished, closed trainer of ``iterations`` iterations that checkpointed into ``run_dir``."""
    torch.set_num_threads(1)
    trainer = make_trainer(domain, iterations=iterations, run_dir=run_dir, **kw)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer


# GAE and the update --------------------------------------------------------------------------------

def gae_by_definition(r, v, done, timeout, last_v, gamma, lam):
    """Advantage as the explicit (gamma*lam)-discounted sum of TD errors up to the episode's end."""
    steps, n = r.shape
    adv = np.zeros_like(r)
    for e in range(n):
        for t in range(steps):
            total, weight = 0.0, 1.0
            for k in range(t, steps):
                next_v = last_v[e] if k == steps - 1 else v[k + 1, e]
                if timeout[k, e]:
                    delta = 0.0  # time-limit step: its return is its own value
                else:
                    delta = r[k, e] + (0.0 if done[k, e] else gamma * next_v) - v[k, e]
                total += weight * delta
                if done[k, e]:
                    break
                weight *= gamma * lam
            adv[t, e] = total
    return adv


def test_gae_follows_the_definition_with_time_limits():
    rng = np.random.default_rng(3)
    steps, n = 7, 3
    r, v, last_v = rng.normal(size=(steps, n)), rng.normal(size=(steps, n)), rng.normal(size=n)
    done = np.zeros((steps, n), bool)
    timeout = np.zeros((steps, n), bool)
    done[2, 0] = True  # a fall
    done[4, 1] = timeout[4, 1] = True  # a time limit
    done[6, 2] = True  # a fall on the last step
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    ret, adv = compute_gae(t(r), t(v), t(done.astype(float)), t(timeout.astype(float)), t(last_v), 0.99, 0.95)
    expected = gae_by_definition(r, v, done, timeout, last_v, 0.99, 0.95)
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), expected + v, atol=1e-12)
    assert ret[4, 1].item() == pytest.approx(v[4, 1])  # no bootstrap from the final observation
    assert ret[2, 0].item() == pytest.approx(r[2, 0])  # a fall: reward only


def test_learning_rate_warms_up_then_follows_a_cosine():
    cfg = PPOConfig(lr=1e-3, min_lr=1e-5, warmup_iterations=5, warmup_factor=0.1)
    total = 100
    cos = lambda i: 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * i / total))
    assert learning_rate(cfg, 0, total) == pytest.approx(0.1 * cos(0))
    assert learning_rate(cfg, 2, total) == pytest.approx(cos(2) * (0.1 * 0.6 + 0.4))
    assert learning_rate(cfg, 5, total) == pytest.approx(cos(5))
    assert learning_rate(cfg, 50, total) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(cfg, total, total) == pytest.approx(1e-5)


def test_log_prob_ignores_padded_action_slots():
    mu = torch.tensor([[0.1, -0.2, 5.0]])
    act = torch.tensor([[0.3, 0.0, -7.0]])
    mask = torch.tensor([[False, False, True]])
    expected = sum(torch.distributions.Normal(mu[0, i], 0.9).log_prob(act[0, i]).item() for i in range(2))
    assert gaussian_log_prob(mu, 0.9, act, mask).item() == pytest.approx(expected, rel=1e-6)


class _Linear(torch.nn.Module):
    action_std = 0.9

    def __init__(self):
        super().__init__()
        self.pi = torch.nn.Linear(2, 2)
        self.v = torch.nn.Linear(2, 1)

    def forward(self, obs):
        return self.pi(obs["obs"]), self.v(obs["obs"])[:, 0]


def _batch(n=64, seed=0, logp_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    model = _Linear()
    obs = torch.randn(n, 2, generator=g)
    with torch.no_grad():
        mu, v = model({"obs": obs})
    act = mu + 0.9 * torch.randn(n, 2, generator=g)
    mask = torch.zeros(n, 2, dtype=torch.bool)
    logp = gaussian_log_prob(mu, 0.9, act, mask) + logp_shift
    batch = {"obs": obs, "actions": act, "act_mask": mask, "logp": logp, "values": v,
             "returns": v + torch.randn(n, generator=g)}
    return model, batch


def test_kl_early_stop_aborts_the_whole_update():
    cfg = PPOConfig(num_envs=1, num_steps=64, epochs=3, minibatch_size=16, kl_target_coef=5.0)
    # logp_old far above logp: approx KL = 1.0 > 0.05 on the first minibatch -> no step at all
    model, batch = _batch(logp_shift=1.0)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    stats = ppo_update(model, opt, batch, ["obs"], cfg, torch.Generator().manual_seed(0))
    assert stats["early_stop"] and stats["minibatches"] == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # without the KL stop the same batch trains for every minibatch of every epoch
    cfg_off = PPOConfig(num_envs=1, num_steps=64, epochs=3, minibatch_size=16, kl_target_coef=None)
    model, batch = _batch(logp_shift=1.0)
    stats = ppo_update(model, torch.optim.Adam(model.parameters(), lr=1e-2), batch, ["obs"], cfg_off,
                       torch.Generator().manual_seed(0))
    assert not stats["early_stop"] and stats["minibatches"] == 3 * 4


def test_value_loss_is_clipped_around_the_old_value():
    # one minibatch, one epoch, policy gradient zero (advantages all equal -> normalised to 0)
    cfg = PPOConfig(num_envs=1, num_steps=4, epochs=1, minibatch_size=4, kl_target_coef=None, value_coef=1.0,
                    max_grad_norm=1e9, clip_eps=0.2)
    model, batch = _batch(n=4)
    with torch.no_grad():
        model.v.bias += 1.0  # current values now 1.0 above the old ones: outside the 0.2 clip range
        new_v = model({"obs": batch["obs"]})[1]
    batch["returns"] = batch["values"] + 3.0  # returns above both: unclipped error is smaller, clipped wins
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    bias_before = model.v.bias.item()
    ppo_update(model, opt, batch, ["obs"], cfg, torch.Generator().manual_seed(0))
    # the max picks the clipped term, whose gradient w.r.t. the value is zero -> the value head does not move
    err_unclipped = (new_v - batch["returns"]) ** 2
    err_clipped = (batch["values"] + 0.2 - batch["returns"]) ** 2
    assert torch.all(err_clipped > err_unclipped)
    assert model.v.bias.item() == pytest.approx(bias_before)


# task sampling ------------------------------------------------------------------------------------------

def test_balanced_sampler_favours_short_episodes_after_warmup():
    s = BalancedSampler(["a", "b", "c"], alpha=1.0, warmup_iterations=2, ema=0.1, min_episodes=3)
    lengths_a = [100, 200, 300, 50, 1000]
    for length in lengths_a:
        s.update("a", length)
    for length in [1000] * 5:
        s.update("b", length)
    s.next_iteration()
    np.testing.assert_allclose(s.probs(), [1 / 3] * 3)  # still warming up
    s.next_iteration()
    # a: mean of the first 3 (200), then EMA 0.1 over 50 and 1000
    ema_a = 200.0
    for length in lengths_a[3:]:
        ema_a = 0.1 * length + 0.9 * ema_a
    w = np.array([1000 / ema_a, 1000 / 1000, 0.0])
    w[2] = w[:2].max()  # no episode of c yet: drawn like the most favoured task
    np.testing.assert_allclose(s.probs(), w / w.sum())
    # state round trip
    t = BalancedSampler(["a", "b", "c"], alpha=1.0, warmup_iterations=2, ema=0.1, min_episodes=3)
    t.load_state(s.state())
    np.testing.assert_allclose(t.probs(), s.probs())
    counts = np.bincount([["a", "b", "c"].index(t.sample(np.random.default_rng(i))) for i in range(3000)], minlength=3)
    np.testing.assert_allclose(counts / 3000, s.probs(), atol=0.04)


def test_sampler_refuses_other_tasks_state():
    from kdistill.errors import CheckpointError

    with pytest.raises(CheckpointError):
        UniformSampler(["a"]).load_state(BalancedSampler(["a", "b"]).state())


# vector envs --------------------------------------------------------------------------------------------

def _play(vec, steps=70, seed=5):
    rng = np.random.default_rng(0)
    obs = vec.reset(seed=seed)
    trace, episodes = [obs["obs"].copy()], []
    for _ in range(steps):
        obs, rew, term, trunc, infos = vec.step(rng.uniform(-1, 1, (vec.num_envs, 3)).astype(np.float32))
        trace.append(obs["obs"].copy())
        episodes += [i["episode"] for i in infos if "episode" in i]
    return np.stack(trace), episodes


def test_sync_vec_env_auto_resets_and_reports_raw_returns(toy):
    from ppo_toy import MAX_STEPS

    vec = SyncVecEnv.from_domain(toy, ["two", "three"], 3, seed=1)
    obs = vec.reset(seed=2)
    assert obs["obs"].shape == (3, 3, 4) and obs["act_mask"].shape == (3, 3)
    total = np.zeros(3)
    for _t in range(MAX_STEPS):
        obs, rew, term, trunc, infos = vec.step(np.zeros((3, 3), np.float32))
        total += rew
    assert trunc.all() and not term.any()
    for i, info in enumerate(infos):
        assert info["episode"]["length"] == MAX_STEPS
        assert info["episode"]["return"] == pytest.approx(total[i], rel=1e-5)
    # the returned obs already starts the next episode: positions near 0 again (reset noise +-0.1)
    real = ~obs["obs_mask"]
    assert np.all(np.abs(obs["obs"][..., 0][real]) <= 0.1)
    vec.close()


def test_vec_env_is_reproducible_and_workers_match_their_own_seeding(toy):
    a, ea = _play(SyncVecEnv.from_domain(toy, list(toy.splits()["train"]), 4, seed=0))
    b, eb = _play(SyncVecEnv.from_domain(toy, list(toy.splits()["train"]), 4, seed=99))  # reset seed decides
    np.testing.assert_array_equal(a, b)
    assert ea == eb and len(ea) >= 4
    p1 = SubprocVecEnv.from_domain(toy, list(toy.splits()["train"]), 4, workers=2)
    p2 = SubprocVecEnv.from_domain(toy, list(toy.splits()["train"]), 4, workers=2)
    try:
        c, ec = _play(p1)
        d, ed = _play(p2)
    finally:
        p1.close()
        p2.close()
    np.testing.assert_array_equal(c, d)
    assert ec == ed and c.shape == a.shape


def test_worker_envs_follow_pushed_probabilities(toy):
    tasks = list(toy.splits()["train"])
    sampler = FixedProbsSampler(tasks)
    vec = SubprocVecEnv.from_domain(toy, tasks, 4, workers=2, sampler=sampler)
    try:
        sampler.set_probs([0, 0, 1, 0])  # only "one"
        vec.sync_sampler()
        vec.reset(seed=0)
        for _ in range(31):
            _, _, _, _, infos = vec.step(np.zeros((4, 3), np.float32))
        assert {i["task"] for i in infos} == {tasks[2]}
    finally:
        vec.close()


# learning --------------------------------------------------------------------------------------------------

def _deterministic_return(domain, trainer) -> float:
    from kdistill.evaluate import evaluate_policy
    from kdistill.policy import TeacherPolicy

    policy = TeacherPolicy(copy.deepcopy(trainer.model), ObsNormalizer.from_state(trainer.obs_norm.state()), trainer.meta())
    return evaluate_policy(domain, policy, list(domain.splits()["train"]), episodes=4, random_baseline=False)["summary"]["mean_return"]


def test_ppo_improves_the_return_on_the_toy_domain(toy):
    torch.set_num_threads(1)
    trainer = make_trainer(toy, iterations=20, every=100)
    try:
        before = _deterministic_return(toy, trainer)
        last = trainer.train()
        after = _deterministic_return(toy, trainer)
    finally:
        trainer.close()
    assert last["iteration"] == 20 and last["env_steps"] == 20 * 512
    # the toy's optimum is close to 30 per episode; the untrained policy gets about 9
    assert after > before + 6.0, (before, after)
