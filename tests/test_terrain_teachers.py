"""Exteroception in the transformer teachers (issue 14, item 2, teacher side): the height-field encoder with late
fusion in MetaMorph and ModuMorph, its FLOPs and parameters in both conventions (the reference's vt / obstacle
teacher sizes), and PPO collecting and updating on a terrain task."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch

from kdistill.bench import flops as F
from kdistill.rl.ppo import PPOConfig
from kdistill.rl.trainer import PPOTrainer, RunSettings
from kdistill.teachers.transformer import (
    ModuMorphTeacherConfig,
    TransformerTeacherConfig,
    build_modumorph_teacher,
    build_transformer_teacher,
)
from kdistill_unimal.domain import LAYOUT, TERRAIN_LAYOUT, UnimalDomain

E = TERRAIN_LAYOUT.extero_features
SMALL = "floor-5506-3-10-01-14-19-06"


def obs_batch(layout, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, layout.max_tokens, dtype=torch.bool)
    mask[:, 9:] = True
    out = {"obs": torch.randn(batch, layout.max_tokens, layout.obs_features, generator=g), "obs_mask": mask,
           "act_mask": torch.zeros(batch, layout.num_actions, dtype=torch.bool),
           "context": torch.randn(batch, layout.max_tokens, layout.context_features, generator=g)}
    if layout.extero_features:
        out["extero"] = torch.randn(batch, layout.extero_features, generator=g)
    return out


@pytest.mark.parametrize("build, cfg", [(build_transformer_teacher, TransformerTeacherConfig(d_model=32, num_layers=1, feedforward=64)),
                                        (build_modumorph_teacher, ModuMorphTeacherConfig(d_model=32, num_layers=1, feedforward=64))])
def test_teachers_read_the_height_field(build, cfg):
    torch.manual_seed(0)
    teacher = build(TERRAIN_LAYOUT, attrs.evolve(cfg, decoder_hidden=(16,))).eval()
    for net in (teacher.actor, teacher.critic):  # actor and critic each have their own encoder
        assert net.extero is not None and net.extero.net[0].in_features == E
    obs = obs_batch(TERRAIN_LAYOUT)
    with torch.no_grad():
        mu, value = teacher(obs)
        # the decoder output moves with what the robot sees, which the encoder's last ReLU may hide partly
        for p in teacher.actor.extero.parameters():
            p.add_(0.5)
        other = dict(obs, extero=obs["extero"] + 3.0)
        assert not torch.allclose(teacher.mu(other), teacher.mu(obs))
    assert mu.shape == (3, TERRAIN_LAYOUT.num_actions) and value.shape == (3,)
    with pytest.raises(ValueError, match="extero"):
        teacher.mu({k: v for k, v in obs.items() if k != "extero"})
    flat = build(LAYOUT, cfg)
    assert flat.actor.extero is None  # flat terrain: the networks (and checkpoints) are as before


def test_flat_paper_teacher_unchanged():
    assert F.parameter_count(build_transformer_teacher(LAYOUT, TransformerTeacherConfig()).actor) == 1_656_322


@pytest.mark.parametrize("decoder, flops_10k, params_1k, ratios", [((64,), 4034, 1973, (67.2, 6.6)),
                                                                    ((64, 64), 4043, 2023, (67.4, 6.7))])
def test_terrain_teacher_cost_matches_the_reference(decoder, flops_10k, params_1k, ratios):
    """reference.md 6.2: the ModuMorph-style teacher costs 40.34 / 40.43 MFLOPs and 1.973 / 2.023 M parameters on vt /
    obstacle (decoder [64] / [64, 64], height-field encoder [1410, 64, 64]); the HN-MLP 0.600 M / 0.301 M."""
    torch.manual_seed(0)
    teacher = build_modumorph_teacher(TERRAIN_LAYOUT, ModuMorphTeacherConfig(decoder_hidden=decoder)).eval()
    sizes = F.token_transformer_sizes(teacher.actor)
    assert sizes["extero_sizes"] == [E, 64, 64] and sizes["decoder_sizes"] == [192, *decoder, 2]
    args = {k: v for k, v in sizes.items() if k != "style"}
    modu = F.token_transformer_cost(12, **args, style="modumorph")
    assert round(modu.flops / 1e4) == flops_10k and round(modu.params / 1e3) == params_1k
    # the paper's ratios to the HN-MLP, as reference.md rounds them (vt's parameter ratio is 6.55 before rounding)
    assert (round(modu.flops / 600_320, 1), round(modu.params / 301_080, 1)) == ratios

    # MetaMorph-style: the formula and the hook-based count of the built actor agree (two independent paths)
    meta_teacher = build_transformer_teacher(TERRAIN_LAYOUT, TransformerTeacherConfig(decoder_hidden=decoder)).eval()
    meta_sizes = F.token_transformer_sizes(meta_teacher.actor)
    obs = obs_batch(TERRAIN_LAYOUT, batch=2)
    obs["obs_mask"][:] = False
    formula = F.token_transformer_cost(12, **{k: v for k, v in meta_sizes.items() if k != "style"}, style="metamorph")
    assert F.analytic_cost(lambda: meta_teacher.mu(obs), meta_teacher, batch_size=2) == formula
    # torch's count sees the encoder too: it is what the flat teacher's count does not have
    flat = build_transformer_teacher(LAYOUT, TransformerTeacherConfig(decoder_hidden=decoder)).eval()
    with torch.inference_mode():
        terrain_measured = F.measured_flops(lambda: meta_teacher.mu(obs), batch_size=2)
        flat_measured = F.measured_flops(lambda: flat.mu({k: v for k, v in obs.items() if k != "extero"}), batch_size=2)
    encoder = 2 * (E * 64 + 64 * 64)
    wider_decoder = 12 * 2 * 64 * decoder[0]  # 64 more inputs to the first decoder layer, at every token
    assert terrain_measured - flat_measured == encoder + wider_decoder


def test_ppo_collects_and_updates_on_terrain(unimal_dir):
    domain = UnimalDomain(data_dir=unimal_dir, task_kind="vt")
    config = PPOConfig(num_envs=2, num_steps=16, epochs=1, minibatch_size=16, sampling_warmup_iterations=1)
    teacher_cfg = TransformerTeacherConfig(d_model=16, num_layers=1, num_heads=2, feedforward=32)
    settings = RunSettings(domain="unimal", tasks=[SMALL], teacher="metamorph", preset="test", seed=0,
                           total_steps=config.batch_size)
    from kdistill.plugins import get_plugins

    trainer = PPOTrainer(domain, settings, get_plugins().teachers.get("metamorph"), teacher_cfg, config)
    try:
        batch, info = trainer.rollout()
        assert "extero" in info["keys"] and batch["extero"].shape[-1] == E
        assert np.isfinite(batch["extero"].numpy()).all()
        before = trainer.model.actor.extero.net[0].weight.detach().clone()
        trainer.train()
        assert not torch.equal(before, trainer.model.actor.extero.net[0].weight)  # the encoder learns
    finally:
        trainer.close()


@pytest.mark.parametrize("build, cfg", [(build_transformer_teacher, TransformerTeacherConfig(d_model=32, num_layers=1, feedforward=64)),
                                        (build_modumorph_teacher, ModuMorphTeacherConfig(d_model=32, num_layers=1, feedforward=64))])
@pytest.mark.parametrize("hidden", [(), (16,)])
def test_a_flat_teacher_grows_an_encoder_and_first_acts_as_before(build, cfg, hidden):
    torch.manual_seed(0)
    cfg = attrs.evolve(cfg, decoder_hidden=hidden)
    flat = build(LAYOUT, cfg).eval()
    for p in flat.parameters():  # trained-looking weights: no zero generator rows or zero biases left over from init
        p.data.add_(0.05 * torch.randn_like(p))
    terrain = build(TERRAIN_LAYOUT, cfg).eval()
    fresh_encoder = {k: v.clone() for k, v in terrain.state_dict().items() if ".extero." in k}
    terrain.load_state_adding_extero(flat.state_dict())
    obs = obs_batch(TERRAIN_LAYOUT)
    proprio = {k: v for k, v in obs.items() if k != "extero"}
    with torch.no_grad():
        for extero in (obs["extero"], obs["extero"] * 5 + 2):  # whatever the ground, the flat teacher's actions
            seen = dict(obs, extero=extero)
            torch.testing.assert_close(terrain.mu(seen), flat.mu(proprio), rtol=0, atol=1e-6)
            torch.testing.assert_close(terrain.value(seen), flat.value(proprio), rtol=0, atol=1e-6)
    for k, v in fresh_encoder.items():
        assert torch.equal(terrain.state_dict()[k], v), k
    # every other weight is the source's, the new inputs' part of the first decoder layer is zero
    own = terrain.state_dict()
    for k, v in flat.state_dict().items():
        if own[k].shape == v.shape:
            assert torch.equal(own[k], v), k
        else:
            grown = next(d for d in range(v.dim()) if own[k].shape[d] != v.shape[d])
            assert torch.equal(own[k].narrow(grown, 0, v.shape[grown]), v)
            assert not own[k].narrow(grown, v.shape[grown], own[k].shape[grown] - v.shape[grown]).any()
    # and it learns to read the height field from there
    opt = torch.optim.SGD(terrain.parameters(), lr=0.1)
    terrain.train()
    terrain.mu(obs).pow(2).sum().backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(terrain.mu(dict(obs, extero=obs["extero"] * 5 + 2)), terrain.mu(obs))

    with pytest.raises(ValueError, match="missing"):
        terrain.load_state_adding_extero({k: v for k, v in flat.state_dict().items() if not k.startswith("critic.")})
    with pytest.raises(ValueError, match="shape"):
        other = build(LAYOUT, attrs.evolve(cfg, d_model=16, feedforward=32))
        terrain.load_state_adding_extero(other.state_dict())


def test_init_from_a_flat_run_starts_a_terrain_run(unimal_dir, tmp_path):
    """``teacher train unimal:vt --init FLAT_RUN``: the vt run's first policy is the flat run's, on the same states."""
    from kdistill.errors import CheckpointError
    from kdistill.io import load_run_checkpoint
    from kdistill.plugins import get_plugins
    from kdistill.rl.trainer import start_or_resume

    spec = get_plugins().teachers.get("metamorph")
    config = PPOConfig(num_envs=2, num_steps=16, epochs=1, minibatch_size=16, sampling_warmup_iterations=1)
    teacher_cfg = TransformerTeacherConfig(d_model=16, num_layers=1, num_heads=2, feedforward=32)
    settings = RunSettings(domain="unimal", tasks=[SMALL], teacher="metamorph", preset="test", seed=0,
                           total_steps=config.batch_size)
    flat_domain = UnimalDomain(data_dir=unimal_dir)
    flat = start_or_resume(flat_domain, settings, spec, teacher_cfg, config, tmp_path / "flat", resume=False)
    try:
        flat.train()
    finally:
        flat.close()
    tensors, meta = load_run_checkpoint(tmp_path / "flat")
    vt_domain = UnimalDomain(data_dir=unimal_dir, task_kind="vt")
    vt = start_or_resume(vt_domain, attrs.evolve(settings, init=str(tmp_path / "flat")), spec, teacher_cfg, config,
                         tmp_path / "vt", resume=False)
    try:
        np.testing.assert_array_equal(vt.obs_norm.rms.mean, np.asarray(meta["normalizer"]["mean"]))
        env = vt_domain.make_env(SMALL)
        raw, _ = env.reset(seed=3)
        env.close()
        obs = {k: torch.from_numpy(np.asarray(v))[None] for k, v in raw.items()}
        obs["obs"] = torch.from_numpy(vt.obs_norm.normalize(raw["obs"][None]))
        obs["extero"] = obs["extero"] + torch.rand(obs["extero"].shape)  # the start is flat: show it rough ground
        vt.model.eval()
        with torch.no_grad():
            flat_model = spec.build(flat_domain.layout, teacher_cfg)
            flat_model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
            flat_model.eval()
            torch.testing.assert_close(vt.model.mu(obs), flat_model.mu({k: v for k, v in obs.items() if k != "extero"}),
                                       rtol=0, atol=1e-6)
    finally:
        vt.close()
    # the other way round (a terrain teacher on flat ground) has nowhere to put its encoder
    obstacle = start_or_resume(UnimalDomain(data_dir=unimal_dir, task_kind="obstacle"), settings, spec, teacher_cfg,
                               config, tmp_path / "obstacle", resume=False)
    try:
        obstacle.train()
    finally:
        obstacle.close()
    back = PPOTrainer(flat_domain, settings, spec, teacher_cfg, config)
    try:
        o_tensors, o_meta = load_run_checkpoint(tmp_path / "obstacle")
        with pytest.raises(CheckpointError, match="another layout"):
            back.start_from(o_tensors, o_meta, "obstacle")
    finally:
        back.close()
