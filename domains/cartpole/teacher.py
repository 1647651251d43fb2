"""A context-reading actor-critic for vector-context domains: an MLP over [state, context], FiLM-modulated.

It follows kdistill's teacher contract (docs/design.md): ``forward(obs) -> (mu (B, T*A), value (B,))`` with the
normalised state in ``obs["obs"]`` (B, T, F) and the context in ``obs["context"]`` (B, T, C); ``action_std`` is the
fixed exploration std PPO samples with. Actor and critic are separate networks, as in the reference PPO.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from kdistill import Layout, TeacherSpec

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


def _hidden_sizes(value) -> tuple[int, ...]:
    sizes = tuple(int(v) for v in value)
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"hidden must be one or more positive layer widths, got {value}")
    return sizes


@attrs.frozen
class ContextMLPConfig:
    """Sizes of the context-reading MLP teacher and how the context enters it.

    ``conditioning="concat"`` feeds [state, context] to a plain MLP. ``"film"`` does that too and also lets a small
    context network scale and shift every hidden layer (FiLM), so a context entry such as an actuator sign can
    flip the whole controller multiplicatively instead of being approximated by additive features.
    """

    hidden: tuple[int, ...] = attrs.field(default=(256, 256), converter=_hidden_sizes)
    activation: str = attrs.field(default="tanh", validator=attrs.validators.in_(tuple(ACTIVATIONS)))
    conditioning: str = attrs.field(default="film", validator=attrs.validators.in_(("concat", "film")))
    film_hidden: int = attrs.field(default=64, validator=attrs.validators.gt(0))
    # below the core's 0.9: actions live in [-1, 1] and a pole falls within a second, so 0.9 noise drowns the signal
    action_std: float = attrs.field(default=0.5, converter=float)
    # last actor layer starts near zero so early exploration is the std alone, not a random bias
    actor_out_gain: float = attrs.field(default=0.01, converter=float)

    @action_std.validator
    def _check_std(self, attribute, value):
        if not value > 0:
            raise ValueError(f"action_std must be positive, got {value}")

    @classmethod
    def presets(cls) -> dict[str, "ContextMLPConfig"]:
        return {
            "small": cls(hidden=(64, 64)),
            "default": cls(),
            "large": cls(hidden=(512, 512, 512)),
            "concat": cls(conditioning="concat"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "hidden": list(self.hidden)}


def _linear(a: int, b: int, gain: float) -> nn.Linear:
    linear = nn.Linear(a, b)
    if gain > 0:
        nn.init.orthogonal_(linear.weight, gain=gain)
    else:
        nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class ConditionedMLP(nn.Module):
    """An MLP over [state, context] whose hidden layers are optionally FiLM-modulated by the context."""

    def __init__(self, state_dim: int, context_dim: int, out_dim: int, config: ContextMLPConfig, out_gain: float):
        super().__init__()
        widths = [state_dim + context_dim, *config.hidden]
        self.hidden = nn.ModuleList(_linear(a, b, 2**0.5) for a, b in zip(widths[:-1], widths[1:]))
        self.out = _linear(widths[-1], out_dim, out_gain)
        self.act = ACTIVATIONS[config.activation]()
        self.film: nn.Sequential | None = None
        if config.conditioning == "film":
            # the last layer starts at zero: scale 1, shift 0, i.e. the plain MLP, until the context proves useful
            self.film = nn.Sequential(_linear(context_dim, config.film_hidden, 2**0.5), nn.Tanh(),
                                      _linear(config.film_hidden, 2 * sum(config.hidden), 0.0))
        self.sizes = list(config.hidden)

    def forward(self, state: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = torch.cat([state, context], dim=1)
        mods = self.film(context).split([n for n in self.sizes for _ in (0, 1)], dim=1) if self.film is not None else None
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if mods is not None:
                h = h * (1.0 + mods[2 * i]) + mods[2 * i + 1]
            h = self.act(h)
        return self.out(h)


class ContextMLPTeacher(nn.Module):
    """Actor and critic networks that both read the flattened state and context of every token slot."""

    def __init__(self, layout: Layout, config: ContextMLPConfig):
        super().__init__()
        self.layout, self.config = layout, config
        state_dim = layout.max_tokens * layout.obs_features
        context_dim = layout.max_tokens * layout.context_features
        self.actor = ConditionedMLP(state_dim, context_dim, layout.num_actions, config, config.actor_out_gain)
        self.critic = ConditionedMLP(state_dim, context_dim, 1, config, 1.0)
        self.action_std = config.action_std

    def _inputs(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        state, context = obs["obs"], obs["context"]
        keep = (~obs["obs_mask"]).unsqueeze(-1).to(state.dtype)  # zero padded slots (none when T = 1)
        return (state * keep).flatten(1), (context.to(state.dtype) * keep).flatten(1)

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        state, context = self._inputs(obs)
        return self.actor(state, context), self.critic(state, context).squeeze(-1)

    def mu(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean action alone (the actor; skips the critic)."""
        return self.actor(*self._inputs(obs))

    def value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The value alone (the critic; skips the actor)."""
        return self.critic(*self._inputs(obs)).squeeze(-1)


def build_context_mlp(layout: Layout, config: ContextMLPConfig | None = None) -> ContextMLPTeacher:
    return ContextMLPTeacher(layout, config or ContextMLPConfig())


CONTEXT_MLP = TeacherSpec(
    name="context-mlp",
    build=build_context_mlp,
    config_cls=ContextMLPConfig,
    description="MLP actor-critic over state and context together (for vector-context domains)",
)
