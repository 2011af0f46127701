"""Shared pieces of the hand computations in tests/test_methods.py and tests/test_robust_methods.py:
float64 models and parameter snapshots. Independent of suite.methods (PyTorch only).

Tolerances: a method and its hand version add the same float64 numbers in a different order (e.g. the
global gradient norm), so they agree to ~1e-15 relative; rtol=1e-10 leaves room for that and nothing else.
"""
from __future__ import annotations

import torch
from torch import nn

RTOL, ATOL = 1e-10, 1e-12


def mlp(seed: int = 0, d_in: int = 5, hidden: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def bn_mlp(seed: int = 0, d_in: int = 5, hidden: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, classes)).double()


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def bn_buffers(model) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers()}


def global_norm(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t ** 2).sum() for t in d.values()))


def max_diff(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


def clean_correct(model: nn.Module, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples of a TensorDataset that `model` classifies correctly: what attacks are run on."""
    x, y = dataset.tensors
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep], y[keep]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()
