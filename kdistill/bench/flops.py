"""What one policy step costs: parameters and FLOPs per sample, counted two ways and always labelled.

FLOPs here are 2 x multiply-accumulates (a ``Linear(i, o)`` on one row is ``2*i*o`` FLOPs), as in the
reference and in ``torch.utils.flop_counter``.

* **measured** (``measured_flops``): ``FlopCounterMode`` counts the matrix products torch actually runs.
  Two fixes make it count transformers: the MHA fused fast path is switched off while counting (it
  hides the whole encoder from the counter, about 240x too few FLOPs), and CPU attention
  (``_scaled_dot_product_flash_attention_for_cpu``, absent from torch's table) gets the usual SDPA
  formula. Elementwise ops (bias, ReLU, LayerNorm, softmax) count 0, as in torch.
* **analytic** (``analytic_cost``, ``token_transformer_cost``): the reference's convention (reference
  section 6.2). A ``Linear(i, o)`` costs ``2*i*o`` FLOPs per row it is applied to and ``(i+1)*o``
  parameters; attention is counted per head at the full model width (the reference's arithmetic, which
  overstates a torch ``MultiheadAttention`` whose heads split the width); norms and activations are free.
  The student counts only the generated base MLP at every token slot (``dense_cost`` of its folded
  layers), never the hypernetwork, which runs once per task.

Example::

    cost = analytic_cost(lambda: net(x), net, batch_size=len(x))     # Cost(flops=..., params=...)
    flops = measured_flops(lambda: net(x), batch_size=len(x))
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import torch
from torch import nn

from kdistill.teachers.transformer import ModularTokenTransformer, TokenTransformer

ANALYTIC = "analytic (reference 6.2: Linear = 2*in*out FLOPs per row, (in+1)*out params)"
MEASURED = "measured (torch FlopCounterMode, MHA fast path off; parameters = tensor sizes)"
STYLES = ("metamorph", "modumorph")


@attrs.frozen
class Cost:
    """Per-sample FLOPs (2 x MACs) and parameters of one forward pass."""

    flops: int
    params: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.params + other.params)

    def to_dict(self) -> dict[str, int]:
        return {"flops": int(self.flops), "params": int(self.params)}


ZERO = Cost(0, 0)


def linear_cost(in_features: int, out_features: int, rows: int = 1, bias: bool = True) -> Cost:
    """A dense layer applied to ``rows`` rows: ``2*in*out*rows`` FLOPs, ``(in+1)*out`` parameters."""
    return Cost(2 * in_features * out_features * rows, (in_features + int(bias)) * out_features)


def mlp_cost(sizes: Sequence[int], rows: int = 1) -> Cost:
    """Dense layers ``sizes[0] -> sizes[1] -> ...`` applied to ``rows`` rows."""
    total = ZERO
    for i, o in zip(sizes[:-1], sizes[1:]):
        total = total + linear_cost(i, o, rows)
    return total


def dense_cost(layers: Sequence[tuple[Any, Any]]) -> Cost:
    """Dense layers given as ``[(weight (in, out), bias (out,)), ...]`` (``Student.fold``'s output), per row."""
    total = ZERO
    for w, b in layers:
        i, o = int(w.shape[0]), int(w.shape[1])
        total = total + linear_cost(i, o, bias=b is not None)
    return total


def attention_cost(embed_dim: int, num_heads: int, q_tokens: int, kv_tokens: int | None = None,
                   fixed: bool = False) -> Cost:
    """Multi-head attention in the reference's convention: every head works at the full width ``embed_dim``.

    Per head: the value projection, plus (unless ``fixed``) the query and key projections and the ``QK^T``
    scores, plus the weighted sum of values; then a ``Linear(heads*d, d)`` merges the heads. ``fixed``
    attention (ModuMorph: weights from the context alone) has no query/key work per step and stores a
    ``q x kv`` attention map per head instead.
    """
    d, h, tq = embed_dim, num_heads, q_tokens
    tk = q_tokens if kv_tokens is None else kv_tokens
    value = linear_cost(d, d, tk)
    aggregate = Cost(2 * tq * tk * d, 0)
    if fixed:
        head = value + aggregate + Cost(0, tq * tk)
    else:
        head = linear_cost(d, d, tq) + linear_cost(d, d, tk) + value + Cost(2 * tq * tk * d, 0) + aggregate
    return Cost(h * head.flops, h * head.params) + linear_cost(h * d, d, tq)


def token_transformer_cost(tokens: int, in_features: int, d_model: int, num_layers: int, num_heads: int,
                           feedforward: int, decoder_sizes: Sequence[int], style: str = "metamorph",
                           extero_sizes: Sequence[int] = ()) -> Cost:
    """A token transformer (embed, pre-LN encoder layers, per-token decoder) in the reference's convention.

    ``decoder_sizes`` runs from the decoder's input (``d_model``, plus the exteroception encoder's output when
    there is one) to the outputs per token. ``style="modumorph"`` counts it as ModuMorph: fixed attention, and a
    per-token (generated) embedding and decoder whose parameters count once per token slot; this is how the
    reference's script counts the teacher for the paper's ratios. ``extero_sizes`` (e.g. ``[1410, 64, 64]``) is an
    exteroception encoder, run once per sample and counted once in either style.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    modular = style == "modumorph"
    slots = tokens if modular else 1
    embed = linear_cost(in_features, d_model, tokens)
    decoder = mlp_cost(decoder_sizes, tokens)
    layer = (attention_cost(d_model, num_heads, tokens, fixed=modular)
             + linear_cost(d_model, feedforward, tokens) + linear_cost(feedforward, d_model, tokens))
    extero = mlp_cost(extero_sizes) if len(extero_sizes) > 1 else ZERO
    return Cost(embed.flops + num_layers * layer.flops + decoder.flops + extero.flops,
                slots * embed.params + num_layers * layer.params + slots * decoder.params + extero.params)


def token_transformer_sizes(net: nn.Module) -> dict[str, Any] | None:
    """The sizes ``token_transformer_cost`` needs, read off one of ``kdistill.teachers.transformer``' token networks
    (``TokenTransformer`` -> style metamorph, ``ModularTokenTransformer`` -> style modumorph); None otherwise."""

    if isinstance(net, TokenTransformer):
        first = net.layers[0]
        decoder = [m for m in net.decoder if isinstance(m, nn.Linear)]
        sizes = {"in_features": net.embed.in_features, "d_model": net.embed.out_features, "num_layers": len(net.layers),
                 "num_heads": first.self_attn.num_heads, "feedforward": first.linear1.out_features,
                 "decoder_sizes": [decoder[0].in_features] + [m.out_features for m in decoder], "style": "metamorph"}
    elif isinstance(net, ModularTokenTransformer):
        first = net.layers[0]
        sizes = {"in_features": net.in_features, "d_model": net.d, "num_layers": len(net.layers),
                 "num_heads": first.attn.num_heads, "feedforward": first.ff[0].out_features,
                 "decoder_sizes": list(net.decoder_sizes), "style": "modumorph"}
    else:
        return None
    if net.extero is not None:
        encoder = [m for m in net.extero.net if isinstance(m, nn.Linear)]
        sizes["extero_sizes"] = [encoder[0].in_features] + [m.out_features for m in encoder]
    return sizes


# -------------------------------------------------------------------------------------------------
# counting by running the module

def analytic_cost(call: Callable[[], Any], module: nn.Module, batch_size: int) -> Cost:
    """Run ``call()`` once and count, in the reference's convention, every ``nn.Linear`` and
    ``nn.MultiheadAttention`` of ``module`` that it calls, by the shapes they see; per sample.

    Parameters are those of the layers that ran (each once), so ``call`` picks the path that is priced,
    e.g. a teacher's actor without its critic. Anything that is not a module call (einsum with generated
    weights, functional ops) is not seen: count such networks with a formula.
    """
    flops = 0
    params: dict[int, int] = {}

    def on_linear(mod: nn.Linear, args, output):
        nonlocal flops
        rows = args[0].numel() // mod.in_features
        flops += linear_cost(mod.in_features, mod.out_features, rows).flops
        params[id(mod)] = linear_cost(mod.in_features, mod.out_features, bias=mod.bias is not None).params

    def on_attention(mod: nn.MultiheadAttention, args, kwargs, output):
        nonlocal flops
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        seq_dim = 1 if mod.batch_first or query.dim() == 2 else 0
        batch = query.numel() // (query.shape[seq_dim] * query.shape[-1])
        cost = attention_cost(mod.embed_dim, mod.num_heads, query.shape[seq_dim], key.shape[seq_dim])
        flops += batch * cost.flops
        params[id(mod)] = cost.params

    handles = []
    for mod in module.modules():
        if isinstance(mod, nn.MultiheadAttention):
            handles.append(mod.register_forward_hook(on_attention, with_kwargs=True))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(on_linear))
    try:
        with _fast_path(False), torch.no_grad():
            call()
    finally:
        for handle in handles:
            handle.remove()
    return Cost(round(flops / batch_size), sum(params.values()))


class _fast_path:
    """Switch the MHA fused fast path on or off for a block (it skips module calls and the flop counter)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(self.enabled)

    def __exit__(self, *exc):
        torch.backends.mha.set_fastpath_enabled(self.before)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict:
    from torch.utils.flop_counter import flop_registry

    extra = {}
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_attention is not None and cpu_attention not in flop_registry:
        extra[cpu_attention] = _sdpa_flops
    return extra


def measured_flops(call: Callable[[], Any], batch_size: int) -> int:
    """FLOPs per sample of ``call()`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them (see the
    module docstring for the two fixes applied)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    with _fast_path(False), torch.no_grad(), counter:
        call()
    return round(counter.get_total_flops() / batch_size)


def parameter_count(module: nn.Module) -> int:
    """All parameters of ``module`` (trainable or not), as tensor sizes."""
    return int(sum(p.numel() for p in module.parameters()))
