"""Context encoders: per-token task context ``(K, T, C)`` -> per-token embeddings ``(K, T, E)``.

Each encoder is an ``nn.Module`` built as ``cls(context_dim, embed_dim)`` whose ``forward(context, mask)``
takes ``mask`` (K, T) bool, True = padded token. Registered by name through ``register_context_encoders``
(see ``kdistill.plugins.builtin``): ``transformer`` (the reference's choice), ``mlp`` (per-token, no mixing) and
``vector`` (for domains whose context is one plain vector, ``T == 1``).
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.errors import KdistillError


class TransformerContextEncoder(nn.Module):
    """Linear(C, E), then one pre-LN transformer layer over the tokens with a key padding mask (no final norm).

    Tokens exchange information here, so each token's embedding knows the whole task (e.g. a body part's token knows
    the rest of the body); padded tokens are never attended to.
    """

    def __init__(self, context_dim: int, embed_dim: int = 128, heads: int = 2, feedforward: int = 256):
        super().__init__()
        self.embed = nn.Linear(context_dim, embed_dim)
        self.layer = nn.TransformerEncoderLayer(
            embed_dim, heads, dim_feedforward=feedforward, dropout=0.0,
            batch_first=True, norm_first=True,
        )

    def forward(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.layer(self.embed(context), src_key_padding_mask=mask)


class MLPContextEncoder(nn.Module):
    """The same MLP on every token: C -> E -> E -> E with ReLU after each layer (tokens do not interact)."""

    def __init__(self, context_dim: int, embed_dim: int = 128, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = []
        width = context_dim
        for _ in range(layers):
            mods += [nn.Linear(width, embed_dim), nn.ReLU()]
            width = embed_dim
        self.net = nn.Sequential(*mods)

    def forward(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(context)


class VectorContextEncoder(MLPContextEncoder):
    """An MLP (C -> E -> E, ReLU) for one-token contexts that are a plain vector (``context_kind='vector'``)."""

    def __init__(self, context_dim: int, embed_dim: int = 128, layers: int = 2):
        super().__init__(context_dim, embed_dim, layers)

    def forward(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if context.shape[-2] != 1:
            raise KdistillError(
                f"the 'vector' context encoder takes one context token, got {context.shape[-2]}; "
                "use the 'transformer' or 'mlp' encoder for per-token contexts."
            )
        return self.net(context)


class ExteroEncoder(nn.Module):
    """The students' exteroception encoder: an MLP ``[E, 64, 64]`` with a ReLU after every layer (the reference's
    ``MLPObsEncoder`` with ``EXT_HIDDEN_DIMS [64, 64]``, as in the teachers), run on the raw ``extero`` vector."""

    def __init__(self, in_features: int, sizes: tuple[int, ...] = (64, 64)):
        super().__init__()
        mods: list[nn.Module] = []
        width = in_features
        for out in sizes:
            mods += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.net = nn.Sequential(*mods)
        self.out_features = width

    def forward(self, extero: torch.Tensor) -> torch.Tensor:
        return self.net(extero)

    def dense_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(weight (in, out), bias), ...]``, ReLU after every layer."""
        return [(m.weight.T, m.bias) for m in self.net if isinstance(m, nn.Linear)]


ENCODERS = {
    "transformer": TransformerContextEncoder,
    "mlp": MLPContextEncoder,
    "vector": VectorContextEncoder,
}
