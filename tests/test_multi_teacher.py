"""Distillation from many teachers: per-task experts label their own tasks, teacher architectures as students,
and DAgger (aggregation, the mixing coefficient, resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdistill.distill.expert_data import CollectSettings, collect_expert_data, load_expert_data, load_expert_sets, read_expert_meta
from kdistill.distill.training import DistillConfig, distill, train_student
from kdistill.errors import KdistillError
from kdistill.loading import load_policy
from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, ExpertTrainer, export_experts

TINY = ExpertConfig.presets()["tiny"]
SMALL_DISTILL = DistillConfig(epochs=2, batch_size=256, checkpoint_every=1)


@pytest.fixture(scope="module")
def cartpole():
    from kdistill.plugins import get_domain

    return get_domain("cartpole")


@pytest.fixture(scope="module")
def experts(cartpole, tmp_path_factory):
    """Per-task experts of three cart-pole tasks (a few tiny PPO updates each), exported."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("experts")
    tasks = cartpole.tasks("train")[:3]
    settings = ExpertRunSettings(domain="cartpole", tasks=tasks, preset="tiny", seed=0, steps_per_task=3 * TINY.batch_size)
    ExpertTrainer(cartpole, settings, TINY, run_dir=root / "run").train()
    export_experts(root / "run", root / "experts")
    return tasks, root / "experts"


@pytest.fixture(scope="module")
def expert_data(cartpole, experts, tmp_path_factory):
    tasks, path = experts
    teacher = load_policy(path, domain="cartpole")
    out = tmp_path_factory.mktemp("data") / "data"
    collect_expert_data(cartpole, teacher, None, tasks, out, CollectSettings(samples_per_task=600, num_envs=4, seed=1),
                        teacher_ref=str(path))
    return out


def test_each_task_is_labelled_by_its_own_expert(cartpole, experts, expert_data):
    tasks, path = experts
    policy = load_policy(path, domain="cartpole")
    meta = read_expert_meta(expert_data)
    assert meta["teacher_sha256"] == policy.meta["weights_sha256"]
    mean = np.asarray(meta["normalizer"]["mean"])
    std = np.sqrt(np.asarray(meta["normalizer"]["var"]) + meta["normalizer"]["epsilon"])
    data = load_expert_data(expert_data)
    disagree = 0.0
    for k, _task in enumerate(tasks):
        rows = data.task_index == k
        raw = data.obs[rows] * std + mean  # the student view is the whole state here; invert the normaliser
        obs = {"obs": raw.astype(np.float32), "obs_mask": data.obs_mask[rows]}
        own = policy.act_tasks(obs, np.full(rows.sum(), k))
        np.testing.assert_allclose(data.mu[rows], own, rtol=1e-4, atol=1e-4)
        other = policy.act_tasks(obs, np.full(rows.sum(), (k + 1) % len(tasks)))
        disagree = max(disagree, float(np.abs(other - own).max()))
    assert disagree > 1e-3  # the experts differ, so the labels are truly per task


def test_the_fitted_normaliser_is_pinned_on_resume(cartpole, experts, expert_data):
    tasks, path = experts
    teacher = load_policy(path, domain="cartpole")
    before = read_expert_meta(expert_data)["normalizer"]
    summary = collect_expert_data(cartpole, teacher, None, tasks, expert_data,
                                  CollectSettings(samples_per_task=600, num_envs=4, seed=1), teacher_ref=str(path))
    assert summary["collected"] == [] and read_expert_meta(expert_data)["normalizer"] == before
    with pytest.raises(KdistillError, match="seed"):
        collect_expert_data(cartpole, teacher, None, tasks, expert_data,
                            CollectSettings(samples_per_task=600, num_envs=4, seed=2), teacher_ref=str(path))


def test_tasks_outside_the_fitted_normaliser_are_refused(cartpole, experts, tmp_path):
    """The folder's normaliser is fitted on the tasks of its first collection: adding others later would give their
    rows another normaliser than a single collection of all of them, so it is refused."""
    tasks, path = experts
    teacher = load_policy(path, domain="cartpole")
    settings = CollectSettings(samples_per_task=64, num_envs=2, seed=1)
    collect_expert_data(cartpole, teacher, None, tasks[:1], tmp_path / "d", settings, teacher_ref=str(path))
    assert read_expert_meta(tmp_path / "d")["normalizer_tasks"] == tasks[:1]
    with pytest.raises(KdistillError, match="fitted on the 1 tasks"):
        collect_expert_data(cartpole, teacher, None, tasks, tmp_path / "d", settings, teacher_ref=str(path))
    assert sorted(read_expert_meta(tmp_path / "d")["tasks"]) == tasks[:1]


def test_a_teacher_architecture_distils_into_an_ordinary_teacher(cartpole, expert_data, tmp_path):
    from kdistill.evaluate import evaluate_policy

    model, result = train_student(expert_data, "context-mlp", None, DistillConfig(epochs=6, batch_size=256, checkpoint_every=3),
                     out=tmp_path / "tf", domain="cartpole", student_preset="default")
    assert result["train_loss"] < json.loads((tmp_path / "tf" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    policy = load_policy(tmp_path / "tf", domain="cartpole")
    assert policy.kind == "teacher"
    data = load_expert_data(expert_data, with_static=True)
    # the loaded teacher reproduces what was trained: its actions on raw states match the run's model
    meta = read_expert_meta(expert_data)
    std = np.sqrt(np.asarray(meta["normalizer"]["var"]) + meta["normalizer"]["epsilon"])
    raw = (data.obs[:8] * std + np.asarray(meta["normalizer"]["mean"])).astype(np.float32)
    ctx = data.contexts[int(data.task_index[0])]
    obs = {"obs": raw, "obs_mask": data.obs_mask[:8], "act_mask": data.act_mask[:8],
           "context": np.repeat(ctx.tokens[None], 8, 0)}
    with torch.no_grad():
        expected = model.mu({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                                       {**obs, "obs": data.obs[:8]}.items()}).numpy()
    np.testing.assert_allclose(policy.act(obs), expected, rtol=1e-4, atol=1e-5)
    report = evaluate_policy(cartpole, policy, cartpole.tasks("train")[:2], episodes=2, random_baseline=False)
    assert report["summary"]["tasks"] == 2
    # resuming with the run's settings is a no-op; other settings are refused
    again = distill(expert_data, "context-mlp", None, DistillConfig(epochs=6, batch_size=256, checkpoint_every=3),
                    out=tmp_path / "tf", resume=True, domain="cartpole", student_preset="default")
    assert again["resumed_from_epoch"] == 6
    with pytest.raises(KdistillError, match="settings"):
        distill(expert_data, "context-mlp", None, DistillConfig(epochs=6, batch_size=128), out=tmp_path / "tf",
                resume=True, domain="cartpole", student_preset="default")


def test_old_shards_without_full_observations_are_refused_for_transformers(cartpole, expert_data, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    copy = tmp_path / "old"
    shutil.copytree(expert_data, copy)
    for shard in (copy / "shards").glob("*.safetensors"):
        arrays = load_file(str(shard))
        arrays.pop("static")
        save_file(arrays, str(shard))
    with pytest.raises(KdistillError, match="full observation"):
        distill(copy, "context-mlp", None, SMALL_DISTILL, out=tmp_path / "tf", domain="cartpole", student_preset="default")
    distill(copy, "mlp", None, SMALL_DISTILL, out=tmp_path / "mlp", domain="cartpole")  # students do not need it


def test_dagger_aggregates_relabels_and_resumes(cartpole, experts, expert_data, tmp_path):
    from kdistill.distill.dagger import DaggerSettings, run_dagger

    tasks, path = experts
    teacher = load_policy(path, domain="cartpole")
    settings = DaggerSettings(rounds=2, beta=0.5, samples_per_task=200, num_envs=4, epochs=1, seed=0)
    out = tmp_path / "dagger"
    summary = run_dagger(cartpole, teacher, str(path), expert_data, "mlp", None, SMALL_DISTILL, out, settings)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    base = len(load_expert_data(expert_data))
    assert [r["train_rows"] for r in summary["rounds"]] == [base, base + 3 * 200, base + 6 * 200]
    for r, beta in ((1, 0.5), (2, 0.25)):
        meta = read_expert_meta(out / f"data-{r}")
        assert meta["beta"] == beta and meta["normalizer"] == read_expert_meta(expert_data)["normalizer"]
        assert meta["actor"].endswith(f"round-{r - 1}")
        # aggregation relabels: every visited state carries the teacher's action for it, whoever acted
        data = load_expert_data(out / f"data-{r}")
        std = np.sqrt(np.asarray(meta["normalizer"]["var"]) + meta["normalizer"]["epsilon"])
        raw = (data.obs * std + np.asarray(meta["normalizer"]["mean"])).astype(np.float32)
        labels = teacher.act_tasks({"obs": raw, "obs_mask": data.obs_mask}, data.task_index)
        np.testing.assert_allclose(data.mu, labels, rtol=1e-4, atol=1e-4)
        # the played actions mix both policies: the previous round's student, recomputed here, played its mean
        # action at a share of about 1 - beta**r of the steps; the teacher's noisy samples never equal it
        actor = load_policy(out / f"round-{r - 1}", domain="cartpole")
        own = np.empty_like(data.action)
        for k, task in enumerate(data.tasks):
            rows = data.task_index == k
            actor.prepare(task, cartpole.context(task))
            own[rows] = actor.act({"obs": raw[rows], "obs_mask": data.obs_mask[rows]})
        played_student = np.isclose(data.action, own, atol=1e-5).all(axis=1).mean()
        assert abs(played_student - (1 - beta)) < 0.1, played_student
    final = load_policy(out, domain="cartpole")
    assert final.kind == "student" and final.meta["dagger"]["round"] == 2
    # round 2 starts from round 1's weights: pinned in its run
    first = json.loads((out / "round-2" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 1
    from kdistill.io import latest_checkpoint

    round2 = json.loads((latest_checkpoint(out / "round-2") / "meta.json").read_text())
    assert round2["init_from"] == str(latest_checkpoint(out / "round-1").resolve())
    # re-running resumes: nothing new is collected or trained
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors") if "ckpt" not in p.parent.name}
    again = run_dagger(cartpole, teacher, str(path), expert_data, "mlp", None, SMALL_DISTILL, out, settings)
    assert [r["train_rows"] for r in again["rounds"]] == [r["train_rows"] for r in summary["rounds"]]
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    with pytest.raises(KdistillError, match="other settings"):
        run_dagger(cartpole, teacher, str(path), expert_data, "mlp", None, SMALL_DISTILL, out,
                   DaggerSettings(rounds=2, beta=0.9, samples_per_task=200, num_envs=4, epochs=1))


def test_dagger_adopts_a_finished_run_as_round_0(cartpole, experts, expert_data, tmp_path):
    import attrs

    from kdistill.distill.dagger import DaggerSettings, run_dagger
    from kdistill.errors import CheckpointError
    from kdistill.io import latest_checkpoint, load_checkpoint

    tasks, path = experts
    teacher = load_policy(path, domain="cartpole")
    settings = DaggerSettings(rounds=1, beta=0.5, samples_per_task=100, num_envs=4, epochs=1, seed=0)
    plain = tmp_path / "plain"
    distill(expert_data, "mlp", None, SMALL_DISTILL, out=plain)
    # refused before anything is written: another student, other settings, an unfinished run, no run at all
    half = tmp_path / "half"
    train_student(expert_data, "mlp", None, attrs.evolve(SMALL_DISTILL, epochs=1), out=half)
    for round_0, student, config, match in ((plain, "hnmlp", SMALL_DISTILL, "cannot stand for"),
                                            (plain, "mlp", attrs.evolve(SMALL_DISTILL, lr=1e-4), "other settings"),
                                            (half, "mlp", SMALL_DISTILL, "trained 1 epoch, not the 2 asked for"),
                                            (tmp_path / "none", "mlp", SMALL_DISTILL, "no distillation checkpoint")):
        with pytest.raises(KdistillError, match=match):
            run_dagger(cartpole, teacher, str(path), expert_data, student, None, config, tmp_path / "refused", settings,
                       round_0=round_0)
        assert not (tmp_path / "refused").exists()
    with pytest.raises(KdistillError, match="inside it"):
        run_dagger(cartpole, teacher, str(path), expert_data, "mlp", None, SMALL_DISTILL, tmp_path, settings,
                   round_0=plain)

    adopted = run_dagger(cartpole, teacher, str(path), expert_data, "mlp", None, SMALL_DISTILL, tmp_path / "a", settings,
                         round_0=plain)
    assert adopted["rounds"][0]["train_rows"] == len(load_expert_data(expert_data))
    # round 0 is the finished run itself (its checkpoint and log, not a retraining)
    assert json.loads((tmp_path / "a" / "round-0" / "metrics.jsonl").read_text().splitlines()[-1]) == \
        json.loads((plain / "metrics.jsonl").read_text().splitlines()[-1])
    ours, theirs = load_checkpoint(latest_checkpoint(tmp_path / "a" / "round-0"))[0], load_checkpoint(latest_checkpoint(plain))[0]
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    # and the rounds after it are those of a DAgger run that distilled round 0 itself
    run_dagger(cartpole, teacher, str(path), expert_data, "mlp", None, SMALL_DISTILL, tmp_path / "b", settings)
    a, b = load_checkpoint(latest_checkpoint(tmp_path / "a"))[0], load_checkpoint(latest_checkpoint(tmp_path / "b"))[0]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # running it again resumes without copying or training anything
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*.safetensors")
             if p.relative_to(tmp_path / "a").parts[0].startswith(("round-", "data-"))}
    assert any("round-0" in str(p) for p in stamp)
    run_dagger(cartpole, teacher, str(path), expert_data, "mlp", None, SMALL_DISTILL, tmp_path / "a", settings,
               round_0=plain)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    # a DAgger run whose own round 0 is unfinished is not silently taken over by --round-0
    (tmp_path / "c").mkdir()
    train_student(expert_data, "mlp", None, attrs.evolve(SMALL_DISTILL, epochs=1), out=tmp_path / "c" / "round-0")
    with pytest.raises(CheckpointError, match="trained 1 epoch, not the 2 asked for"):
        run_dagger(cartpole, teacher, str(path), expert_data, "mlp", None, SMALL_DISTILL, tmp_path / "c", settings,
                   round_0=plain)


def test_cli_round_0_needs_dagger(tmp_path, expert_data):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "kdistill", "distill", "cartpole", "--data", str(expert_data), "--out",
                        str(tmp_path / "x"), "--round-0", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--round-0 is used with --dagger only" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_load_expert_sets_refuses_another_normaliser(cartpole, experts, expert_data, tmp_path):
    tasks, path = experts
    teacher = load_policy(path, domain="cartpole")
    other = tmp_path / "other"
    collect_expert_data(cartpole, teacher, None, tasks[:1], other, CollectSettings(samples_per_task=100, num_envs=2, seed=7),
                        teacher_ref=str(path), fit_tasks=tasks[:1])
    with pytest.raises(KdistillError, match="normaliser|normalizer"):
        load_expert_sets([expert_data, other])


def test_cli_collect_from_experts_and_distill_a_transformer_on_robots(tmp_path, unimal_dir, monkeypatch):
    """The UNIMAL path end to end, tiny: experts -> collect -> metamorph student -> an ordinary teacher."""
    from click.testing import CliRunner

    from kdistill.cli.app import app

    monkeypatch.setenv("KDISTILL_UNIMAL_DIR", str(unimal_dir))
    runner = CliRunner()

    def ok(*args):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout) if "--json" in args else res

    ok("experts", "train", "unimal", "--num-tasks", "2", "--preset", "tiny", "--steps-per-task", "128",
       "--out", str(tmp_path / "run"), "--json", "--threads", "1")
    ok("experts", "export", str(tmp_path / "run"), "--out", str(tmp_path / "experts"), "--json")
    ok("expert", "collect", "unimal", "--teacher", str(tmp_path / "experts"), "--num-tasks", "2",
       "--samples-per-task", "64", "--envs", "2", "--out", str(tmp_path / "data"), "--json")
    shard = next((tmp_path / "data" / "shards").glob("*.safetensors"))
    from safetensors.numpy import load_file

    static = load_file(str(shard))["static"]
    assert static.shape == (1, 12, 52) and np.abs(static).sum() > 0
    result = ok("distill", "unimal", "--data", str(tmp_path / "data"), "--student", "metamorph", "--student-preset",
                "cpu", "--epochs", "1", "--batch", "64", "--out", str(tmp_path / "tf"), "--json")
    assert result["train_rows"] == 128
    report = ok("eval", "unimal", "--policy", str(tmp_path / "tf"), "--num-tasks", "1", "--episodes", "1", "--json",
                "--no-random")
    assert report["summary"]["tasks"] == 1
    # DAgger with a transformer student: each round starts from the previous round's transformer; round 0 is the
    # finished run above, reused
    dagger = ok("distill", "unimal", "--data", str(tmp_path / "data"), "--student", "metamorph", "--student-preset",
                "cpu", "--epochs", "1", "--batch", "64", "--out", str(tmp_path / "tf-dagger"), "--dagger", "1",
                "--dagger-samples", "32", "--dagger-epochs", "1", "--teacher", str(tmp_path / "experts"), "--json",
                "--round-0", str(tmp_path / "tf"))
    assert [r["train_rows"] for r in dagger["rounds"]] == [128, 128 + 2 * 32]
    assert (tmp_path / "tf-dagger" / "round-0" / "metrics.jsonl").read_text() == (tmp_path / "tf" / "metrics.jsonl").read_text()
    assert load_policy(tmp_path / "tf-dagger", domain="unimal").kind == "teacher"


def _kick_trainer(cartpole, tasks, experts_path, coef, tmp_path=None, executor=None, seed=0, **kw):
    from kdistill.plugins import get_plugins
    from kdistill.rl.ppo import PPOConfig
    from kdistill.rl.trainer import PPOTrainer, RunSettings

    spec = get_plugins().teachers.get(cartpole.default_teacher)
    config = PPOConfig(num_envs=6, num_steps=64, epochs=2, minibatch_size=128, lr=3e-3, kl_target_coef=None)
    settings = RunSettings(domain="cartpole", tasks=tasks, teacher=cartpole.default_teacher, preset="cpu", seed=seed,
                           total_steps=10 * config.num_envs * config.num_steps, teacher_preset="small",
                           kickstart=str(experts_path) if coef else "", kickstart_coef=coef, freeze_obs_norm=True, **kw)
    return PPOTrainer(cartpole, settings, spec, spec.config_cls.presets()["small"], config, run_dir=tmp_path,
                      executor=executor)


def _assert_pulled_closer_than_without(kicked, batch, cartpole, tasks, path):
    """After 6 iterations the kickstarted actor is 10x+ closer to the labels of ``batch`` (its first rollout) than
    the same seed's run without the term."""
    plain = _kick_trainer(cartpole, tasks, path, 0.0)
    try:
        plain.rollout()  # the same draws as the kickstarted run's first rollout
        plain.train(stop_at_iteration=6)
    finally:
        plain.close()

    def gap(trainer) -> float:  # mean squared distance to the labels on the labelled states
        obs = {k: batch[k] for k in ("obs", "obs_mask", "act_mask", "context")}
        with torch.no_grad():
            mu = trainer.model(obs)[0]
        return float(((mu - batch["expert_mu"]) ** 2).mean())

    assert gap(kicked) < 0.1 * gap(plain)


def test_kickstarting_labels_each_visited_state_by_its_tasks_expert_and_pulls_the_actor_to_them(cartpole, experts):
    tasks, path = experts
    policy = load_policy(path, domain="cartpole")
    kicked = _kick_trainer(cartpole, tasks, path, 10.0)
    try:
        batch, _ = kicked.rollout()
        # the labels, recomputed: each row's task from its context, its raw observation from the frozen statistics
        rms = kicked.obs_norm.rms
        raw = batch["obs"].numpy() * np.sqrt(rms.var + kicked.obs_norm.epsilon) + rms.mean
        contexts = {t: cartpole.context(t).tokens for t in tasks}
        rows = np.array([next(policy.task_row(t) for t, c in contexts.items() if np.allclose(c, ctx))
                         for ctx in batch["context"].numpy()])
        assert len(set(rows.tolist())) == len(tasks)
        want = policy.act_tasks({"obs": raw.astype(np.float32), "obs_mask": batch["obs_mask"].numpy(),
                                 "act_mask": batch["act_mask"].numpy()}, rows)
        np.testing.assert_allclose(batch["expert_mu"].numpy(), want, atol=1e-4)
        kicked.train(stop_at_iteration=6)
    finally:
        kicked.close()
    _assert_pulled_closer_than_without(kicked, batch, cartpole, tasks, path)


def test_a_decaying_kickstart_weight_falls_linearly_and_then_leaves_ppo_alone(cartpole, experts):
    tasks, path = experts
    batch = 6 * 64  # env steps per iteration of _kick_trainer
    kicked = _kick_trainer(cartpole, tasks, path, 10.0, kickstart_decay=2 * batch)
    logged: list[dict] = []
    try:
        kicked.train(on_iteration=logged.append, stop_at_iteration=4)
    finally:
        kicked.close()
    assert [m["kickstart_coef"] for m in logged] == pytest.approx([10.0, 5.0, 0.0, 0.0])
    # the KL term enters the loss only while its weight is positive
    assert ["kickstart_kl" in m for m in logged] == [True, True, False, False]
    assert kicked.settings.kickstart_weight(batch // 2) == pytest.approx(7.5)


def test_kickstart_options_are_checked(tmp_path, experts, cartpole, capsys):
    from kdistill.cli.app import main
    from kdistill.executors import LocalExecutor

    tasks, path = experts
    args = ["teacher", "train", "cartpole", "--steps", "4096", "--out", str(tmp_path / "r"), "--kickstart-coef", "0.5"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and "pass --kickstart too" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as exit_:
        main([*args[:-2], "--kickstart-decay", "1000"])
    assert exit_.value.code == 2 and "--kickstart-decay" in capsys.readouterr().err and not (tmp_path / "r").exists()
    # the labels need each slot's task, which rollout workers do not report
    with pytest.raises(KdistillError, match="drop --executor"):
        _kick_trainer(cartpole, tasks, path, 1.0, executor=LocalExecutor())


def test_kickstarting_from_one_teacher_labels_every_state_with_its_actions(cartpole, experts, tmp_path):
    """A teacher (here another PPO run's actor) instead of per-task experts: it reads each state's task from the
    observation, and pulls the actor towards itself."""
    tasks, path = experts
    source = _kick_trainer(cartpole, tasks, path, 0.0, tmp_path=tmp_path / "teacher", seed=7)
    try:
        source.train(stop_at_iteration=2)
        source.save()
    finally:
        source.close()
    teacher = load_policy(tmp_path / "teacher", domain="cartpole")
    kicked = _kick_trainer(cartpole, tasks, tmp_path / "teacher", 10.0)
    try:
        batch, _ = kicked.rollout()
        rms = kicked.obs_norm.rms
        raw = batch["obs"].numpy() * np.sqrt(rms.var + kicked.obs_norm.epsilon) + rms.mean
        # the labels, recomputed: the source actor on the raw states through the teacher's own normaliser
        feed = {"obs": torch.from_numpy(teacher.normalizer.normalize(raw.astype(np.float32))),
                **{k: batch[k] for k in ("obs_mask", "act_mask", "context")}}
        with torch.no_grad():
            want = source.model(feed)[0].numpy()
        np.testing.assert_allclose(batch["expert_mu"].numpy(), want, atol=1e-4)
        kicked.train(stop_at_iteration=6)
    finally:
        kicked.close()
    _assert_pulled_closer_than_without(kicked, batch, cartpole, tasks, path)


def test_a_kickstarted_run_resumes_with_its_own_experts_only(cartpole, experts, tmp_path):
    from kdistill.errors import CheckpointError
    from kdistill.io import load_run_checkpoint

    tasks, path = experts
    run = _kick_trainer(cartpole, tasks, path, 1.0, tmp_path=tmp_path / "run")
    try:
        run.train(stop_at_iteration=2)
        run.save()
    finally:
        run.close()
    tensors, meta = load_run_checkpoint(tmp_path / "run")
    assert meta["kickstart_sha256"] == load_policy(path, domain="cartpole").meta["weights_sha256"]
    assert meta["run"]["kickstart"] == str(path) and meta["run"]["kickstart_coef"] == 1.0
    again = _kick_trainer(cartpole, tasks, path, 1.0, tmp_path=tmp_path / "run")
    try:
        again.restore(tensors, meta)
        assert again.iteration == 2
        with pytest.raises(CheckpointError, match="not the one the run started with"):
            again.restore(tensors, {**meta, "kickstart_sha256": "0" * 64})
    finally:
        again.close()
