"""Sharpness-aware minimization and its variants, each written once for every modality.

All three take one ascent step on the weights, w -> w + e(w), compute the gradient there, return to
w and let the base optimizer step with that gradient:
- SAM  (Foret et al., ICLR 2021):  e = rho * g / ||g||.
- ASAM (Kwon et al., ICML 2021):   e = rho * T^2 g / ||T g||, T = |w| + eta on weight tensors
  (identity on biases), as in the authors' implementation.
- ESAM (Du et al., ICLR 2022): stochastic weight perturbation (each parameter tensor perturbed
  with probability beta, e = rho / beta * g_S / ||g_S||) and sharpness-sensitive data selection
  (the second gradient uses only the floor(gamma * B) examples whose loss rose the most
  under the perturbation). beta = gamma = 1 is exactly SAM.

BatchNorm running statistics are updated once per step, by the first pass at w; passes at w + e
use batch statistics but leave the running ones alone (see `frozen_bn_stats`).
"""
from __future__ import annotations

from suite.methods.base import Method
from suite.modalities.base import frozen_bn_stats
from suite.params import Param, nonneg, unit_interval
from suite.registry import METHODS


class _AscentMethod(Method):
    """Shared SAM skeleton; subclasses define the perturbation."""

    def perturbation(self, named: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor | None]:
        raise NotImplementedError

    def cost(self) -> float:
        return 2.0

    def _first_pass(self, model, batch, adapter):
        out = adapter.forward(model, batch)
        loss = adapter.loss(out, batch)
        loss.backward()
        return out, loss

    def _second_pass(self, model, batch, adapter, first_out, first_loss):
        loss = adapter.loss(adapter.forward(model, batch), batch)
        loss.backward()

    def train_step(self, model, batch, optimizer, adapter):
        import torch

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer.zero_grad(set_to_none=True)
        out, loss = self._first_pass(model, batch, adapter)
        with torch.no_grad():
            eps = self.perturbation(named)
            backup = [p.detach().clone() for _, p in named]
            for (_, p), e in zip(named, eps):
                if e is not None:
                    p.add_(e)
        optimizer.zero_grad(set_to_none=True)
        with frozen_bn_stats(model):
            self._second_pass(model, batch, adapter, out, loss)
        with torch.no_grad():  # restore w exactly (w + e - e is not w in floating point)
            for (_, p), b in zip(named, backup):
                p.copy_(b)
        optimizer.step()
        return {"loss": loss.item(), "acc": adapter.correct(out.detach(), batch).float().mean().item()}


def _global_norm(tensors) -> torch.Tensor:
    import torch

    ts = [t for t in tensors if t is not None]
    if not ts:
        return torch.tensor(0.0)
    return torch.norm(torch.stack([t.norm(p=2) for t in ts]), p=2)


@METHODS.register("sam")
class SAM(_AscentMethod):
    name = "sam"
    description = "sharpness-aware minimization (Foret et al. 2021): gradient at w + rho g/||g||"
    params = {"rho": Param(float, 0.05, "radius of the l2 weight perturbation", check=nonneg)}

    def perturbation(self, named):
        grads = [p.grad for _, p in named]
        scale = self.p["rho"] / (_global_norm(grads) + 1e-12)
        return [None if g is None else g * scale for g in grads]


@METHODS.register("asam")
class ASAM(_AscentMethod):
    name = "asam"
    description = "adaptive SAM (Kwon et al. 2021): scale-invariant radius, e = rho T^2 g / ||T g||, T = |w| + eta"
    params = {
        "rho": Param(float, 0.5, "radius in the normalized weight space", check=nonneg),
        "eta": Param(float, 0.01, "offset of the normalization operator T = |w| + eta", check=nonneg),
    }

    def perturbation(self, named):
        ts = [(p.detach().abs() + self.p["eta"]) if "weight" in n else None for n, p in named]
        tg = [None if p.grad is None else (p.grad if t is None else t * p.grad) for (_, p), t in zip(named, ts)]
        scale = self.p["rho"] / (_global_norm(tg) + 1e-12)
        return [None if g is None else (g if t is None else t * g) * scale for g, t in zip(tg, ts)]


@METHODS.register("esam")
class ESAM(_AscentMethod):
    name = "esam"
    description = ("efficient SAM (Du et al. 2022): perturb a random beta fraction of parameter tensors, "
                   "take the second gradient on the gamma fraction of sharpest examples")
    params = {
        "rho": Param(float, 0.05, "radius of the weight perturbation", check=nonneg),
        "beta": Param(float, 0.5, "probability that a parameter tensor is perturbed (SWP)", check=unit_interval),
        "gamma": Param(float, 0.5, "fraction of the batch used for the second gradient (SDS)", check=unit_interval),
    }

    def cost(self) -> float:
        # first forward-backward, a forward at w + e to rank examples, a second pass on gamma of them;
        # with gamma = 1 no ranking forward is run (the step is SAM's)
        if self.p["gamma"] >= 1.0:
            return 2.0
        return 1.0 + 1.0 / 3.0 + self.p["gamma"]

    def _first_pass(self, model, batch, adapter):
        import torch

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self.p["beta"] < 1.0:  # SWP: tensors left out get no gradient and no perturbation
            keep = torch.rand(len(named)) < self.p["beta"]
            for (_, p), k in zip(named, keep.tolist()):
                p.requires_grad_(bool(k))
        try:
            out = adapter.forward(model, batch)
            per_example = adapter.loss(out, batch, reduction="none")
            loss = per_example.mean()
            if any(p.requires_grad for _, p in named):
                loss.backward()
        finally:
            for _, p in named:
                p.requires_grad_(True)
        self._loss_before = per_example.detach()
        return out, loss

    def perturbation(self, named):
        grads = [p.grad for _, p in named]
        scale = self.p["rho"] / (self.p["beta"] * (_global_norm(grads) + 1e-12))
        return [None if g is None else g * scale for g in grads]

    def _second_pass(self, model, batch, adapter, first_out, first_loss):
        import torch

        n = adapter.batch_size(batch)
        k = n if self.p["gamma"] >= 1.0 else max(1, int(n * self.p["gamma"]))
        if k < n:
            with torch.no_grad():
                after = adapter.loss(adapter.forward(model, batch), batch, reduction="none")
            sharpness = after - self._loss_before
            index = torch.topk(sharpness, k).indices.sort().values
            batch = adapter.subset(batch, index)
        loss = adapter.loss(adapter.forward(model, batch), batch)
        loss.backward()
