"""Transformer actor-critics that read every token of the state (and, for ModuMorph, the context).

Two architectures, generic over any ``Layout`` (tokens x features -> actions per token):

* ``TransformerActorCritic`` built by ``build_transformer_teacher``: the MetaMorph teacher. Each
  token is embedded by one shared linear layer (scaled by sqrt(d_model)), passed through pre-LN
  ``nn.TransformerEncoderLayer`` blocks with a key padding mask (no positional embedding, no
  dropout), and decoded per token by one shared decoder. Actor and critic are two separate
  networks; the value is the mean of the critic's per-token values over real tokens.
* ``build_modumorph_teacher``: the ModuMorph variant. A small hypernetwork reads each token's
  context and writes that token's input embedding and decoder, and every layer's attention weights
  come from the context alone (query = key = context embedding, value = state), so they are fixed
  for a given task.

Both follow the actor-critic contract of docs/design.md: ``forward(obs) -> (mu (B, T*A), value (B,))``
with ``obs["obs"]`` already normalised, and a fixed ``action_std``. ``mu(obs)`` runs the actor only.

A layout with exteroception (``layout.extero_features > 0``, e.g. the height field of UNIMAL's terrain tasks) adds
to each network an MLP encoder of ``obs["extero"]`` (ReLU after every layer, ``EXTERO_HIDDEN`` wide), whose output
is repeated for every token and joined to the encoder's output before the decoder (the reference's late fusion,
reference section 3.1), so the decoder reads ``d_model + EXTERO_HIDDEN[-1]`` features per token.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn

from kdistill.domain import Layout
from kdistill.rl.distributions import ACTION_STD

_positive = attrs.validators.gt(0)
# The exteroception encoder's widths (reference EXT_HIDDEN_DIMS, the same for both terrain tasks). A constant rather
# than a config field, so the configs saved in existing runs stay equal to today's and those runs still resume.
EXTERO_HIDDEN = (64, 64)


def _even_split(instance, attribute, value):
    if instance.d_model % instance.num_heads:
        raise ValueError(f"d_model ({instance.d_model}) must be divisible by num_heads ({instance.num_heads})")


@attrs.frozen
class TransformerTeacherConfig:
    """MetaMorph teacher. ``paper`` is the HyperDistill teacher (about 1.66 M actor parameters for UNIMAL)."""

    d_model: int = attrs.field(default=128, validator=_positive)
    num_layers: int = attrs.field(default=5, validator=_positive)
    num_heads: int = attrs.field(default=2, validator=[_positive, _even_split])
    feedforward: int = attrs.field(default=1024, validator=_positive)
    decoder_hidden: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    embed_init: float = attrs.field(default=0.1, validator=_positive)  # U(-a, a) for the token embedding
    decoder_init: float = attrs.field(default=0.01, validator=_positive)  # U(-a, a) for the last decoder layer
    embed_scale: bool = True  # multiply embeddings by sqrt(d_model)
    action_std: float = attrs.field(default=ACTION_STD, validator=_positive)

    @classmethod
    def presets(cls) -> dict[str, "TransformerTeacherConfig"]:
        return {
            "paper": cls(),
            # ~1/8 of the paper's per-sample compute (fwd+bwd at batch 512: ~0.3-0.5 s on one core):
            # two pre-LN layers of width 64 keep cross-token attention, which is what lets one policy
            # serve many morphologies; PPO's update dominates the wall time on CPU, so depth is costly
            "cpu": cls(d_model=64, num_layers=2, num_heads=2, feedforward=256),
            # the reference's terrain teachers: the paper's, with a deeper decoder (csr.yaml, obstacle.yaml)
            "paper-vt": cls(decoder_hidden=(64,)),
            "paper-obstacle": cls(decoder_hidden=(64, 64)),
        }

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class ModuMorphTeacherConfig(TransformerTeacherConfig):
    """ModuMorph teacher: context-generated per-token embedding and decoder, context-fixed attention."""

    attention_context_layers: int = attrs.field(default=2, validator=attrs.validators.ge(0))  # extra Linear+ReLU after the first
    hypernet_context_layers: int = attrs.field(default=1, validator=attrs.validators.ge(0))

    @classmethod
    def presets(cls) -> dict[str, "ModuMorphTeacherConfig"]:
        return {"paper": cls(), "cpu": cls(d_model=64, num_layers=2, num_heads=2, feedforward=256),
                "paper-vt": cls(decoder_hidden=(64,)), "paper-obstacle": cls(decoder_hidden=(64, 64))}


# building blocks ------------------------------------------------------------------------------------

def _uniform_(layer: nn.Linear, weight: float, zero_bias: bool = False) -> nn.Linear:
    nn.init.uniform_(layer.weight, -weight, weight)
    if zero_bias:
        nn.init.zeros_(layer.bias)
    return layer


def _decoder(sizes: list[int], last_init: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    _uniform_(layers[-1], last_init, zero_bias=True)
    return nn.Sequential(*layers)


def _context_mlp(in_dim: int, d: int, extra_layers: int, init: float) -> nn.Sequential:
    layers: list[nn.Module] = [_uniform_(nn.Linear(in_dim, d), init), nn.ReLU()]
    for _ in range(extra_layers):
        layers += [nn.Linear(d, d), nn.ReLU()]
    return nn.Sequential(*layers)


class ExteroEncoder(nn.Module):
    """MLP over the exteroceptive vector with a ReLU after every layer, the last included (reference MLPObsEncoder)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = EXTERO_HIDDEN):
        super().__init__()
        layers: list[nn.Module] = []
        for i, o in zip((in_features, *hidden[:-1]), hidden):
            layers += [nn.Linear(i, o), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_features = hidden[-1]

    def forward(self, extero: torch.Tensor) -> torch.Tensor:
        return self.net(extero)


def _join_extero(h: torch.Tensor, encoder: ExteroEncoder | None, extero: torch.Tensor | None) -> torch.Tensor:
    """``h (B, T, d)`` with the encoded ``extero (B, E)`` appended to every token (late fusion)."""
    if encoder is None:
        return h
    if extero is None:
        raise ValueError("this teacher reads exteroception: obs['extero'] is missing")
    e = encoder(extero)
    return torch.cat([h, e[:, None, :].expand(-1, h.shape[1], -1)], dim=-1)


def masked_token_mean(x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x (B, T)`` over tokens where ``pad_mask (B, T)`` is False."""
    real = (~pad_mask).to(x.dtype)
    return (x * real).sum(-1) / real.sum(-1).clamp_min(1.0)


class TokenTransformer(nn.Module):
    """One MetaMorph network: shared token embedding, pre-LN encoder, shared per-token decoder."""

    def __init__(self, in_features: int, out_per_token: int, cfg: TransformerTeacherConfig, extero_features: int = 0):
        super().__init__()
        self.extero = ExteroEncoder(extero_features) if extero_features > 0 else None
        extra = self.extero.out_features if self.extero is not None else 0
        self.embed = _uniform_(nn.Linear(in_features, cfg.d_model), cfg.embed_init)
        self.scale = math.sqrt(cfg.d_model) if cfg.embed_scale else 1.0
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.d_model, cfg.num_heads, cfg.feedforward, dropout=0.0,
                                       norm_first=True, batch_first=True)
            for _ in range(cfg.num_layers))
        self.decoder = _decoder([cfg.d_model + extra, *cfg.decoder_hidden, out_per_token], cfg.decoder_init)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor, context: torch.Tensor | None = None,
                extero: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x) * self.scale
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=pad_mask)
        return self.decoder(_join_extero(h, self.extero, extero))


class FixedAttentionLayer(nn.Module):
    """Pre-LN encoder layer whose attention weights come from the context only (ModuMorph)."""

    def __init__(self, d: int, heads: int, feedforward: int):
        super().__init__()
        self.norm_context = nn.LayerNorm(d)
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, feedforward), nn.ReLU(), nn.Linear(feedforward, d))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        c = self.norm_context(ctx)
        x = x + self.attn(c, c, self.norm1(x), key_padding_mask=pad_mask, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class ModularTokenTransformer(nn.Module):
    """One ModuMorph network: per-token embedding and decoder written from the token's context."""

    def __init__(self, in_features: int, context_features: int, out_per_token: int, cfg: ModuMorphTeacherConfig,
                 extero_features: int = 0):
        super().__init__()
        d = cfg.d_model
        self.extero = ExteroEncoder(extero_features) if extero_features > 0 else None
        self.in_features, self.d = in_features, d
        self.scale = math.sqrt(d) if cfg.embed_scale else 1.0
        self.hyper_context = _context_mlp(context_features, d, cfg.hypernet_context_layers, cfg.embed_init)
        self.attention_context = _context_mlp(context_features, d, cfg.attention_context_layers, cfg.embed_init)
        # generators start as "bias only": every token gets the same random layer, which then specialises
        self.embed_weight = self._generator(d, in_features * d, cfg.embed_init)
        self.embed_bias = self._generator(d, d, 0.0)
        self.decoder_sizes = [d + (self.extero.out_features if self.extero is not None else 0), *cfg.decoder_hidden,
                              out_per_token]
        pairs = list(zip(self.decoder_sizes[:-1], self.decoder_sizes[1:]))
        self.decoder_weight = nn.ModuleList(self._generator(d, i * o, cfg.decoder_init) for i, o in pairs)
        self.decoder_bias = nn.ModuleList(self._generator(d, o, 0.0) for _, o in pairs)
        self.layers = nn.ModuleList(FixedAttentionLayer(d, cfg.num_heads, cfg.feedforward) for _ in range(cfg.num_layers))

    @staticmethod
    def _generator(d: int, out: int, bias_init: float) -> nn.Linear:
        layer = nn.Linear(d, out)
        nn.init.zeros_(layer.weight)
        if bias_init > 0:
            nn.init.uniform_(layer.bias, -bias_init, bias_init)
        else:
            nn.init.zeros_(layer.bias)
        return layer

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor, context: torch.Tensor | None = None,
                extero: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            raise ValueError("the ModuMorph teacher needs obs['context']")
        b, t, _ = x.shape
        hyper = self.hyper_context(context)
        w = self.embed_weight(hyper).view(b, t, self.in_features, self.d)
        h = (torch.einsum("btf,btfd->btd", x, w) + self.embed_bias(hyper)) * self.scale
        ctx = self.attention_context(context)
        for layer in self.layers:
            h = layer(h, ctx, pad_mask)
        h = _join_extero(h, self.extero, extero)
        last = len(self.decoder_weight) - 1
        for i, (wgen, bgen) in enumerate(zip(self.decoder_weight, self.decoder_bias)):
            din, dout = self.decoder_sizes[i], self.decoder_sizes[i + 1]
            h = torch.einsum("bti,btio->bto", h, wgen(hyper).view(b, t, din, dout)) + bgen(hyper)
            if i < last:
                h = torch.relu(h)
        return h


class TransformerActorCritic(nn.Module):
    """Separate actor and critic token networks; the PPO-facing module of docs/design.md."""

    def __init__(self, layout: Layout, actor: nn.Module, critic: nn.Module, action_std: float):
        super().__init__()
        self.layout = layout
        self.actor, self.critic = actor, critic
        self.action_std = float(action_std)

    def _run(self, net: nn.Module, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return net(obs["obs"], obs["obs_mask"], obs.get("context"), obs.get("extero"))

    def mu(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self._run(self.actor, obs)
        return out.reshape(out.shape[0], -1)

    def value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return masked_token_mean(self._run(self.critic, obs)[..., 0], obs["obs_mask"])

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(obs), self.value(obs)

    def load_state_adding_extero(self, state: dict[str, torch.Tensor]) -> None:
        """Load the weights of the same architecture built without exteroception, so that this model acts exactly as
        that one until training teaches it to use the new input.

        The exteroception encoders keep their fresh initialisation. The encoded exteroception is joined after the
        token features, so it enters the decoder's first layer as trailing inputs: in that layer's weight (for
        ModuMorph, in the rows of the generator that writes it) the source fills the leading slice and the trailing
        part starts at zero."""
        own = self.state_dict()
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise ValueError(f"weights {unexpected[:3]} have no place in this model")
        loaded = {}
        for key, target in own.items():
            if key.startswith(("actor.extero.", "critic.extero.")):
                loaded[key] = target
                continue
            if key not in state:
                raise ValueError(f"weight {key} is missing")
            source = state[key]
            grown = [d for d in range(target.dim()) if source.dim() == target.dim() and source.shape[d] != target.shape[d]]
            if source.shape == target.shape:
                loaded[key] = source
            elif len(grown) == 1 and source.shape[grown[0]] < target.shape[grown[0]]:
                widened = torch.zeros_like(target)
                widened.narrow(grown[0], 0, source.shape[grown[0]]).copy_(source)
                loaded[key] = widened
            else:
                raise ValueError(f"weight {key} has shape {tuple(source.shape)}, not {tuple(target.shape)} or a slice of it")
        self.load_state_dict(loaded)


def build_transformer_teacher(layout: Layout, config: TransformerTeacherConfig) -> TransformerActorCritic:
    actor = TokenTransformer(layout.obs_features, layout.actions_per_token, config, layout.extero_features)
    critic = TokenTransformer(layout.obs_features, 1, config, layout.extero_features)
    return TransformerActorCritic(layout, actor, critic, config.action_std)


def build_modumorph_teacher(layout: Layout, config: ModuMorphTeacherConfig) -> TransformerActorCritic:
    def net(out: int) -> ModularTokenTransformer:
        return ModularTokenTransformer(layout.obs_features, layout.context_features, out, config, layout.extero_features)

    return TransformerActorCritic(layout, net(layout.actions_per_token), net(1), config.action_std)
