"""The method contract: a method owns the whole training step.

`train_step(model, batch, optimizer, adapter) -> dict` runs every forward and backward pass the
method needs, calls `optimizer.step()` once, and returns at least {"loss": float}. The optimizer is
the *base* optimizer (SGD or AdamW) that the trainer built and the LR schedule drives; SAM-style
methods perturb the weights around it rather than wrapping it in a second optimizer object.

Each method declares its parameters (validated by `suite.params`) and its cost in forward-backward
passes per step, counting a forward-only pass as 1/3 (a backward costs about two forwards).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

from typing import TYPE_CHECKING

from suite.modalities.base import Adapter

if TYPE_CHECKING:
    import torch
from suite.params import Param, fmt_value, resolve_params


class Method:
    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, **params: Any):
        self.p = resolve_params(f"method {self.name}", self.params, params)

    def cost(self) -> float:
        """Forward-backward passes per training step."""
        raise NotImplementedError

    def train_step(self, model: torch.nn.Module, batch: Any, optimizer: torch.optim.Optimizer,
                   adapter: Adapter) -> dict[str, float]:
        raise NotImplementedError

    def label(self) -> str:
        """Short human label for leaderboards, e.g. 'SAM rho=0.1'."""
        args = " ".join(f"{k}={fmt_value(v)}" for k, v in self.p.items())
        return f"{self.name.upper()} {args}".strip()
