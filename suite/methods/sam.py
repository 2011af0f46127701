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

What ESAM's savings are, as implemented (costs measured with benchmarks/perf.py):
- SWP: the first backward computes the gradients of the chosen tensors only (`backward(inputs=...)`:
  autograd skips the weight-gradient kernels of the others, and stops early below the lowest
  chosen tensor). Parameters keep requires_grad, which DistributedDataParallel and torch.compile
  need to stay unchanged from step to step.
- SDS: the examples are ranked by a forward pass at w + e without a graph (about a third of a
  forward-backward pass), and the second forward-backward runs on the gamma * B chosen examples only.
  The alternative that runs no forward twice (one forward at w + e with a graph on the whole
  batch, then a backward of the chosen examples' losses) is dearer: the backward through the whole
  batch's graph costs the whole batch whatever the gradient's zeros, about 0.6 ST more at gamma 0.5.
  It would also change the algorithm with BatchNorm (the chosen examples' gradient would flow
  through statistics of the whole batch, not those of the chosen ones as in the authors' code).

Mixed precision (amp=fp16): the step context's `scaler` is a torch.amp.GradScaler (see
suite.methods.base). Both backward passes run on the scaled loss; the first pass's gradient is
unscaled before the perturbation's norm is taken; an overflow in the first pass leaves e = 0 and marks
the second pass's gradient as overflowed, so `scaler.step` skips the step (and lowers the scale) on an
overflow in either pass.

Several processes (torchrun): the model is DistributedDataParallel. The first-pass gradient is the
global batch's (all-reduced; `sam_ascent=per_replica`, the step context's `ascent_sync` False, keeps
each rank's own, m-sharpness), so every rank takes the same ascent step; the second pass is
all-reduced by DDP. ESAM's tensor choice is drawn on rank 0 and broadcast; its data selection ranks
each rank's own share (as the authors' code does per GPU), and the gradient of its chosen tensors is
all-reduced by hand, weighted by the step context's `share`.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from suite.methods.base import Method, StepContext
from suite.modalities.base import frozen_bn_stats
from suite.params import Param, nonneg, unit_interval
from suite.registry import METHODS

if TYPE_CHECKING:  # torch is imported where it is used (listing the registries must not import it)
    import torch


class WeightAscentMethod(Method):
    """SAM's step, shared by every method that ascends in weight space: a first pass at w, one ascent
    step w -> w + e, the gradient at w + e, w restored, the base optimizer's step with that gradient.
    Subclasses define the perturbation e (and may change the passes)."""

    def perturbation(self, named: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor | None]:
        raise NotImplementedError

    def cost(self) -> float:
        return 2.0

    @staticmethod
    def _backward(loss, ctx: StepContext, inputs=None) -> None:
        """loss.backward(), on the scaled loss under amp=fp16."""
        if ctx.scaler is not None:
            loss = ctx.scaler.scale(loss)
        loss.backward(inputs=inputs)

    @staticmethod
    def _ascent_context(model, ctx: StepContext):
        """The first pass under DDP: its gradient is all-reduced, unless the ascent is per replica."""
        from suite import distributed

        if distributed.is_ddp(model) and not ctx.ascent_sync:
            return model.no_sync()
        return contextlib.nullcontext()

    def _first_pass(self, model, batch, adapter, ctx: StepContext):
        with self._ascent_context(model, ctx):
            out = adapter.forward(model, batch)
            loss = adapter.loss(out, batch)
            self._backward(loss, ctx)
        return out, loss

    def _second_pass(self, model, batch, adapter, first_out, first_loss, ctx: StepContext):
        loss = adapter.loss(adapter.forward(model, batch), batch)
        self._backward(loss, ctx)

    def train_step(self, model, batch, optimizer, adapter, ctx=None):
        import torch

        from suite import distributed

        ctx = StepContext() if ctx is None else ctx
        scaler = ctx.scaler
        net = distributed.unwrap(model)
        named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        optimizer.zero_grad(set_to_none=True)
        out, loss = self._first_pass(model, batch, adapter, ctx)
        with torch.no_grad():
            overflow = self._unscale_first_pass(named, scaler)
            eps = self.perturbation(named)
            backup = [p.detach().clone() for _, p in named]
            for (_, p), e in zip(named, eps):
                if e is not None:
                    p.add_(e)
        # Autocast keeps the low-precision copies of the weights it made in the first pass for as long
        # as its context is open, and the trainer opens one per step: without this, the pass "at
        # w + e" would run its convolutions and matmuls on copies of w.
        torch.clear_autocast_cache()
        optimizer.zero_grad(set_to_none=True)
        with frozen_bn_stats(net):
            self._second_pass(model, batch, adapter, out, loss, ctx)
        with torch.no_grad():  # restore w exactly (w + e - e is not w in floating point)
            for (_, p), b in zip(named, backup):
                p.copy_(b)
        torch.clear_autocast_cache()
        if scaler is None:
            optimizer.step()
        else:
            if overflow is not None:  # an overflow in the first pass skips the step like one in the second
                grads = [p.grad for _, p in named if p.grad is not None]
                if grads:
                    grads[0].masked_fill_(overflow, float("inf"))
            scaler.step(optimizer)
            scaler.update()
        return {"loss": loss.detach(), "acc": adapter.correct(out.detach(), batch).float().mean()}

    @staticmethod
    def _unscale_first_pass(named, scaler):
        """amp=fp16: divide the first-pass gradient by the loss scale (in place) before the
        perturbation reads it. Returns a bool tensor, True if it overflowed (then the gradient is
        zeroed, so e = 0 and the pass at w + e stays finite); None without a scaler."""
        if scaler is None:
            return None
        import torch

        grads = [p.grad for _, p in named if p.grad is not None]
        if not grads:
            return None
        scale = scaler.scale(torch.ones((), device=grads[0].device))  # a tensor: no device sync
        inv = (1.0 / scale).to(grads[0].dtype)
        for g in grads:
            g.mul_(inv)
        overflow = ~torch.isfinite(_global_norm(grads))
        keep = (~overflow).to(grads[0].dtype)
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0).mul_(keep)
        return overflow


def _global_norm(tensors) -> torch.Tensor:
    import torch

    ts = [t for t in tensors if t is not None]
    if not ts:
        return torch.tensor(0.0)
    return torch.norm(torch.stack([t.norm(p=2) for t in ts]), p=2)


@METHODS.register("sam")
class SAM(WeightAscentMethod):
    description = "sharpness-aware minimization (Foret et al. 2021): gradient at w + rho g/||g||"
    params = {"rho": Param(float, 0.05, "radius of the l2 weight perturbation", check=nonneg)}
    supports_fp16 = True

    def perturbation(self, named):
        grads = [p.grad for _, p in named]
        scale = self.p["rho"] / (_global_norm(grads) + 1e-12)
        return [None if g is None else g * scale for g in grads]


@METHODS.register("asam")
class ASAM(WeightAscentMethod):
    description = "adaptive SAM (Kwon et al. 2021): scale-invariant radius, e = rho T^2 g / ||T g||, T = |w| + eta"
    params = {
        "rho": Param(float, 0.5, "radius in the normalized weight space", check=nonneg),
        "eta": Param(float, 0.01, "offset of the normalization operator T = |w| + eta", check=nonneg),
    }
    supports_fp16 = True

    def perturbation(self, named):
        ts = [(p.detach().abs() + self.p["eta"]) if "weight" in n else None for n, p in named]
        tg = [None if p.grad is None else (p.grad if t is None else t * p.grad) for (_, p), t in zip(named, ts)]
        scale = self.p["rho"] / (_global_norm(tg) + 1e-12)
        return [None if g is None else (g if t is None else t * g) * scale for g, t in zip(tg, ts)]


@METHODS.register("esam")
class ESAM(WeightAscentMethod):
    description = ("efficient SAM (Du et al. 2022): perturb a random beta fraction of parameter tensors, "
                   "take the second gradient on the gamma fraction of sharpest examples")
    params = {
        "rho": Param(float, 0.05, "radius of the weight perturbation", check=nonneg),
        "beta": Param(float, 0.5, "probability that a parameter tensor is perturbed (SWP)", check=unit_interval),
        "gamma": Param(float, 0.5, "fraction of the batch used for the second gradient (SDS)", check=unit_interval),
    }
    supports_fp16 = True

    def cost(self) -> float:
        # first forward-backward, a forward at w + e to rank examples, a second pass on gamma of them;
        # with gamma = 1 no ranking forward is run (the step is SAM's). SWP's savings (weight
        # gradients of unperturbed tensors) come on top and are not counted here.
        if self.p["gamma"] >= 1.0:
            return 2.0
        return 1.0 + 1.0 / 3.0 + self.p["gamma"]

    def _first_pass(self, model, batch, adapter, ctx):
        import torch

        from suite import distributed

        net = distributed.unwrap(model)
        params = [p for p in net.parameters() if p.requires_grad]
        chosen = None
        if self.p["beta"] < 1.0:  # SWP: tensors left out get no gradient and no perturbation
            draws = distributed.same(torch.rand(len(params)))  # rank 0's draw on every rank
            chosen = [p for p, k in zip(params, (draws < self.p["beta"]).tolist()) if k]
        if chosen is None:  # every tensor: SAM's first pass, all-reduced by DDP (unless per replica)
            with self._ascent_context(model, ctx):
                out = adapter.forward(model, batch)
                per_example = adapter.loss(out, batch, reduction="none")
                loss = per_example.mean()
                self._backward(loss, ctx)
        else:  # some tensors: on the module itself (DDP's reducer waits for every gradient) ...
            out = adapter.forward(net, batch)
            per_example = adapter.loss(out, batch, reduction="none")
            loss = per_example.mean()
            if chosen:
                self._backward(loss, ctx, inputs=chosen)
                if ctx.ascent_sync:  # ... and all-reduced here
                    distributed.all_reduce_grads_(chosen, ctx.share)
        self._loss_before = per_example.detach()
        return out, loss

    def perturbation(self, named):
        grads = [p.grad for _, p in named]
        scale = self.p["rho"] / (self.p["beta"] * (_global_norm(grads) + 1e-12))
        return [None if g is None else g * scale for g in grads]

    def _second_pass(self, model, batch, adapter, first_out, first_loss, ctx):
        import torch

        from suite import distributed

        n = adapter.batch_size(batch)
        # at least two examples where the batch has them: a one-example batch cannot train BatchNorm
        # layers that pool to 1x1 (DeepLabV3's ASPP), as the trainer's own one-example skip says
        k = n if self.p["gamma"] >= 1.0 else max(min(2, n), int(n * self.p["gamma"]))
        if k < n:
            with torch.no_grad():  # rank by the rise of each example's loss, at w + e, without a graph
                after = adapter.loss(adapter.forward(distributed.unwrap(model), batch), batch, reduction="none")
            sharpness = after - self._loss_before
            index = torch.topk(sharpness, k).indices.sort().values
            batch = adapter.subset(batch, index)
        self._loss_before = None
        loss = adapter.loss(adapter.forward(model, batch), batch)
        self._backward(loss, ctx)
