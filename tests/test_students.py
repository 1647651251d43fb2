"""Students, context encoders, hypernetwork layers and losses: checked against independent numpy arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdistill.distill.hypernet import HypernetLayer
from kdistill.distill.losses import logp_loss, mse_loss
from kdistill.distill.students import (
    HNMLPConfig,
    HNMLPStudent,
    MLPConfig,
    MLPStudent,
    TaskGroups,
    build_student,
    load_student_policy,
    make_config,
    student_tensors,
)
from kdistill.domain import Layout
from kdistill.errors import CheckpointError, KdistillError

LAYOUT = Layout(max_tokens=4, obs_features=6, student_features=(0, 2, 3), context_features=5, actions_per_token=2)
SMALL_HN = HNMLPConfig(hidden=16, embed=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_tasks(k: int, seed: int = 0, layout: Layout = LAYOUT):
    """K contexts with 1..T real tokens (padding at the end) and padded context rows filled with noise."""
    g = torch.Generator().manual_seed(seed)
    T = layout.max_tokens
    ctx = torch.randn(k, T, layout.context_features, generator=g)
    n_real = torch.tensor([1 + (i % T) for i in range(k)])
    mask = torch.arange(T)[None, :] >= n_real[:, None]
    return ctx, mask


def perturb_generators(student: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Give the zero-initialised generator weights random values so each task gets its own MLP."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name.endswith("_gen.weight"):
                p.copy_(scale * torch.randn(p.shape, generator=g))


# -------------------------------------------------------------------------------------------------
# encoders and hypernetwork layers

def test_builtin_names_are_registered():
    from kdistill.plugins import get_plugins

    plugins = get_plugins()
    assert {"transformer", "mlp", "vector"} <= set(plugins.context_encoders.names())
    assert {"hnmlp", "mlp"} <= set(plugins.students.names())
    assert {"mse", "logp"} <= set(plugins.losses.names())


def test_transformer_encoder_is_one_pre_ln_layer_that_ignores_padded_tokens():
    from kdistill.distill.encoders import TransformerContextEncoder

    enc = TransformerContextEncoder(5, 128)
    layer = enc.layer
    assert layer.norm_first and layer.self_attn.num_heads == 2 and layer.linear1.out_features == 256
    assert layer.self_attn.batch_first and layer.dropout.p == 0.0
    ctx, mask = random_tasks(6)
    out = enc(ctx, mask)
    assert out.shape == (6, 4, 128)
    changed = ctx.clone()
    changed[mask] = 100.0  # padded tokens must not reach real tokens' embeddings
    out2 = enc(changed, mask)
    torch.testing.assert_close(out[~mask], out2[~mask])
    assert not torch.allclose(out[mask], out2[mask])


def test_mlp_and_vector_encoders():
    from kdistill.distill.encoders import MLPContextEncoder, VectorContextEncoder

    enc = MLPContextEncoder(5, 8)
    ctx, mask = random_tasks(3)
    out = enc(ctx, mask)
    # per token: equals running each token alone
    torch.testing.assert_close(out[:, 1], enc(ctx[:, 1:2], mask[:, 1:2])[:, 0])
    assert (out >= 0).all() and out.shape == (3, 4, 8)
    vec = VectorContextEncoder(5, 8)
    assert vec(ctx[:, :1], mask[:, :1]).shape == (3, 1, 8)
    with pytest.raises(KdistillError, match="one context token"):
        vec(ctx, mask)


def test_hypernet_layer_bias_init():
    torch.manual_seed(0)
    hn = HypernetLayer(embed_dim=32, in_features=17, out_features=256, fan_in=204)
    assert torch.count_nonzero(hn.weight_gen.weight) == 0
    assert torch.count_nonzero(hn.bias_gen.weight) == 0 and torch.count_nonzero(hn.bias_gen.bias) == 0
    b = hn.weight_gen.bias.detach().numpy()
    assert abs(b.std() - math.sqrt(1 / 204)) < 0.03 * math.sqrt(1 / 204)  # 4352 draws
    assert abs(b.mean()) < 4 * math.sqrt(1 / 204) / math.sqrt(b.size)
    w1, b1 = hn(torch.randn(3, 32))
    assert w1.shape == (3, 17, 256) and b1.shape == (3, 256)
    # at init every embedding yields the same layer
    torch.testing.assert_close(w1[0], w1[2])
    torch.testing.assert_close(w1[0].reshape(-1), hn.weight_gen.bias)
    assert HypernetLayer(8, 3, 5).fan_in == 3


def test_hnmlp_uses_separate_encoders_and_paper_sizes():
    unimal = Layout(max_tokens=12, obs_features=52, student_features=tuple(range(13)) + (30, 31, 41, 42),
                    context_features=53, actions_per_token=2)
    student = HNMLPStudent(unimal)
    assert student.input_encoder is not student.hidden_encoder is not student.output_encoder
    assert student.input_hn.fan_in == 204 and student.output_hn.fan_in == 256
    assert len(student.hidden_hns) == 1
    # the reference's hypernetwork size: 9.57 M parameters
    assert abs(sum(p.numel() for p in student.parameters()) - 9.57e6) < 0.01e6
    ctx, mask = random_tasks(3, layout=unimal)
    p = student.generate(ctx, mask)
    # at init every task gets the same base MLP
    torch.testing.assert_close(p["w_in"][0], p["w_in"][2])
    torch.testing.assert_close(p["hidden"][0][0][0], p["hidden"][0][0][1])


# -------------------------------------------------------------------------------------------------
# the HN-MLP's function

def manual_hnmlp(params: dict, k: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference formula, token by token, in float64 numpy."""
    P = {key: (v.detach().double().numpy() if torch.is_tensor(v) else v) for key, v in params.items()}
    out = []
    for b in range(len(x)):
        t_real = [t for t in range(x.shape[1]) if not mask[b, t]]
        h = sum(x[b, t] @ P["w_in"][k[b], t] + P["b_in"][k[b], t] for t in t_real) / len(t_real)
        h = np.maximum(h, 0)
        for w, bias in params["hidden"]:
            h = np.maximum(h @ w.detach().double().numpy()[k[b]] + bias.detach().double().numpy()[k[b]], 0)
        out.append(np.concatenate([h @ P["w_out"][k[b], t] + P["b_out"][k[b], t] for t in range(x.shape[1])]))
    return np.stack(out)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_hnmlp_matches_the_reference_formula(layers):
    torch.manual_seed(0)
    student = HNMLPStudent(LAYOUT, HNMLPConfig(hidden=16, embed=8, layers=layers))
    perturb_generators(student)
    ctx, mask = random_tasks(5)
    g = torch.Generator().manual_seed(3)
    k = torch.tensor([4, 0, 2, 2, 4, 1, 0, 4, 2])  # task 3 absent, repeats, unsorted
    x = torch.randn(len(k), 4, 3, generator=g)
    params = student.generate(ctx, mask)
    grouped = student.forward_with(params, x, mask[k], k)
    expected = manual_hnmlp(params, k.numpy(), x.double().numpy(), mask[k].numpy())
    np.testing.assert_allclose(grouped.detach().numpy(), expected, atol=1e-5)
    per_sample = student(x, ctx[k], mask[k])
    np.testing.assert_allclose(per_sample.detach().numpy(), expected, atol=1e-5)


def test_generating_per_task_equals_per_sample_outputs_and_gradients():
    torch.manual_seed(0)
    student = HNMLPStudent(LAYOUT, SMALL_HN)
    perturb_generators(student)
    ctx, mask = random_tasks(7, seed=5)
    g = torch.Generator().manual_seed(9)
    k = torch.randint(0, 7, (64,), generator=g)
    x = torch.randn(64, 4, 3, generator=g)
    target = torch.randn(64, 8, generator=g)

    def loss_and_grads(mu):
        student.zero_grad()
        loss = ((mu - target) ** 2).sum()
        loss.backward()
        return mu.detach(), {n: p.grad.clone() for n, p in student.named_parameters()}

    present, local = torch.unique(k, return_inverse=True)
    mu_task, g_task = loss_and_grads(student.forward_with(student.generate(ctx[present], mask[present]), x, mask[k], local))
    mu_row, g_row = loss_and_grads(student(x, ctx[k], mask[k]))
    torch.testing.assert_close(mu_task, mu_row, atol=1e-5, rtol=1e-5)
    assert set(g_task) == set(g_row)
    for name in g_task:
        torch.testing.assert_close(g_task[name], g_row[name], atol=1e-4, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for n, g in g_task.items() if "encoder" in n)


def test_task_groups_pack_and_unpack():
    k = torch.tensor([3, 1, 3, 3, 7, 1])
    groups = TaskGroups(k)
    assert groups.tasks.tolist() == [1, 3, 7] and groups.rows == 3
    x = torch.arange(6.0).reshape(6, 1) + 1
    packed = groups.pack(x)
    assert packed.shape == (3, 3, 1)
    assert packed[1, :, 0].tolist() == [1.0, 3.0, 4.0]  # task 3's rows in batch order
    assert packed[2, 1:, 0].tolist() == [0.0, 0.0]
    torch.testing.assert_close(groups.unpack(packed), x)
    per_task = torch.arange(8.0)
    assert groups.select(per_task).tolist() == [1.0, 3.0, 7.0]


@pytest.mark.parametrize("name", ["hnmlp", "mlp"])
def test_padded_tokens_do_not_change_real_actions(name):
    torch.manual_seed(0)
    student = build_student(name, LAYOUT, SMALL_HN if name == "hnmlp" else MLPConfig(hidden=16))
    perturb_generators(student)
    ctx, mask = random_tasks(4)
    k = torch.tensor([0, 1, 2, 3, 1])
    x = torch.randn(5, 4, 3)
    act_valid = ~mask[k].repeat_interleave(2, dim=1)
    mu = student.forward_with(student.generate(ctx, mask), x, mask[k], k)
    x2, ctx2 = x.clone(), ctx.clone()
    x2[mask[k]] = 50.0
    ctx2[mask] = -50.0
    mu2 = student.forward_with(student.generate(ctx2, mask), x2, mask[k], k)
    torch.testing.assert_close(mu[act_valid], mu2[act_valid])


def test_mlp_student_matches_manual_formula():
    torch.manual_seed(0)
    student = MLPStudent(LAYOUT, MLPConfig(hidden=16, layers=2))
    _, mask = random_tasks(4)
    x = torch.randn(4, 4, 3)
    mu = student.forward_with({}, x, mask, torch.zeros(4, dtype=torch.long)).detach().double().numpy()
    W = {n: p.detach().double().numpy() for n, p in student.named_parameters()}
    expected = []
    for b in range(4):
        flat = (x[b].double().numpy() * (~mask[b].numpy())[:, None]).reshape(-1)
        h = np.maximum((W["first.weight"] @ flat + W["first.bias"]) / (~mask[b]).sum().item(), 0)
        h = np.maximum(W["hidden_layers.0.weight"] @ h + W["hidden_layers.0.bias"], 0)
        expected.append(W["out.weight"] @ h + W["out.bias"])
    np.testing.assert_allclose(mu, np.stack(expected), atol=1e-5)
    assert student.generate(*random_tasks(2)) == {}


@pytest.mark.parametrize("name", ["hnmlp", "mlp"])
def test_fold_gives_the_same_function_on_the_flat_observation(name):
    torch.manual_seed(0)
    student = build_student(name, LAYOUT, SMALL_HN if name == "hnmlp" else MLPConfig(hidden=16, layers=3))
    perturb_generators(student)
    ctx, mask = random_tasks(4)
    for task in range(4):
        params = student.generate(ctx[task:task + 1], mask[task:task + 1])
        layers = student.fold(params, mask[task])
        x = torch.randn(10, 4, 3)
        h = x.reshape(10, -1)
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                h = torch.relu(h)
        want = student.forward_with(params, x, mask[task].expand(10, -1), torch.zeros(10, dtype=torch.long))
        torch.testing.assert_close(h, want, atol=1e-5, rtol=1e-5)
        padded_rows = mask[task].repeat_interleave(3)
        assert torch.count_nonzero(layers[0][0][padded_rows]) == 0


def test_context_dropout_is_per_task_and_off_in_eval():
    torch.manual_seed(0)
    student = HNMLPStudent(LAYOUT, HNMLPConfig(hidden=16, embed=8, context_dropout=0.5))
    perturb_generators(student)
    ctx, mask = random_tasks(2)
    student.train()
    a, b = student.generate(ctx, mask)["w_in"], student.generate(ctx, mask)["w_in"]
    assert not torch.allclose(a, b)
    student.eval()
    torch.testing.assert_close(student.generate(ctx, mask)["w_in"], student.generate(ctx, mask)["w_in"])


# -------------------------------------------------------------------------------------------------
# losses

def test_mse_loss_is_balanced_half_squared_error_over_valid_dims():
    g = torch.Generator().manual_seed(0)
    mu_s, mu_t = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    act_mask = torch.tensor([[False] * 6, [False, True, True, True, True, True], [True, False, False, True, True, True]])
    mu_s[act_mask] = 1e6  # padded dims never count
    loss = mse_loss(mu_s, {"mu": mu_t, "act_mask": act_mask, "action": mu_t})
    s, t, m = mu_s.double().numpy(), mu_t.double().numpy(), act_mask.numpy()
    rows = [0.5 * np.sum(((s[b] - t[b]) ** 2)[~m[b]]) / np.sum(~m[b]) for b in range(3)]
    assert loss.item() == pytest.approx(np.mean(rows), rel=1e-6)


def test_logp_loss_is_balanced_gaussian_nll():
    g = torch.Generator().manual_seed(1)
    mu_s, action = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    act_mask = torch.zeros(4, 6, dtype=torch.bool)
    act_mask[1, 2:] = True
    act_mask[3, :5] = True
    batch = {"mu": torch.zeros(4, 6), "action": action, "act_mask": act_mask}
    s, a, m = mu_s.double().numpy(), action.double().numpy(), act_mask.numpy()
    std = 0.9
    logpdf = -0.5 * ((a - s) / std) ** 2 - np.log(std * np.sqrt(2 * np.pi))
    rows = [-np.sum(logpdf[b][~m[b]]) / np.sum(~m[b]) for b in range(4)]
    assert logp_loss(mu_s, batch).item() == pytest.approx(np.mean(rows), rel=1e-6)
    # the loss is smallest at the sampled action
    assert logp_loss(action, batch) < logp_loss(mu_s, batch)


# -------------------------------------------------------------------------------------------------
# configs and checkpoints

def test_configs_validate_and_have_presets():
    assert set(HNMLPConfig.presets()) >= {"paper", "paper-dropout", "small"}
    assert HNMLPConfig.presets()["paper"] == HNMLPConfig(hidden=256, layers=2, embed=128)
    with pytest.raises(ValueError):
        HNMLPConfig(hidden=0)
    with pytest.raises(ValueError):
        HNMLPConfig(context_dropout=1.0)
    with pytest.raises(CheckpointError, match="no field"):
        make_config(HNMLPConfig, {"hidden": 8, "width": 3})
    with pytest.raises(KdistillError, match="preset"):
        make_config(MLPConfig, None, "huge")


def test_student_checkpoint_loads_through_load_policy(tmp_path):
    from kdistill.io import save_run_checkpoint
    from kdistill.loading import load_policy
    from kdistill.rl.normalise import ObsNormalizer

    torch.manual_seed(0)
    student = HNMLPStudent(LAYOUT, SMALL_HN)
    perturb_generators(student)
    norm = ObsNormalizer((4, 3))
    norm.rms.mean = np.linspace(-1, 1, 12).reshape(4, 3)
    norm.rms.var = np.linspace(0.5, 2, 12).reshape(4, 3)
    meta = {"kind": "student", "domain": "toy", "arch": "hnmlp", "config": student.config_dict(),
            "layout": LAYOUT.to_dict(), "normalizer": norm.state(), "counters": {"epoch": 1, "step": 2}}
    save_run_checkpoint(tmp_path / "run", 1, student_tensors(student), meta)
    policy = load_policy(tmp_path / "run", domain="toy")
    assert policy.kind == "student" and policy.describe()["epochs"] == 1
    ctx, mask = random_tasks(3)
    from kdistill.domain import TaskContext

    context = TaskContext(ctx[2].numpy(), mask[2].numpy(), mask[2].repeat_interleave(2).numpy())
    with pytest.raises(KdistillError, match="prepare"):
        policy.act({"obs": np.zeros((1, 4, 6), np.float32)})
    policy.prepare("t2", context)
    raw = np.random.default_rng(0).normal(0, 2, (5, 4, 6)).astype(np.float32)
    got = policy.act({"obs": raw, "obs_mask": np.broadcast_to(mask[2].numpy(), (5, 4))})
    x = np.clip((raw[..., [0, 2, 3]] - norm.rms.mean) / np.sqrt(norm.rms.var + 1e-8), -10, 10).astype(np.float32)
    want = student(torch.from_numpy(x), ctx[2:3].expand(5, -1, -1), mask[2:3].expand(5, -1))
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-5)
    sampled = policy.act({"obs": np.repeat(raw[:1], 4000, 0)}, deterministic=False)
    assert np.std(sampled - got[:1]) == pytest.approx(0.9, rel=0.03)

    bad = dict(meta, config={**meta["config"], "hidden": 32})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_student_policy(student_tensors(student), bad)
    with pytest.raises(CheckpointError, match="not 'student'"):
        load_student_policy(student_tensors(student), dict(meta, kind="teacher"))


def test_vector_context_domains_get_the_vector_encoder():
    layout = Layout(max_tokens=1, obs_features=4, student_features=(0, 1, 2, 3), context_features=6,
                    actions_per_token=1, context_kind="vector")
    torch.manual_seed(0)
    student = HNMLPStudent(layout, SMALL_HN)
    assert student.encoder_name == "vector"
    perturb_generators(student)
    ctx = torch.randn(3, 1, 6)
    mask = torch.zeros(3, 1, dtype=torch.bool)
    k = torch.tensor([2, 0, 2, 1])
    x = torch.randn(4, 1, 4)
    mu = student.forward_with(student.generate(ctx, mask), x, mask[k], k)
    assert mu.shape == (4, 1)
    torch.testing.assert_close(mu, student(x, ctx[k], mask[k]), atol=1e-5, rtol=1e-5)
    with pytest.raises(KdistillError, match="unknown context encoder"):
        HNMLPStudent(LAYOUT, HNMLPConfig(encoder="gnn"))
