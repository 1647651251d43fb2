"""FLOP and parameter counting (kdistill.bench.flops): both conventions against numbers worked out here by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdistill.bench import flops as F
from kdistill.distill.students import build_student
from kdistill.domain import Layout
from kdistill.teachers.transformer import TransformerTeacherConfig, build_modumorph_teacher, build_transformer_teacher

# UNIMAL flat terrain as the reference counts it: 12 limb slots, 52 teacher / 17 student features per limb,
# 2 actions per limb, 53 context features
UNIMAL = Layout(max_tokens=12, obs_features=52, student_features=tuple(range(17)), context_features=53,
                actions_per_token=2)


def teacher_obs(layout: Layout, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"obs": torch.randn(batch, layout.max_tokens, layout.obs_features, generator=g),
            "obs_mask": torch.zeros(batch, layout.max_tokens, dtype=torch.bool),
            "context": torch.randn(batch, layout.max_tokens, layout.context_features, generator=g)}


def test_linear_and_mlp_conventions():
    assert F.linear_cost(3, 5) == F.Cost(30, 20)
    assert F.linear_cost(3, 5, rows=4, bias=False) == F.Cost(120, 15)
    assert F.mlp_cost([4, 8, 2], rows=3) == F.Cost(3 * (2 * 32 + 2 * 16), 40 + 18)
    assert F.Cost(1, 2) + F.Cost(10, 20) == F.Cost(11, 22)


def test_generated_base_mlp_matches_the_reference_count():
    # reference 4.1: 204*256+256 + 256*256+256 + 12*(256*2+2) params, 2 FLOPs per weight
    params = (12 * 17) * 256 + 256 + 256 * 256 + 256 + 12 * (256 * 2 + 2)
    flops = 2 * ((12 * 17) * 256 + 256 * 256 + 12 * 256 * 2)
    assert (params, flops) == (124_440, 247_808)
    torch.manual_seed(0)
    student = build_student("hnmlp", UNIMAL, preset="paper")
    context = torch.randn(1, 12, 53)
    for real in (12, 5):  # the folded MLP has the same shape whatever the robot's limb count
        mask = torch.arange(12)[None] >= real
        with torch.no_grad():
            layers = student.fold(student.generate(context, mask), mask[0])
        assert F.dense_cost(layers) == F.Cost(flops, params)


def test_flop_counter_on_a_linear_stack():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 11), nn.ReLU(), nn.Linear(11, 3, bias=False))
    x = torch.randn(5, 7)
    per_sample = 2 * (7 * 11 + 11 * 3)
    assert F.measured_flops(lambda: net(x), batch_size=5) == per_sample
    assert F.analytic_cost(lambda: net(x), net, batch_size=5) == F.Cost(per_sample, 7 * 11 + 11 + 11 * 3)
    assert F.parameter_count(net) == 7 * 11 + 11 + 11 * 3
    # a Linear applied per token counts once per token
    tokens = torch.randn(2, 4, 7)
    assert F.measured_flops(lambda: net(tokens), batch_size=2) == 4 * per_sample


@pytest.mark.parametrize("fast_path", [True, False])
def test_measured_count_sees_the_whole_transformer_layer(fast_path):
    T, d, ff, heads = 6, 16, 40, 2
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True, norm_first=True).eval()
    x = torch.randn(3, T, d)
    mask = torch.zeros(3, T, dtype=torch.bool)
    # what torch runs: q/k/v projections, scores, weighted values, output projection, feed-forward
    expected = 2 * T * d * 3 * d + 2 * T * T * d + 2 * T * T * d + 2 * T * d * d + 2 * T * (d * ff + ff * d)
    torch.backends.mha.set_fastpath_enabled(fast_path)
    try:
        with torch.inference_mode():
            counted = F.measured_flops(lambda: layer(x, src_key_padding_mask=mask), batch_size=3)
        assert torch.backends.mha.get_fastpath_enabled() is fast_path  # the switch is put back
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert counted == expected


def reference_teacher_cost(style: str, T=12, obs=52, d=128, layers=5, heads=2, ff=1024, out=2) -> tuple[int, int]:
    """The reference's compute_flops arithmetic (reference 6.2), written out long-hand."""
    fixed = style == "modumorph"
    head_flops = T * 2 * d * d + T * T * d * 2  # value projection + aggregation
    head_params = d * d + d
    if fixed:
        head_params += T * T  # the stored attention map
    else:
        head_flops += 2 * T * 2 * d * d + T * T * d * 2  # query and key projections + scores
        head_params *= 3
    merge_flops, merge_params = T * 2 * heads * d * d, (heads * d + 1) * d
    ff_flops, ff_params = T * 2 * (d * ff + ff * d), (d + 1) * ff + (ff + 1) * d
    layer_flops = heads * head_flops + merge_flops + ff_flops
    layer_params = heads * head_params + merge_params + ff_params
    slots = T if fixed else 1
    flops = T * 2 * obs * d + layers * layer_flops + T * 2 * d * out
    params = slots * (obs + 1) * d + layers * layer_params + slots * (d + 1) * out
    return flops, params


def test_token_transformer_cost_reproduces_the_papers_ratios():
    meta, modu = reference_teacher_cost("metamorph"), reference_teacher_cost("modumorph")
    # the published sizes: 48.1 M / 1.98 M (MetaMorph-style), 39.86 M / 1.732 M (ModuMorph-style)
    assert round(meta[0] / 1e5) == 481 and round(meta[1] / 1e4) == 198
    assert round(modu[0] / 1e4) == 3986 and round(modu[1] / 1e3) == 1732
    sizes = dict(in_features=52, d_model=128, num_layers=5, num_heads=2, feedforward=1024, decoder_sizes=[128, 2])
    assert F.token_transformer_cost(12, **sizes, style="metamorph") == F.Cost(*meta)
    assert F.token_transformer_cost(12, **sizes, style="modumorph") == F.Cost(*modu)
    # ratios against the generated MLP: 160.8x / 13.9x (ModuMorph-style), 194x / 15.9x (MetaMorph-style)
    assert modu[0] / 247_808 == pytest.approx(160.8, abs=0.05) and modu[1] / 124_440 == pytest.approx(13.9, abs=0.05)
    assert meta[0] / 247_808 == pytest.approx(194.1, abs=0.05) and meta[1] / 124_440 == pytest.approx(15.9, abs=0.05)
    with pytest.raises(ValueError):
        F.token_transformer_cost(12, **sizes, style="other")


def test_paper_teacher_counted_both_ways():
    torch.manual_seed(0)
    teacher = build_transformer_teacher(UNIMAL, TransformerTeacherConfig()).eval()
    obs = teacher_obs(UNIMAL, 2)
    sizes = F.token_transformer_sizes(teacher.actor)
    assert sizes["style"] == "metamorph" and sizes["decoder_sizes"] == [128, 2]
    # the hook-based count of the built actor agrees with the formula (two independent paths)
    assert F.analytic_cost(lambda: teacher.mu(obs), teacher, batch_size=2) == F.Cost(*reference_teacher_cost("metamorph"))
    # torch's count: embed, per layer q/k/v + scores + weighted values + output projection + feed-forward, decoder
    T, d = 12, 128
    per_layer = 2 * T * d * 3 * d + 2 * 2 * T * T * d + 2 * T * d * d + 2 * T * 2 * d * 1024
    measured = 2 * T * 52 * d + 5 * per_layer + 2 * T * d * 2
    with torch.inference_mode():
        assert F.measured_flops(lambda: teacher.mu(obs), batch_size=2) == measured
    # parameters as tensors: embed, 5 x (attention, 2 LayerNorms, feed-forward), decoder (reference 3.1: 1,656,322)
    layer_params = 3 * d * d + 3 * d + d * d + d + 4 * d + d * 1024 + 1024 + 1024 * d + d
    assert F.parameter_count(teacher.actor) == 53 * d + 5 * layer_params + (d + 1) * 2 == 1_656_322
    assert measured / 247_808 >= 160 and 1_656_322 / 124_440 >= 13


def test_modumorph_teacher_sizes_read_from_the_module():
    torch.manual_seed(0)
    from kdistill.teachers.transformer import ModuMorphTeacherConfig

    teacher = build_modumorph_teacher(UNIMAL, ModuMorphTeacherConfig(d_model=32, num_layers=2, feedforward=64))
    sizes = F.token_transformer_sizes(teacher.actor)
    assert sizes == {"in_features": 52, "d_model": 32, "num_layers": 2, "num_heads": 2, "feedforward": 64,
                     "decoder_sizes": [32, 2], "style": "modumorph"}
    assert F.token_transformer_sizes(nn.Linear(2, 2)) is None


def test_analytic_hooks_count_only_the_path_that_ran():
    torch.manual_seed(0)
    actor, critic = nn.Linear(6, 4), nn.Linear(6, 1)
    model = nn.ModuleDict({"actor": actor, "critic": critic})
    x = torch.randn(3, 6)
    assert F.analytic_cost(lambda: model["actor"](x), model, batch_size=3) == F.linear_cost(6, 4)
    # attention in the reference's convention: every head at full width, merged by Linear(heads*d, d)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    q = torch.randn(2, 5, 8)
    expected = F.Cost(2 * (3 * 5 * 2 * 64 + 2 * 25 * 8 * 2) + 5 * 2 * 16 * 8, 2 * 3 * (64 + 8) + 17 * 8)
    assert F.analytic_cost(lambda: attn(q, q, q, need_weights=False), attn, batch_size=2) == expected
    assert F.attention_cost(8, 2, 5) == expected
