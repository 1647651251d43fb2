"""Hypernetwork layers: an embedding in, the weights and biases of one dense layer out."""

from __future__ import annotations

import math

import torch
from torch import nn


class HypernetLayer(nn.Module):
    """Generates a dense layer ``(in_features -> out_features)`` from an embedding of size ``embed_dim``.

    ``forward(e (..., E)) -> (weight (..., in, out), bias (..., out))``, so a generated layer computes
    ``x @ weight + bias``.

    ``bias_init`` initialisation (the reference's): the weight generator has zero weights and a bias drawn
    from N(0, 1/fan_in), the bias generator is all zero. At initialisation every embedding therefore yields
    the same, conventionally scaled layer, and training learns context-dependent deltas from there.
    ``fan_in`` defaults to ``in_features``; the HN-MLP's input layer passes the whole flat observation size.
    """

    def __init__(self, embed_dim: int, in_features: int, out_features: int, fan_in: int | None = None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.fan_in = int(fan_in or in_features)
        self.weight_gen = nn.Linear(embed_dim, self.in_features * self.out_features)
        self.bias_gen = nn.Linear(embed_dim, self.out_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight_gen.weight.zero_()
            self.weight_gen.bias.normal_(0.0, math.sqrt(1.0 / self.fan_in))
            self.bias_gen.weight.zero_()
            self.bias_gen.bias.zero_()

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = embedding.shape[:-1]
        weight = self.weight_gen(embedding).reshape(*lead, self.in_features, self.out_features)
        return weight, self.bias_gen(embedding)
