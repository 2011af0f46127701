"""Layers shared by the image models.

`Normalize` is every image model's first layer: the suite feeds models pixels in [0, 1] and attacks
them there, so the (x - mean) / std the network was trained with lives inside the model, where no
attack or evaluation path can forget it (the paper's code fed several attacks wrongly normalized
inputs; see PAPER.md, "Known defects").
"""
from __future__ import annotations

import torch
from torch import nn

# Per-channel statistics of the training splits (on the 0..1 scale), as the usual reference code
# writes them (e.g. Wong et al.'s fast_adversarial, the paper's authors' code).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2770, 0.2691, 0.2821)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer (buffers, so they follow .to(device)
    and are saved with the weights, but are never trained)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        fmt = lambda t: ", ".join(f"{v:.4f}" for v in t.flatten().tolist())  # noqa: E731
        return f"mean=({fmt(self.mean)}), std=({fmt(self.std)})"
