"""Teacher architectures, checkpoints, exact resume, crash safety and the ``teacher train`` command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from kdistill.bench.flops import parameter_count
from kdistill.domain import Layout
from kdistill.errors import CheckpointError, KdistillError
from kdistill.io import latest_checkpoint, load_run_checkpoint, read_jsonl
from kdistill.rl.ppo import PPOConfig
from kdistill.rl.trainer import start_or_resume
from kdistill.teachers.transformer import ModuMorphTeacherConfig, TransformerTeacherConfig, build_modumorph_teacher, build_transformer_teacher
from test_ppo import TOY, make_trainer, small_config, toy, trained_run  # noqa: F401  (toy is a fixture)

UNIMAL_LAYOUT = Layout(max_tokens=12, obs_features=52, student_features=tuple(range(13)) + (30, 31, 41, 42),
                       context_features=53, actions_per_token=2)


def _obs(layout: Layout, batch: int, real: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(layout.max_tokens).expand(batch, -1) >= real
    return {"obs": torch.randn(batch, layout.max_tokens, layout.obs_features, generator=g),
            "obs_mask": mask.clone(),
            "context": torch.randn(batch, layout.max_tokens, layout.context_features, generator=g)}


# architecture ----------------------------------------------------------------------------------------------

def test_paper_actor_has_the_reference_parameter_count():
    d, ff, layers, f, a = 128, 1024, 5, 52, 2
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * (2 * d)  # attn, out, FF, 2 LNs
    expected_actor = (f * d + d) + layers * per_layer + (d * a + a)
    expected_critic = (f * d + d) + layers * per_layer + (d + 1)
    model = build_transformer_teacher(UNIMAL_LAYOUT, TransformerTeacherConfig.presets()["paper"])
    assert parameter_count(model.actor) == expected_actor == 1_656_322  # reference 3.1
    assert parameter_count(model.critic) == expected_critic
    assert model.action_std == 0.9


def test_paper_initialisation_follows_the_reference():
    torch.manual_seed(0)
    model = build_transformer_teacher(UNIMAL_LAYOUT, TransformerTeacherConfig.presets()["paper"])
    w = model.actor.embed.weight
    assert w.abs().max() <= 0.1 and w.abs().max() > 0.09  # U(-0.1, 0.1)
    last = model.actor.decoder[-1]
    assert last.weight.abs().max() <= 0.01 and torch.count_nonzero(last.bias) == 0
    assert all(layer.norm_first and layer.self_attn.batch_first for layer in model.actor.layers)


@pytest.mark.parametrize("build,cfg", [(build_transformer_teacher, TransformerTeacherConfig(d_model=32, num_layers=2, feedforward=64)),
                                       (build_modumorph_teacher, ModuMorphTeacherConfig(d_model=32, num_layers=2, feedforward=64))])
def test_padding_is_ignored_and_tokens_have_no_position(build, cfg):
    torch.manual_seed(0)
    model = build(UNIMAL_LAYOUT, cfg).train()
    obs = _obs(UNIMAL_LAYOUT, 3, real=5)
    mu, value = model(obs)
    assert mu.shape == (3, 24) and value.shape == (3,)
    # changing padded tokens changes nothing for real tokens, nor the value
    noisy = {k: v.clone() for k, v in obs.items()}
    noisy["obs"][:, 5:] += 100.0
    noisy["context"][:, 5:] -= 50.0
    mu2, value2 = model(noisy)
    torch.testing.assert_close(mu2[:, :10], mu[:, :10])
    torch.testing.assert_close(value2, value)
    # permuting real tokens permutes their actions (no positional embedding)
    perm = torch.tensor([3, 0, 4, 1, 2] + list(range(5, 12)))
    permuted = {k: v[:, perm] for k, v in obs.items()}
    mu3, value3 = model(permuted)
    torch.testing.assert_close(mu3.view(3, 12, 2)[:, :5], mu.view(3, 12, 2)[:, perm[:5]], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(value3, value, atol=1e-5, rtol=1e-4)


def test_value_is_the_mean_of_real_token_values():
    torch.manual_seed(1)
    model = build_transformer_teacher(UNIMAL_LAYOUT, TransformerTeacherConfig(d_model=32, num_layers=1, feedforward=64))
    obs = _obs(UNIMAL_LAYOUT, 2, real=7)
    per_token = model.critic(obs["obs"], obs["obs_mask"])[..., 0]
    torch.testing.assert_close(model.value(obs), per_token[:, :7].mean(-1))


def test_modumorph_attention_depends_on_context_only():
    torch.manual_seed(2)
    cfg = ModuMorphTeacherConfig(d_model=32, num_layers=1, feedforward=64)
    model = build_modumorph_teacher(UNIMAL_LAYOUT, cfg)
    layer, net = model.actor.layers[0], model.actor
    obs_a, obs_b = _obs(UNIMAL_LAYOUT, 1, real=6, seed=0), _obs(UNIMAL_LAYOUT, 1, real=6, seed=1)
    obs_b["context"] = obs_a["context"]
    weights = []
    for obs in (obs_a, obs_b):
        ctx = layer.norm_context(net.attention_context(obs["context"]))
        h = torch.randn(1, 12, 32)
        weights.append(layer.attn(ctx, ctx, h, key_padding_mask=obs["obs_mask"])[1])
    torch.testing.assert_close(weights[0], weights[1])
    # and the model does read the context: another context changes the actions
    other = dict(obs_a, context=obs_a["context"] + 1.0)
    with torch.no_grad():
        for p in model.actor.embed_weight.parameters():
            p.add_(0.01 * torch.randn_like(p))
        assert not torch.allclose(model.mu(obs_a), model.mu(other))


def test_inference_fast_path_agrees_with_training_path():
    torch.manual_seed(3)
    model = build_transformer_teacher(UNIMAL_LAYOUT, TransformerTeacherConfig.presets()["cpu"])
    obs = _obs(UNIMAL_LAYOUT, 8, real=9)
    mu_train = model.mu(obs)
    model.eval()
    with torch.inference_mode():
        mu_eval = model.mu(obs)
    torch.testing.assert_close(mu_eval[:, :18], mu_train.detach()[:, :18], atol=1e-5, rtol=1e-4)


def test_paper_presets_train_a_few_iterations(toy, tmp_path):
    torch.set_num_threads(1)
    cfg = PPOConfig.presets()["paper"]
    small = PPOConfig(**{**cfg.to_dict(), "num_envs": 2, "num_steps": 32, "minibatch_size": 32, "epochs": 2})
    trainer = make_trainer(toy, iterations=2, config=small, preset="paper", run_dir=tmp_path / "run")
    try:
        n_actor = parameter_count(trainer.model.actor)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        last = trainer.train()
    finally:
        trainer.close()
    d, ff = 128, 1024
    assert n_actor == (4 * d + d) + 5 * (4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d) + (d + 1)  # toy: 4 features, 1 action
    assert last["iteration"] == 2 and last["minibatches"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


# checkpoints and resume ------------------------------------------------------------------------------------

def test_checkpoint_round_trip(toy, tmp_path):
    from kdistill.loading import load_policy

    trainer = trained_run(toy, tmp_path / "run")
    tensors, meta = load_run_checkpoint(tmp_path / "run")
    assert meta["kind"] == "teacher" and meta["domain"] == "toy" and meta["arch"] == "toy_tf"
    assert meta["counters"]["env_steps"] == 2 * 512 and Layout.from_dict(meta["layout"]) == toy.layout
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v)
    assert any(k.startswith("optim.") for k in tensors) and "rng.torch" in tensors
    policy = load_policy(tmp_path / "run", domain="toy")
    obs = toy.make_env("three").reset(seed=0)[0]
    batch = {k: np.stack([v, v]) for k, v in obs.items()}
    feed = {k: torch.from_numpy(v) for k, v in batch.items()}
    feed["obs"] = torch.from_numpy(trainer.obs_norm.normalize(batch["obs"]))
    with torch.no_grad():
        expected = trainer.model.mu(feed).numpy()
    np.testing.assert_allclose(policy.act(batch), expected, atol=1e-6)
    assert not np.allclose(policy.act(batch, deterministic=False), expected)


def _metrics_without_timing(path):
    drop = {"rollout_s", "update_s", "steps_per_s", "checkpoint"}
    return [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(path)]


@pytest.mark.parametrize("teacher", ["toy_tf", "toy_modu"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(toy, tmp_path, teacher):
    from kdistill.plugins import get_plugins

    torch.set_num_threads(1)
    config = small_config(num_steps=40)  # episodes of 30 steps straddle iterations and checkpoints
    full = make_trainer(toy, iterations=5, config=config, teacher=teacher, run_dir=tmp_path / "full", every=2)
    try:
        full.train()
    finally:
        full.close()

    part = make_trainer(toy, iterations=5, config=config, teacher=teacher, run_dir=tmp_path / "part", every=2)
    try:
        part.train(stop_at_iteration=3)  # "killed" after iteration 3: the checkpoint of iteration 2 survives
    finally:
        part.close()
    assert latest_checkpoint(tmp_path / "part").name == f"ckpt-{2 * config.batch_size:012d}"
    spec = get_plugins().teachers.get(teacher)
    resumed = start_or_resume(toy, part.settings, spec, part.teacher_config, config, tmp_path / "part", resume=True)
    try:
        assert resumed.iteration == 2
        resumed.train()
    finally:
        resumed.close()
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert _metrics_without_timing(tmp_path / "part" / "metrics.jsonl") == _metrics_without_timing(tmp_path / "full" / "metrics.jsonl")
    np.testing.assert_array_equal(resumed.obs_norm.rms.mean, full.obs_norm.rms.mean)


def test_a_stop_request_checkpoints_the_iteration_it_stops_at(toy, tmp_path):
    """A requested stop (SIGTERM in the CLI) writes a checkpoint between the periodic ones; resumed, the run ends
    where a run that checkpointed at that iteration ends."""
    from kdistill.plugins import get_plugins

    torch.set_num_threads(1)
    config = small_config(num_steps=40)
    straight = make_trainer(toy, iterations=4, config=config, run_dir=tmp_path / "a", every=3)
    try:
        straight.train()
    finally:
        straight.close()
    part = make_trainer(toy, iterations=4, config=config, run_dir=tmp_path / "b", every=10)
    try:
        last = part.train(should_stop=lambda: part.iteration >= 3)
    finally:
        part.close()
    assert last["stopped_on_request"] and part.iteration == 3
    assert latest_checkpoint(tmp_path / "b").name == f"ckpt-{3 * config.batch_size:012d}"
    spec = get_plugins().teachers.get("toy_tf")
    resumed = start_or_resume(toy, part.settings, spec, part.teacher_config, config, tmp_path / "b", resume=True)
    try:
        assert resumed.iteration == 3
        resumed.train()
    finally:
        resumed.close()
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_evaluation_during_a_run_keeps_the_best_and_leaves_training_alone(toy, tmp_path):
    """--eval-every: the run trains exactly as without it, logs a deterministic score per measurement, and best/
    holds the policy of the highest one, which scores the same when loaded and measured again; a resumed run goes
    on from best/'s record even when best/ is newer than the checkpoint it resumes from."""
    from kdistill.evaluate import evaluate_policy, evaluate_together
    from kdistill.loading import load_policy
    from kdistill.plugins import get_plugins
    from kdistill.rl.trainer import EvalSchedule

    torch.set_num_threads(1)
    config = small_config(num_steps=40)
    schedule = EvalSchedule(every=1, episodes=3)
    plain = make_trainer(toy, iterations=5, config=config, run_dir=tmp_path / "plain", every=2)
    full = make_trainer(toy, iterations=5, config=config, run_dir=tmp_path / "full", every=2, evaluation=schedule)
    for t in (plain, full):
        try:
            t.train()
        finally:
            t.close()
    for k, v in plain.model.state_dict().items():
        assert torch.equal(full.model.state_dict()[k], v), k
    evals = {"eval_return", "eval_s", "eval_best"}
    rows = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [{k: v for k, v in r.items() if k not in evals} for r in _metrics_without_timing(tmp_path / "full" / "metrics.jsonl")] \
        == _metrics_without_timing(tmp_path / "plain" / "metrics.jsonl")
    scores = [r["eval_return"] for r in rows]
    assert len(scores) == 5 and len(set(scores)) > 1
    best_at = int(np.argmax(scores))
    assert [bool(r.get("eval_best")) for r in rows] == [i == 0 or s > max(scores[:i]) for i, s in enumerate(scores)]
    kept = json.loads((latest_checkpoint(tmp_path / "full" / "best") / "meta.json").read_text())["best_eval"]
    assert kept["return"] == max(scores) and kept["iteration"] == best_at + 1 and kept["episodes"] == 3

    policy = load_policy(tmp_path / "full" / "best")
    tasks = list(full.settings.tasks)
    again = evaluate_together(toy, policy, tasks, episodes=3, seed=schedule.seed)
    assert np.mean(list(again.values())) == pytest.approx(max(scores), rel=1e-6)
    # the batched measurement starts each task where the protocol does and agrees with it task by task
    one_by_one = evaluate_policy(toy, policy, tasks, episodes=3, seed=schedule.seed, random_baseline=False)
    np.testing.assert_allclose([again[t] for t in tasks], [r["mean"] for r in one_by_one["tasks"]], rtol=1e-5)

    part = make_trainer(toy, iterations=5, config=config, run_dir=tmp_path / "part", every=2, evaluation=schedule)
    try:
        part.train(stop_at_iteration=3)  # best/ may now be from iteration 3, the checkpoint is from iteration 2
    finally:
        part.close()
    spec = get_plugins().teachers.get("toy_tf")
    resumed = start_or_resume(toy, part.settings, spec, part.teacher_config, config, tmp_path / "part", resume=True,
                              evaluation=schedule)
    try:
        assert resumed.iteration == 2 and resumed.best_eval["return"] == max(scores[:3])
        resumed.train()
    finally:
        resumed.close()
    assert resumed.best_eval == full.best_eval


def test_resume_refuses_another_config_or_domain(toy, tmp_path):
    from kdistill.loading import load_policy
    from kdistill.plugins import get_plugins

    torch.set_num_threads(1)
    trainer = make_trainer(toy, iterations=1, run_dir=tmp_path / "run")
    try:
        trainer.train()
    finally:
        trainer.close()
    spec = get_plugins().teachers.get("toy_tf")
    with pytest.raises(CheckpointError, match="teacher config"):
        start_or_resume(toy, trainer.settings, spec, spec.config_cls.presets()["paper"], trainer.config,
                        tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="PPO config"):
        start_or_resume(toy, trainer.settings, spec, trainer.teacher_config, small_config(epochs=1),
                        tmp_path / "run", resume=True)
    with pytest.raises(KdistillError, match="--resume"):
        start_or_resume(toy, trainer.settings, spec, trainer.teacher_config, trainer.config, tmp_path / "run", resume=False)
    with pytest.raises(CheckpointError, match="domain 'toy', not 'unimal'"):
        load_policy(tmp_path / "run", domain="unimal")


def test_init_starts_a_new_run_from_another_teachers_weights_and_statistics(toy, tmp_path):
    import attrs

    from kdistill.plugins import get_plugins

    source = trained_run(toy, tmp_path / "source")
    src_tensors, src_meta = load_run_checkpoint(tmp_path / "source")
    spec = get_plugins().teachers.get("toy_tf")
    settings = attrs.evolve(source.settings, seed=1, init=str(tmp_path / "source"))
    trainer = start_or_resume(toy, settings, spec, source.teacher_config, source.config, tmp_path / "run", resume=False)
    try:
        # the source's weights and observation statistics; a fresh optimiser, counters and reward statistics
        for k, v in trainer.model.state_dict().items():
            assert torch.equal(v, src_tensors[f"model.{k}"]), k
        np.testing.assert_array_equal(trainer.obs_norm.rms.mean, np.asarray(src_meta["normalizer"]["mean"]))
        np.testing.assert_array_equal(trainer.obs_norm.rms.var, np.asarray(src_meta["normalizer"]["var"]))
        assert trainer.obs_norm.rms.count == src_meta["normalizer"]["count"] > 1
        assert trainer.iteration == trainer.env_steps == 0 and not trainer.optimizer.state
        assert not np.any(trainer.reward_norm.ret)
        trainer.train(stop_at_iteration=2)
    finally:
        trainer.close()
    assert load_run_checkpoint(tmp_path / "run")[1]["run"]["init"] == str(tmp_path / "source")
    fresh = make_trainer(toy, iterations=2, seed=1)  # the same seed without --init starts elsewhere
    try:
        assert any(not torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(), trainer.model.state_dict().values()))
    finally:
        fresh.close()

    # what cannot start this run is refused before anything is written
    for what, meta, match in [("kind", {**src_meta, "kind": "student"}, "not a teacher"),
                              ("config", {**src_meta, "config": spec.config_cls.presets()["paper"].to_dict()}, "config differs"),
                              ("layout", {**src_meta, "layout": {**src_meta["layout"], "max_tokens": 5}}, "another layout")]:
        other = make_trainer(toy, iterations=2)
        try:
            with pytest.raises(CheckpointError, match=match):
                other.start_from(src_tensors, meta, what)
        finally:
            other.close()
    # a teacher saved before layouts had exteroception (no such key) has none, and starts this run
    older = make_trainer(toy, iterations=2)
    try:
        assert src_meta["layout"]["extero_features"] == 0
        older.start_from(src_tensors, {**src_meta, "layout": {k: v for k, v in src_meta["layout"].items()
                                                               if k != "extero_features"}}, "older")
        for k, v in older.model.state_dict().items():
            assert torch.equal(v, src_tensors[f"model.{k}"]), k
    finally:
        older.close()
    paper = attrs.evolve(settings, teacher_preset="paper")
    with pytest.raises(CheckpointError, match="--teacher-preset"):
        start_or_resume(toy, paper, spec, spec.config_cls.presets()["paper"], source.config, tmp_path / "paper", resume=False)
    assert not (tmp_path / "paper" / "metrics.jsonl").exists() and latest_checkpoint(tmp_path / "paper") is None


def test_critic_warmup_keeps_the_actor_until_its_iterations_are_done(toy, tmp_path):
    import attrs

    from kdistill.plugins import get_plugins

    torch.set_num_threads(1)
    trained_run(toy, tmp_path / "source")
    spec = get_plugins().teachers.get("toy_tf")
    base = make_trainer(toy, iterations=3)
    settings = attrs.evolve(base.settings, init=str(tmp_path / "source"), critic_warmup=2)
    base.close()
    trainer = start_or_resume(toy, settings, spec, base.teacher_config, base.config, tmp_path / "run", resume=False)
    try:
        def actor_critic():
            return ([p.detach().clone() for p in trainer.model.actor.parameters()],
                    [p.detach().clone() for p in trainer.model.critic.parameters()])

        actor0, critic0 = actor_critic()
        trainer.train(stop_at_iteration=2)
        actor2, critic2 = actor_critic()
        assert all(torch.equal(a, b) for a, b in zip(actor0, actor2))  # the warm-up left the actor as it was
        assert any(not torch.equal(a, b) for a, b in zip(critic0, critic2))
        assert all(p.requires_grad for p in trainer.model.parameters())
        trainer.train()
        actor3, _ = actor_critic()
        assert any(not torch.equal(a, b) for a, b in zip(actor2, actor3))  # then PPO trains both
    finally:
        trainer.close()
    assert load_run_checkpoint(tmp_path / "run")[1]["run"]["critic_warmup"] == 2


@pytest.mark.parametrize("rollout", ["learner", "executor"])
def test_frozen_observation_statistics_stay_those_the_run_started_with(toy, tmp_path, rollout):
    import attrs

    from kdistill.executors import LocalExecutor
    from kdistill.plugins import get_plugins

    torch.set_num_threads(1)
    trained_run(toy, tmp_path / "source")
    start = load_run_checkpoint(tmp_path / "source")[1]["normalizer"]
    spec = get_plugins().teachers.get("toy_tf")
    base = make_trainer(toy, iterations=2)
    base.close()
    executor = LocalExecutor() if rollout == "executor" else None
    for freeze in (True, False):
        settings = attrs.evolve(base.settings, init=str(tmp_path / "source"), freeze_obs_norm=freeze)
        run = tmp_path / f"run-{freeze}"
        trainer = start_or_resume(toy, settings, spec, base.teacher_config, base.config, run, resume=False, executor=executor)
        try:
            trainer.train()
        finally:
            trainer.close()
        saved = load_run_checkpoint(run)[1]["normalizer"]
        same = saved["count"] == start["count"] and saved["mean"] == start["mean"] and saved["var"] == start["var"]
        assert same == freeze


def test_teacher_train_command_starts_from_init_and_resumes_without_it(tmp_path, monkeypatch, capsys):
    source, run = tmp_path / "source", tmp_path / "run"
    base = ["teacher", "train", "toy", "--steps", "4096", "--threads", "1", "--json"]
    code, _, err = _cli([*base, "--out", str(source)], monkeypatch, capsys)
    assert code == 0, err
    code, out, err = _cli([*base, "--out", str(run), "--init", str(source), "--critic-warmup", "1"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["env_steps"] == 4096
    assert load_run_checkpoint(run)[1]["run"]["init"] == str(source)
    code, _, err = _cli([*base, "--out", str(run), "--resume", "--critic-warmup", "3"], monkeypatch, capsys)
    assert code == 2 and "--critic-warmup" in err and "Traceback" not in err
    code, _, err = _cli([*base, "--out", str(run), "--resume", "--lr", "1e-3"], monkeypatch, capsys)
    assert code == 2 and "preset's learning rate" in err and "Traceback" not in err
    # --lr replaces the preset's peak learning rate, and the run keeps it on resume
    code, _, err = _cli([*base, "--out", str(tmp_path / "slow"), "--lr", "2e-5", "--checkpoint-every", "1"], monkeypatch, capsys)
    assert code == 0, err
    assert load_run_checkpoint(tmp_path / "slow")[1]["ppo"]["lr"] == 2e-5
    assert max(r["lr"] for r in read_jsonl(tmp_path / "slow" / "metrics.jsonl")) <= 2e-5
    code, _, err = _cli([*base, "--out", str(tmp_path / "slow"), "--resume", "--steps", "8192"], monkeypatch, capsys)
    assert code == 0, err
    assert load_run_checkpoint(tmp_path / "slow")[1]["ppo"]["lr"] == 2e-5
    # --resume keeps the run's start; another --init is one line
    code, _, err = _cli([*base, "--out", str(run), "--resume", "--init", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "started from" in err and "Traceback" not in err
    code, out, err = _cli([*base, "--out", str(run), "--resume", "--steps", "8192"], monkeypatch, capsys)
    assert code == 0, err
    saved = load_run_checkpoint(run)[1]["run"]
    assert json.loads(out)["env_steps"] == 8192 and saved["init"] == str(source) and saved["critic_warmup"] == 1
    code, _, err = _cli([*base, "--out", str(tmp_path / "x"), "--init", str(tmp_path / "missing")], monkeypatch, capsys)
    assert code == 2 and "missing" in err
    # an --init that is not a teacher is refused before the new run's folder is made
    from kdistill.io import save_checkpoint

    save_checkpoint(tmp_path / "student" / "ckpt-000000000001", {}, {"kind": "student"})
    code, _, err = _cli([*base, "--out", str(tmp_path / "y"), "--init", str(tmp_path / "student")], monkeypatch, capsys)
    assert code == 2 and "not a teacher" in err and not (tmp_path / "y").exists()



def test_action_std_replaces_the_presets_and_an_init_may_differ_in_it(tmp_path, monkeypatch, capsys):
    from kdistill.loading import load_policy
    from kdistill.plugins import get_domain

    source, run = tmp_path / "source", tmp_path / "run"
    base = ["teacher", "train", "toy", "--steps", "4096", "--threads", "1", "--json"]
    code, _, err = _cli([*base, "--out", str(source)], monkeypatch, capsys)
    assert code == 0, err
    preset_std = load_run_checkpoint(source)[1]["config"]["action_std"]
    code, _, err = _cli([*base, "--out", str(run), "--init", str(source), "--action-std", "0.25"], monkeypatch, capsys)
    assert code == 0, err
    src_tensors = load_run_checkpoint(source)[0]
    meta = load_run_checkpoint(run)[1]
    assert preset_std != 0.25 and meta["config"]["action_std"] == 0.25 and meta["run"]["action_std"] == 0.25
    # the rest of the config is the source's, and the run's teacher samples with the new std
    assert {k: v for k, v in meta["config"].items() if k != "action_std"} == \
        {k: v for k, v in load_run_checkpoint(source)[1]["config"].items() if k != "action_std"}
    assert load_policy(run, get_domain("toy")).std == 0.25
    assert set(load_run_checkpoint(run)[0]) == set(src_tensors)
    # a resume keeps it and refuses another
    code, _, err = _cli([*base, "--out", str(run), "--resume", "--action-std", "0.5"], monkeypatch, capsys)
    assert code == 2 and "action std of 0.25" in err and "Traceback" not in err
    code, _, err = _cli([*base, "--out", str(source), "--resume", "--action-std", "0.5"], monkeypatch, capsys)
    assert code == 2 and "preset's action std" in err
    code, _, err = _cli([*base, "--out", str(run), "--resume", "--steps", "8192"], monkeypatch, capsys)
    assert code == 0, err
    assert load_run_checkpoint(run)[1]["config"]["action_std"] == 0.25

_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from kdistill.io import save_run_checkpoint
    run, step = sys.argv[1], int(sys.argv[2])  # each restart continues with larger steps, as a resumed run does
    while True:
        step += 1
        big = np.full(300_000, step, np.float32)  # a weights file large enough that a kill lands mid-write
        save_run_checkpoint(run, step, {"model.w": big}, {"kind": "teacher", "counters": {"env_steps": step}})
        print(step, flush=True)
""")


def test_a_process_killed_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    rng = np.random.default_rng(0)
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(run), str(attempt * 100_000)], stdout=subprocess.PIPE,
                                text=True)
        proc.stdout.readline()  # at least one checkpoint exists
        time.sleep(float(rng.uniform(0.05, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tensors, meta = load_run_checkpoint(run)
        step = meta["counters"]["env_steps"]
        assert np.all(tensors["model.w"].numpy() == step)  # weights and meta belong together
    # a torn weights file (as if the disk filled mid-write) falls back to the previous checkpoint
    newest = latest_checkpoint(run)
    data = (newest / "weights.safetensors").read_bytes()
    (newest / "weights.safetensors").write_bytes(data[: len(data) // 2])
    tensors, meta = load_run_checkpoint(run)
    # another complete checkpoint is taken: usually an older one, or a newer one whose pointer update the kill cut off
    assert meta["counters"]["env_steps"] != int(newest.name.split("-")[1])
    assert np.all(tensors["model.w"].numpy() == meta["counters"]["env_steps"])


# the command ------------------------------------------------------------------------------------------------

def _cli(args, monkeypatch, capsys):
    from kdistill.cli.app import main
    from kdistill.plugins import reset_plugins

    monkeypatch.setenv("KDISTILL_PLUGINS", str(TOY))
    reset_plugins()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    reset_plugins()
    return exc.value.code, out.out, out.err


def test_teacher_train_command_writes_a_run_and_resumes(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, out, err = _cli(["teacher", "train", "toy", "--out", str(run), "--steps", "8192", "--checkpoint-every", "1",
                           "--threads", "1", "--json"], monkeypatch, capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["env_steps"] == 8192 and first["iterations"] == 2 and first["tasks"] == 4
    assert first["task_mean_return"] == read_jsonl(run / "metrics.jsonl")[-1]["task_mean_return"] is not None
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["iteration"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    # an existing run is not overwritten by accident
    code, _, err = _cli(["teacher", "train", "toy", "--out", str(run), "--steps", "8192"], monkeypatch, capsys)
    assert code == 2 and "--resume" in err
    # the checkpoint interval decides where episodes restart: a resume keeps the run's
    code, _, err = _cli(["teacher", "train", "toy", "--out", str(run), "--resume", "--steps", "12288",
                         "--checkpoint-every", "2"], monkeypatch, capsys)
    assert code == 2 and "--checkpoint-every 1" in err
    # so does the envs' split over processes, which seeds them; --new-split accepts another one on purpose
    code, _, err = _cli(["teacher", "train", "toy", "--out", str(run), "--resume", "--steps", "12288", "--workers", "1"],
                        monkeypatch, capsys)
    assert code == 2 and "env-processes:0" in err and "--new-split" in err
    assert load_run_checkpoint(run)[1]["run"]["rollout"] == "env-processes:0"
    # --resume takes the run's settings and extends it to the new total
    code, out, err = _cli(["teacher", "train", "toy", "--out", str(run), "--resume", "--steps", "12288", "--threads", "1",
                           "--workers", "1", "--new-split", "--eval-every", "1", "--eval-episodes", "2", "--json"],
                         monkeypatch, capsys)
    assert code == 0, err
    resumed = json.loads(out)
    assert resumed["env_steps"] == 12288 and load_run_checkpoint(run)[1]["run"]["rollout"] == "env-processes:1"
    assert [r["iteration"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    # an evaluation switched on at the resume: one measurement, kept as the best so far, a loadable teacher folder
    assert resumed["best"]["return"] == read_jsonl(run / "metrics.jsonl")[-1]["eval_return"]
    assert resumed["best"]["episodes"] == 2 and resumed["best"]["env_steps"] == 12288
    assert latest_checkpoint(resumed["best"]["folder"]).name == "ckpt-000000012288"
    code, out, err = _cli(["teacher", "status", str(run), "--json"], monkeypatch, capsys)
    assert code == 0, err
    status = json.loads(out)
    assert status["best"] == resumed["best"] and status["last_eval_return"] == resumed["best"]["return"]
    # a bad preset is one clear line
    code, _, err = _cli(["teacher", "train", "toy", "--out", str(tmp_path / "x"), "--steps", "10", "--preset", "papper", "--teacher-preset", "cpu"],
                        monkeypatch, capsys)
    assert code == 2 and "unknown PPO preset 'papper'" in err


def test_teacher_train_command_stops_on_request_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    """A stop requested (SIGTERM) before the first iteration ends: one iteration, its checkpoint, exit code 143 and
    the --resume command; --resume then goes on from there."""
    from kdistill.procs import StopRequest

    enter = StopRequest.__enter__

    def signalled(self):
        enter(self)
        self.signal = "SIGTERM"  # as if the signal came during the first iteration
        return self

    monkeypatch.setattr(StopRequest, "__enter__", signalled)
    run = tmp_path / "run"
    code, _, err = _cli(["teacher", "train", "toy", "--out", str(run), "--steps", "40960", "--threads", "1"],
                        monkeypatch, capsys)
    assert code == 143 and "stopped by SIGTERM after iteration 1" in err and "--resume" in err, err
    assert latest_checkpoint(run).name == f"ckpt-{4096:012d}"
    monkeypatch.setattr(StopRequest, "__enter__", enter)
    code, out, err = _cli(["teacher", "train", "toy", "--out", str(run), "--resume", "--steps", "8192", "--threads", "1",
                           "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["iterations"] == 2 and [r["iteration"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_unimal_paper_teacher_trains_an_iteration(unimal_dir, tmp_path):
    from kdistill.plugins import get_domain, get_plugins, reset_plugins
    from kdistill.rl.trainer import PPOTrainer, RunSettings

    torch.set_num_threads(1)
    reset_plugins()
    domain = get_domain("unimal", data_dir=str(unimal_dir))
    spec = get_plugins().teachers.get(domain.default_teacher)
    paper = PPOConfig.presets()["paper"]
    tiny = PPOConfig(**{**paper.to_dict(), "num_envs": 2, "num_steps": 16, "minibatch_size": 16, "epochs": 1})
    settings = RunSettings(domain="unimal", tasks=domain.tasks("train")[:2], teacher=domain.default_teacher,
                           preset="paper", seed=0, total_steps=tiny.batch_size, checkpoint_every=1)
    trainer = PPOTrainer(domain, settings, spec, spec.config_cls.presets()["paper"], tiny, run_dir=tmp_path / "run")
    try:
        assert parameter_count(trainer.model.actor) == 1_656_322
        last = trainer.train()
    finally:
        trainer.close()
    assert last["iteration"] == 1 and last["minibatches"] == 2 and np.isfinite(last["v_loss"])
    tensors, meta = load_run_checkpoint(tmp_path / "run")
    assert meta["arch"] == "metamorph" and Layout.from_dict(meta["layout"]) == domain.layout


def test_task_mean_return_weighs_every_task_alike(toy):
    """``task_mean_return``: the mean over tasks of each task's last 10 training returns, whichever tasks the sampler
    favoured; recomputed here from the episodes each rollout reported."""
    from kdistill.rl.trainer import RECENT_PER_TASK

    torch.set_num_threads(1)
    trainer = make_trainer(toy, iterations=6, config=small_config(num_steps=40), every=100)
    episodes: list[list[tuple[str, float]]] = []
    rollout = trainer.rollout

    def spy():
        batch, info = rollout()
        episodes.append(list(zip(info["episode_tasks"], info["episode_returns"])))
        return batch, info

    trainer.rollout = spy
    rows: list[dict] = []
    try:
        trainer.train(on_iteration=rows.append)
    finally:
        trainer.close()
    by_task: dict[str, list[float]] = {}
    for row, eps in zip(rows, episodes):
        for task, ret in eps:
            by_task.setdefault(task, []).append(ret)
        want = np.mean([np.mean(r[-RECENT_PER_TASK:]) for r in by_task.values()]) if by_task else None
        assert row["tasks_with_episodes"] == len(by_task)
        assert (row["task_mean_return"] is None) if want is None else row["task_mean_return"] == pytest.approx(want)
    assert set(by_task) <= set(trainer.settings.tasks) and len(by_task) > 1
    assert max(len(r) for r in by_task.values()) > RECENT_PER_TASK  # the window, not every episode, counts


def test_teacher_status_reports_a_run_while_it_is_unfinished(tmp_path, monkeypatch, capsys):
    """`teacher status`: counters and per-task record of the newest checkpoint, the rate from metrics.jsonl and the
    time left, recomputed here from the files the run wrote; one clear line for a folder that is not a teacher run."""
    from kdistill.io import load_run_checkpoint, save_checkpoint
    from kdistill.procs import StopRequest

    enter = StopRequest.__enter__

    def signalled(self):
        enter(self)
        self.signal = "SIGTERM"
        return self

    monkeypatch.setattr(StopRequest, "__enter__", signalled)
    run = tmp_path / "run"
    code, _, err = _cli(["teacher", "train", "toy", "--out", str(run), "--steps", "40960", "--threads", "1"],
                        monkeypatch, capsys)
    assert code == 143, err
    monkeypatch.setattr(StopRequest, "__enter__", enter)
    code, out, err = _cli(["teacher", "status", str(run), "--json"], monkeypatch, capsys)
    assert code == 0, err
    s = json.loads(out)
    _, meta = load_run_checkpoint(run, as_torch=False)
    [m] = read_jsonl(run / "metrics.jsonl")
    assert (s["env_steps"], s["total_steps"], s["iteration"], s["done"]) == (4096, 40960, 1, False)
    assert s["steps_per_s"] == pytest.approx(4096 / (m["rollout_s"] + m["update_s"]))
    assert s["eta_s"] == pytest.approx((40960 - 4096) / s["steps_per_s"])
    assert [t["task"] for t in s["per_task"]] == meta["run"]["tasks"]
    assert sum(t["episodes"] for t in s["per_task"]) == meta["counters"]["episodes"] > 0
    for t in s["per_task"]:
        returns = meta["recent"]["by_task"].get(t["task"], [])
        assert t["recent_episodes"] == len(returns)
        assert t["recent_return"] == (pytest.approx(np.mean(returns)) if returns else None)
    assert s["task_mean_return"] == m["task_mean_return"]
    code, out, _ = _cli(["teacher", "status", str(run)], monkeypatch, capsys)
    assert code == 0 and "4,096 of 40,960 env steps (10.0%)" in out and meta["run"]["tasks"][0] in out
    # not a teacher run: one line, exit code 2
    code, _, err = _cli(["teacher", "status", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "no teacher checkpoint" in err and len(err.strip().splitlines()) == 1
    save_checkpoint(tmp_path / "student" / "ckpt-000000000001", {}, {"kind": "student"})
    code, _, err = _cli(["teacher", "status", str(tmp_path / "student")], monkeypatch, capsys)
    assert code == 2 and "kind 'student', not a teacher run" in err
    # a distilled teacher has epochs, not a PPO run's counters
    save_checkpoint(tmp_path / "distilled" / "ckpt-000000000001", {},
                    {"kind": "teacher", "counters": {"epoch": 1, "step": 2, "samples": 3}, "run": {"epochs": 1}})
    code, _, err = _cli(["teacher", "status", str(tmp_path / "distilled")], monkeypatch, capsys)
    assert code == 2 and "without a PPO run record" in err


def test_teacher_train_names_the_architecture_with_arch(tmp_path, monkeypatch, capsys):
    code, out, _ = _cli(["teacher", "train", "--help"], monkeypatch, capsys)
    assert code == 0 and "--arch" in out and "--teacher " not in out  # the alias works but is not advertised
    for option in ("--arch", "--teacher"):
        code, _, err = _cli(["teacher", "train", "toy", "--steps", "4096", "--out", str(tmp_path / option), option,
                             "nope"], monkeypatch, capsys)
        assert code == 2 and "unknown teacher 'nope'" in err and not (tmp_path / option).exists()


@pytest.mark.parametrize("domain_name", ["cartpole", "unimal"])
def test_a_stop_request_keeps_the_running_episodes(domain_name, unimal_dir, tmp_path):
    """Off the checkpoint schedule, a stop request's checkpoint holds the running episodes where the vector env can
    save them (cart-pole's and UNIMAL's can; the toy domain's above cannot): resumed, the run ends exactly where
    the run that was never stopped ends."""
    from kdistill.plugins import get_domain, get_plugins, reset_plugins
    from kdistill.rl.trainer import PPOTrainer, RunSettings

    torch.set_num_threads(1)
    reset_plugins()
    domain = get_domain(domain_name, data_dir=str(unimal_dir) if domain_name == "unimal" else None)
    spec = get_plugins().teachers.get(domain.default_teacher)
    config = PPOConfig(**{**PPOConfig.presets()["cpu"].to_dict(), "num_envs": 4, "num_steps": 32, "minibatch_size": 64,
                          "epochs": 1})
    settings = RunSettings(domain=domain_name, tasks=domain.tasks("train")[:3], teacher=domain.default_teacher,
                           preset="cpu", seed=0, total_steps=config.batch_size * 4, checkpoint_every=10)
    presets = spec.config_cls.presets()
    teacher_config = presets["cpu"] if "cpu" in presets else presets["small"]

    def run(folder, stop_at=None):
        trainer = PPOTrainer(domain, settings, spec, teacher_config, config, run_dir=folder)
        try:
            trainer.train(should_stop=None if stop_at is None else lambda: trainer.iteration >= stop_at)
        finally:
            trainer.close()
        return trainer

    straight = run(tmp_path / "a")
    part = run(tmp_path / "b", stop_at=2)
    assert part.iteration == 2
    tensors, _ = load_run_checkpoint(tmp_path / "b")
    assert any(k.startswith("episodes.env.") for k in tensors)
    resumed = start_or_resume(domain, settings, spec, teacher_config, config, tmp_path / "b", resume=True)
    try:
        assert resumed.iteration == 2
        resumed.train()
    finally:
        resumed.close()
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
