"""The models shipped under domains/unimal/pretrained load as what they are and act on real robots; a checkpoint
shipped as float16 loads back as float32 and acts like the float32 original up to float16 rounding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdistill.loading import load_policy

PRETRAINED = Path(__file__).resolve().parents[1] / "domains" / "unimal" / "pretrained"


def _domain(name, unimal_dir):
    import os

    from kdistill.plugins import get_domain

    os.environ.setdefault("KDISTILL_UNIMAL_DIR", str(unimal_dir))
    return get_domain(name, data_dir=str(unimal_dir))


def _first_obs(domain, task: str) -> dict:
    env = domain.make_env(task)
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    return {k: np.asarray(v)[None] for k, v in obs.items()}


@pytest.mark.parametrize("name, domain_name, kind, tasks", [
    ("experts-flat", "unimal", "experts", 100), ("teacher-universal", "unimal", "teacher", 100),
    ("teacher-universal-ppo", "unimal", "teacher", 100), ("teacher-universal-kickstart", "unimal", "teacher", 100),
    ("hnmlp-universal-ppo", "unimal", "student", 100), ("teacher-vt", "unimal:vt", "teacher", 20),
    ("teacher-obstacle", "unimal:obstacle", "teacher", 20), ("teacher-vt-from-flat", "unimal:vt", "teacher", 20),
    ("teacher-obstacle-from-flat", "unimal:obstacle", "teacher", 20)])
def test_shipped_models_load_and_act_on_their_robots_and_on_unseen_ones(unimal_dir, name, domain_name, kind, tasks):
    unimal = _domain(domain_name, unimal_dir)
    policy = load_policy(PRETRAINED / name, domain=unimal)
    assert policy.kind == kind
    meta = policy.meta
    trained_on = meta.get("train_tasks") or meta.get("run", {}).get("tasks") or [t["name"] for t in meta["tasks"]]
    assert len(trained_on) == tasks and set(trained_on) == set(unimal.tasks("train")[:tasks])
    for split in ("train", "test") if kind != "experts" else ("train",):  # experts have no unseen robots
        task = unimal.tasks(split)[-1]
        policy.prepare(task, unimal.context(task))
        action = policy.act(_first_obs(unimal, task))
        assert action.shape == (1, unimal.layout.num_actions) and np.isfinite(action).all() and np.abs(action).max() > 0


def test_the_demo_teacher_of_each_task_kind_is_a_shipped_teacher_of_that_kind(unimal_dir):
    expected = {"ft": "teacher-universal-ppo", "vt": "teacher-vt-from-flat", "obstacle": "teacher-obstacle-from-flat"}
    for kind, name in expected.items():
        domain = _domain(f"unimal:{kind}", unimal_dir)
        teacher = domain.pretrained_teacher()
        if name is None:
            assert teacher is None
            continue
        assert Path(teacher).name == name and (Path(teacher) / "latest.json").is_file()
        policy = load_policy(teacher, domain=domain)  # refused if the run was made on another kind
        assert policy.kind == "teacher"


def test_a_float16_shipped_checkpoint_loads_as_float32_and_acts_like_the_original(tmp_path):
    import torch

    from kdistill.distill.training import DistillConfig, distill
    from kdistill.io import latest_checkpoint, load_checkpoint
    from kdistill.plugins import get_domain
    sys_path = Path(__file__).resolve().parents[1] / "scripts"
    import importlib.util

    spec = importlib.util.spec_from_file_location("ship_checkpoint", sys_path / "ship_checkpoint.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)

    torch.set_num_threads(1)
    domain = get_domain("cartpole")
    from kdistill.distill.expert_data import CollectSettings, collect_expert_data
    from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, ExpertTrainer, export_experts

    tiny = ExpertConfig.presets()["tiny"]
    tasks = domain.tasks("train")[:2]
    ExpertTrainer(domain, ExpertRunSettings(domain="cartpole", tasks=tasks, preset="tiny", seed=0,
                                            steps_per_task=tiny.batch_size), tiny, run_dir=tmp_path / "run").train()
    export_experts(tmp_path / "run", tmp_path / "experts")
    collect_expert_data(domain, load_policy(tmp_path / "experts", domain="cartpole"), None, tasks, tmp_path / "data",
                        CollectSettings(samples_per_task=64, num_envs=2, seed=0), teacher_ref="experts")
    distill(tmp_path / "data", "hnmlp", None, DistillConfig(epochs=1, batch_size=64), out=tmp_path / "hn",
            domain="cartpole", student_preset="small")

    assert ship.main([str(tmp_path / "hn"), str(tmp_path / "shipped"), "--float16"]) == 0
    assert ship.main([str(tmp_path / "hn"), str(tmp_path / "shipped")]) == 2  # never over an existing folder
    stored = json.loads((latest_checkpoint(tmp_path / "shipped") / "meta.json").read_text())
    assert stored["stored_dtype"] == "float16"
    from safetensors.numpy import load_file

    raw = load_file(str(latest_checkpoint(tmp_path / "shipped") / "weights.safetensors"))
    assert raw and all(v.dtype == np.float16 for v in raw.values()) and all(k.startswith("model.") for k in raw)
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path / "shipped"))
    original, _ = load_checkpoint(latest_checkpoint(tmp_path / "hn"))
    assert all(t.dtype == torch.float32 for t in tensors.values())
    for key, value in tensors.items():  # float16 rounding: a relative error of at most 2**-11
        np.testing.assert_allclose(value.numpy(), original[key].numpy(), rtol=2 ** -11, atol=1e-7)
    a, b = load_policy(tmp_path / "hn", domain="cartpole"), load_policy(tmp_path / "shipped", domain="cartpole")
    task = tasks[0]
    env = domain.make_env(task)
    obs, _ = env.reset(seed=1)
    env.close()
    obs = {k: np.asarray(v)[None] for k, v in obs.items()}
    for policy in (a, b):
        policy.prepare(task, domain.context(task))
    np.testing.assert_allclose(b.act(obs), a.act(obs), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("kind", ["vt", "obstacle"])
def test_the_terrain_teachers_grown_from_the_flat_one_keep_its_actor(kind):
    """``teacher-KIND-from-flat`` is ``teacher-cpu10`` grown a height-field encoder: every actor weight the two share
    is the flat teacher's, and the decoder's inputs from the encoder start at zero."""
    from kdistill.io import latest_checkpoint, load_checkpoint

    flat, _ = load_checkpoint(latest_checkpoint(PRETRAINED / "teacher-cpu10"))
    grown, meta = load_checkpoint(latest_checkpoint(PRETRAINED / f"teacher-{kind}-from-flat"))
    assert meta["task_kind"] == kind and meta["layout"]["extero_features"] > 0
    actor = [k for k in flat if k.startswith("model.actor.")]
    assert actor and any(k.startswith("model.actor.extero.") for k in grown)
    for k in actor:
        if grown[k].shape == flat[k].shape:
            assert np.array_equal(grown[k].numpy(), flat[k].numpy()), k
        else:  # the first decoder layer: the flat weights, then zeros for the encoded height field
            d = flat[k].shape[-1]
            assert np.array_equal(grown[k][..., :d].numpy(), flat[k].numpy()) and not grown[k][..., d:].any(), k
