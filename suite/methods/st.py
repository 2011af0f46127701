"""Standard training: one forward-backward pass on the clean batch."""
from __future__ import annotations

from suite.methods.base import Method
from suite.registry import METHODS


@METHODS.register("st")
class StandardTraining(Method):
    description = "standard training: the base optimizer (SGD with momentum/weight decay, or AdamW) on the clean loss"
    params = {}

    def cost(self) -> float:
        return 1.0

    def train_step(self, model, batch, optimizer, adapter, ctx=None):
        optimizer.zero_grad(set_to_none=True)
        out = adapter.forward(model, batch)
        loss = adapter.loss(out, batch)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "acc": adapter.correct(out.detach(), batch).float().mean().item()}

    def label(self) -> str:
        return "ST"
