"""A linear two-class model whose logits [0, w . x] make cross-entropy the logistic loss."""
from __future__ import annotations

import torch
from torch import nn


class LinearLogit(nn.Module):
    """z = w . x (no bias), returned as the two-class logits [0, z].

    Cross-entropy on [0, z] with class 1 for y = +1 is -log(e^z / (1 + e^z)) = log(1 + exp(-z)), and
    with class 0 for y = -1 it is log(1 + exp(z)): together log(1 + exp(-y z)), the logistic loss,
    so the suite's ordinary cross-entropy adapter trains a logistic regression.
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1, bias=False)

    def forward(self, x):
        z = self.linear(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)
