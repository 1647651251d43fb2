"""Expert-data collection: shard contents replayed against the env, resumption, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from distill_toy import S_IDX, ToyTeacher, ToyTokenDomain, teacher_normalizer
from kdistill.distill.expert_data import (
    CollectSettings,
    collect_expert_data,
    fit_normalizer,
    load_expert_data,
    read_expert_meta,
    shard_name,
    task_seed,
)
from kdistill.errors import DataError
from kdistill.executors import LocalExecutor
from kdistill.rl.distributions import action_std_of, sample_actions
from kdistill.rl.normalise import ObsNormalizer

SETTINGS = CollectSettings(samples_per_task=203, num_envs=4, seed=3)  # 51 steps, last row of step 50 dropped


@pytest.fixture
def collected(tmp_path):
    domain, teacher = ToyTokenDomain(num_train=3, num_test=1), ToyTeacher()
    tasks = domain.tasks("train")
    summary = collect_expert_data(domain, teacher, teacher.normalizer.state(), tasks, tmp_path / "data", SETTINGS,
                                  teacher_ref="toy-teacher")
    return domain, teacher, tasks, tmp_path / "data", summary


def read_shard(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_shards_hold_time_major_rows_that_replay_the_env(collected):
    domain, teacher, tasks, data, summary = collected
    assert summary["collected"] == tasks and summary["skipped"] == []
    norm = teacher_normalizer()
    n_envs = SETTINGS.num_envs
    for task in tasks:
        shard = read_shard(data / "shards" / shard_name(task))
        assert {k: v.shape for k, v in shard.items()} == {
            "obs": (203, 3, 3), "obs_mask": (203, 3), "act_mask": (203, 6), "mu": (203, 6), "action": (203, 6)}
        # replay: the same env, stepped with the stored actions, row t*N+e is env e at step t
        seed = task_seed(SETTINGS.seed, task)
        venv = domain.make_vec_env([task], n_envs, seed=seed)
        obs = venv.reset(seed=seed)
        for t in range(51):
            rows = slice(t * n_envs, min((t + 1) * n_envs, 203))
            k = rows.stop - rows.start
            expected = norm.normalize(obs["obs"])[..., list(S_IDX)]
            np.testing.assert_array_equal(shard["obs"][rows], expected[:k])
            np.testing.assert_array_equal(shard["obs_mask"][rows], obs["obs_mask"][:k])
            np.testing.assert_array_equal(shard["act_mask"][rows], obs["act_mask"][:k])
            np.testing.assert_allclose(shard["mu"][rows], teacher.act(obs)[:k], atol=1e-6)
            if k < n_envs:
                break
            obs, *_ = venv.step(shard["action"][rows])
        venv.close()
        ctx = domain.context(task)
        assert (shard["obs_mask"] == ctx.mask).all()


def test_actions_are_sampled_around_the_teacher_mean(tmp_path):
    domain, teacher = ToyTokenDomain(num_train=1, num_test=0), ToyTeacher()
    task = domain.tasks("train")[0]
    collect_expert_data(domain, teacher, teacher.normalizer.state(), [task], tmp_path,
                        CollectSettings(samples_per_task=4000, num_envs=8), teacher_ref="t")
    shard = read_shard(tmp_path / "shards" / shard_name(task))
    valid = ~shard["act_mask"]
    noise = (shard["action"] - shard["mu"])[valid]
    assert noise.std() == pytest.approx(0.9, rel=0.03)
    assert abs(noise.mean()) < 0.03


def test_meta_records_normalisers_and_contexts(collected):
    domain, teacher, tasks, data, _ = collected
    meta = read_expert_meta(data)
    assert meta["domain"] == "toytokens" and meta["teacher"] == "toy-teacher"
    norm = teacher.normalizer
    np.testing.assert_array_equal(np.asarray(meta["normalizer"]["mean"]), norm.rms.mean)
    np.testing.assert_array_equal(np.asarray(meta["student_normalizer"]["var"]), norm.rms.var[:, list(S_IDX)])
    assert meta["student_normalizer"]["shape"] == [3, 3]
    for task in tasks:
        info = meta["tasks"][task]
        assert info["samples"] == 203 and info["episodes"] == 4 * (50 // 25)  # episodes of 25 steps
        ctx = domain.context(task)
        np.testing.assert_array_equal(np.asarray(info["context"]["tokens"], np.float32), ctx.tokens)
        np.testing.assert_array_equal(info["context"]["mask"], ctx.mask)


def test_rerun_skips_finished_tasks_and_rebuilds_missing_ones(collected):
    domain, _, tasks, data, _ = collected
    before = {t: (data / "shards" / shard_name(t)).read_bytes() for t in tasks}
    teacher = ToyTeacher()
    again = collect_expert_data(domain, teacher, teacher.normalizer.state(), tasks, data, SETTINGS, teacher_ref="toy-teacher")
    assert again["collected"] == [] and again["skipped"] == tasks and teacher.prepared == []
    (data / "shards" / shard_name(tasks[1])).unlink()
    third = collect_expert_data(domain, teacher, teacher.normalizer.state(), tasks, data, SETTINGS, teacher_ref="toy-teacher")
    assert third["collected"] == [tasks[1]] and teacher.prepared == [tasks[1]]
    # same seed, same data
    assert (data / "shards" / shard_name(tasks[1])).read_bytes() == before[tasks[1]]


def test_meta_json_grows_exactly_as_written_whole(collected, tmp_path):
    # meta.json is rewritten after every shard, encoding only the new task's entry: the text must not differ
    from kdistill.io import GrowingJsonFile, atomic_write_json

    data = collected[3]
    meta = read_expert_meta(data)
    atomic_write_json(tmp_path / "whole.json", meta)
    assert (data / "meta.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    grown, file = {**meta, "tasks": {}}, GrowingJsonFile(tmp_path / "grown.json", "tasks")
    file.write(grown)
    first = next(iter(meta["tasks"]))
    # entries added, one oddly named, and one replaced (a task collected again)
    for name, info in [*meta["tasks"].items(), ('é "odd"\n', {"x": [1.5, None]}), (first, {"samples": 1})]:
        grown["tasks"][name] = info
        file.write(grown)
        atomic_write_json(tmp_path / "whole.json", grown)
        assert (tmp_path / "grown.json").read_bytes() == (tmp_path / "whole.json").read_bytes(), name
    grown["tasks"]["bad"] = {"x": float("nan")}
    with pytest.raises(DataError, match="NaN"):
        file.write(grown)


class _LastFirst(LocalExecutor):
    """Finishes the tasks in reverse order, as workers may."""

    def imap_unordered(self, job, items):
        for index in reversed(range(len(items))):
            yield index, job(items[index])


def test_the_fitted_normaliser_is_one_generator_acting_through_the_tasks_on_any_executor():
    domain, teacher = ToyTokenDomain(num_train=3, num_test=1), ToyTeacher()
    tasks, layout = domain.tasks("train"), domain.layout
    # the plain algorithm: one generator draws each step's action noise, task after task
    plain, rng = ObsNormalizer((layout.max_tokens, layout.obs_features)), np.random.default_rng(5)
    for task in tasks:
        teacher.prepare(task, domain.context(task))
        std = np.asarray(action_std_of(teacher), np.float32)
        venv = domain.make_vec_env([task], 2, seed=task_seed(5, task))
        obs = venv.reset(seed=task_seed(5, task))
        for _ in range(30):
            plain.rms.update(np.asarray(obs["obs"], np.float32))
            obs = venv.step(sample_actions(np.asarray(teacher.act(obs), np.float32), std, rng))[0]
        venv.close()
    for executor in (None, _LastFirst()):
        fitted = fit_normalizer(domain, teacher, tasks, steps=30, seed=5, executor=executor).rms
        assert fitted.count == plain.rms.count
        np.testing.assert_array_equal(fitted.mean, plain.rms.mean)
        np.testing.assert_array_equal(fitted.var, plain.rms.var)


def test_rerun_with_other_settings_is_refused(collected):
    domain, teacher, tasks, data, _ = collected
    with pytest.raises(DataError, match="samples_per_task"):
        collect_expert_data(domain, teacher, teacher.normalizer.state(), tasks, data,
                            CollectSettings(samples_per_task=100, num_envs=4), teacher_ref="toy-teacher")
    with pytest.raises(DataError, match="teacher"):
        collect_expert_data(domain, teacher, teacher.normalizer.state(), tasks, data, SETTINGS, teacher_ref="other")


def test_the_same_teacher_checkpoint_under_another_path_resumes(tmp_path):
    """The teacher's weights hash, not the spelling of its path, decides whether a rerun adds to a folder."""
    domain = ToyTokenDomain(num_train=2, num_test=1)
    tasks = domain.tasks("train")
    teacher = ToyTeacher()
    teacher.meta = {"weights_sha256": "a" * 64}
    collect_expert_data(domain, teacher, teacher.normalizer.state(), tasks[:1], tmp_path / "d", SETTINGS,
                        teacher_ref="runs/teacher/")
    again = collect_expert_data(domain, teacher, teacher.normalizer.state(), tasks, tmp_path / "d", SETTINGS,
                                teacher_ref="../here/runs/teacher")
    assert again["collected"] == tasks[1:] and again["skipped"] == tasks[:1]
    teacher.meta = {"weights_sha256": "b" * 64}
    with pytest.raises(DataError, match="another teacher checkpoint"):
        collect_expert_data(domain, teacher, teacher.normalizer.state(), tasks, tmp_path / "d", SETTINGS,
                            teacher_ref="runs/teacher/")


def test_normaliser_of_another_shape_is_refused(tmp_path):
    from kdistill.rl.normalise import ObsNormalizer

    domain, teacher = ToyTokenDomain(), ToyTeacher()
    with pytest.raises(DataError, match="normaliser has shape"):
        collect_expert_data(domain, teacher, ObsNormalizer((3, 7)).state(), ["toy-0"], tmp_path, SETTINGS)


def test_load_expert_data_concatenates_tasks(collected):
    _, _, tasks, data, _ = collected
    full = load_expert_data(data)
    assert full.tasks == tasks and len(full) == 3 * 203
    assert np.bincount(full.task_index).tolist() == [203, 203, 203]
    first = load_expert_data(data, tasks=[tasks[2], tasks[0]], samples_per_task=50)
    shard = read_shard(data / "shards" / shard_name(tasks[2]))
    np.testing.assert_array_equal(first.obs[:50], shard["obs"][:50])
    assert first.task_index.tolist() == [0] * 50 + [1] * 50
    with pytest.raises(DataError, match="no data for task"):
        load_expert_data(data, tasks=["nope"])
    with pytest.raises(DataError, match="not an expert data folder"):
        load_expert_data(data / "shards")


def test_shard_names_stay_unique_for_odd_task_names():
    assert shard_name("floor-1409-11") == "floor-1409-11.safetensors"
    a, b = shard_name("a/b"), shard_name("a_b")
    assert a != b and "/" not in a


def test_a_collection_worker_steps_its_envs_within_its_thread_budget(unimal_dir, monkeypatch):
    """Workers sharing the cores must not each step their envs on extra threads; the rows do not depend on it."""
    from kdistill.distill.expert_data import CollectJob, rollout_task
    from kdistill.executors import DomainRef, PolicyRef
    from kdistill.loading import load_policy
    from kdistill.plugins import get_domain

    monkeypatch.setenv("KDISTILL_UNIMAL_DIR", str(unimal_dir))
    domain = get_domain("unimal")
    teacher = load_policy("domains/unimal/pretrained/teacher-cpu10", domain=domain)
    task = domain.tasks("train")[0]
    settings = CollectSettings(samples_per_task=64, num_envs=16, seed=2)
    asked = []
    make = type(domain).make_vec_env

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("threads"))
        return make(self, *args, **kwargs)

    monkeypatch.setattr(type(domain), "make_vec_env", spy)
    norm = teacher.normalizer.state()
    job = CollectJob(DomainRef.of(domain), PolicyRef.of(teacher), None, norm, settings, threads=1)
    on_worker, _ = job(task)
    in_process, _ = rollout_task(domain, teacher, ObsNormalizer.from_state(norm), task, domain.context(task), settings)
    assert asked == [1, None]
    assert on_worker.keys() == in_process.keys()
    for key in in_process:
        np.testing.assert_array_equal(on_worker[key], in_process[key])
