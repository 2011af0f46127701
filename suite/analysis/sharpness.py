"""The duality measured: how sharp is the training loss in weight space?

Three analyses of a trained model on a fixed, seeded set of training examples:

- `sharpness`: worst-case m-sharpness (Foret et al. 2021; Andriushchenko & Flammarion 2022),
      S = mean over batches B of size m of  max_{||e||_2 <= rho} L_B(w + e) - L_B(w),
  the quantity SAM minimises. The max is taken *per batch* of m examples and averaged over the
  n / m batches (a last, smaller batch weighs by its size), so m (`batch_size`) is part of the
  definition: m = n gives the sharpness of the whole sample's loss, small m the m-sharpness that
  correlates with generalization in their work.
- `asharpness`: adaptive worst-case sharpness (Kwon et al. 2021; Andriushchenko et al., ICML 2023,
  "A modern look at the relationship between sharpness and generalization"): the same max over
  ||T_w^{-1} e||_2 <= rho with T_w = |w| + eta elementwise on every parameter (eta = 0, their choice,
  by default). It is invariant to rescalings that leave the network's function unchanged (e.g. a
  ReLU layer times a, the next divided by a), which plain sharpness is not.
- `hessian`: the top eigenvalue of the Hessian of the loss averaged over the n examples, by power
  iteration with Hessian-vector products (double backward). Power iteration finds the eigenvalue
  of largest magnitude; for a trained network that is the top (positive) one, as in PyHessian.

How the max is estimated: projected normalized gradient ascent on the perturbation, in the
coordinates u = T^{-1} e (T = identity for `sharpness`): u <- P_rho(u + step * T g / ||T g||) with
g the gradient of L_B at w + T u, from u = 0 (the first step is SAM's ascent direction) or, with
random_init, from a seeded random point on the sphere of radius rho (needed where the gradient
vanishes, e.g. exactly at a minimum). The value is the largest loss seen over the iterates (and
w itself), so every estimate is a lower bound of the true max: more steps can only raise it.

The model is evaluated in eval mode: BatchNorm uses its running statistics and dropout is off, so
the loss is the one the model is evaluated with, a sum of independent per-example terms that does
not depend on how examples are grouped into batches and moves no running statistic. Weights,
buffers, modes (per module), requires_grad flags and `.grad` are left exactly as found (weights are
restored by copying them back). Every trainable parameter (requires_grad) is perturbed; frozen ones
are not. Random draws use a private generator seeded by `seed`, never the global RNG.

Cost, in passes over one batch (a forward-only pass counts 1/3):
- sharpness / asharpness: per batch, steps forward-backward passes plus a forward at the last
  iterate (1/3), plus a forward at w (1/3) when random_init starts elsewhere: n/m * (steps + 1/3)
  by default. Returned as "passes".
- hessian: per iteration one Hessian-vector product per batch (a forward, a backward that keeps its
  graph, and a backward through that backward); returned as "hvps" (iterations x batches). On the
  digits CNN on a CPU one such product took 5-6 times a forward-backward pass on the same batch.

The Hessian is that of the loss averaged over the chosen examples: the batch losses weighted by
batch size (exactly the per-example mean for classification; for segmentation, whose batch loss
averages over valid pixels, batches with more unlabelled pixels weigh slightly more per pixel).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from suite.analysis.base import Analysis
from suite.errors import UserError
from suite.params import Param, at_least_one, fmt_value, nonneg, positive
from suite.registry import ANALYSES


def chosen_examples(dataset, n: int, seed: int) -> np.ndarray:
    """The analysed examples, in batch order: a class-stratified sample of the training split
    (seeded random where examples have no single label), the same for every run of a task so that
    rows are compared on the same data; the batch order is a seeded shuffle (it defines m-sharpness)."""
    from suite import subsets

    if len(dataset) == 0:
        raise UserError("the analysis needs training examples, and the training split is empty")
    strategy = "stratified" if subsets.dataset_labels(dataset) is not None else "random"
    idx = subsets.select(dataset, n, strategy, seed=0)
    return idx[np.random.RandomState(seed).permutation(len(idx))]


def batches_of(dataset, indices: np.ndarray, batch_size: int, collate, adapter, device) -> list:
    """The chosen examples as device batches (kept: every analysis visits them several times)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    # a private generator: even an unshuffled DataLoader draws a seed from the global RNG otherwise
    loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False,
                        collate_fn=collate, generator=torch.Generator().manual_seed(0))
    return [adapter.to_device(b, device) for b in loader]


class preserved_model:
    """Eval mode for the analysis; afterwards every module's mode, every requires_grad flag, and
    (by copy) every trainable parameter's value are exactly as before.

    Inside, `params` are the trainable parameters (the ones analysed) and `weights` copies of their
    values on entry."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.weights = [p.detach().clone() for p in self.params]
        self.model.eval()
        return self

    def __exit__(self, *exc):
        import torch

        with torch.no_grad():
            for p, w in zip(self.params, self.weights):
                p.copy_(w)
        for p, flag in self.flags:
            p.requires_grad_(flag)
        for m, mode in self.modes:
            m.training = mode
        return False


def _norm(tensors) -> float:
    """Global l2 norm of a list of tensors, accumulated in float64, as a Python float (one sync)."""
    import torch

    return float(torch.stack([t.detach().double().pow(2).sum() for t in tensors]).sum().sqrt())


class _WorstCaseSharpness(Analysis):
    def transform(self, weights):
        """T_w per parameter tensor (None = identity)."""
        return [None] * len(weights)

    def step_size(self) -> float:
        s = self.p["step_size"]
        return 2.0 * self.p["rho"] / self.p["steps"] if s is None else s

    def run(self, model, dataset, *, collate, device, seed: int) -> dict[str, Any]:
        import torch

        indices = chosen_examples(dataset, self.p["examples"], seed)
        batches = batches_of(dataset, indices, self.p["batch_size"], collate, self.adapter, device)
        gen = torch.Generator().manual_seed(int(seed))
        total, base_sum, worst_sum, passes = 0, 0.0, 0.0, 0.0
        with torch.enable_grad(), preserved_model(model) as kept:
            params, weights = kept.params, kept.weights
            scale = self.transform(weights)
            for i, batch in enumerate(batches):
                base, worst, cost = self._batch_max(model, batch, params, weights, scale, gen)
                k = self.adapter.batch_size(batch)
                total += k
                base_sum += base * k
                worst_sum += worst * k
                passes += cost
                self.advance(i + 1, len(batches))
        return {"value": (worst_sum - base_sum) / total, "base_loss": base_sum / total,
                "worst_loss": worst_sum / total, "examples": total, "batches": len(batches), "passes": passes}

    def _loss(self, model, batch):
        return self.adapter.loss(self.adapter.forward(model, batch), batch)

    def example_passes(self, n_train: int) -> float:
        # per example: `steps` forward-backward passes, a forward at the last iterate, and one at w
        # when the ascent starts from a random point (see "Cost" above)
        per = self.p["steps"] + 1 / 3 + (1 / 3 if self.p["random_init"] else 0)
        return min(self.p["examples"], n_train) * per

    def _batch_max(self, model, batch, params, weights, scale, gen):
        """(L_B(w), max over the iterates and w of L_B(w + T u), passes) for one batch."""
        import torch

        rho, steps, alpha = self.p["rho"], self.p["steps"], self.step_size()

        def set_weights(u):
            with torch.no_grad():
                for p, w, t, ui in zip(params, weights, scale, u):
                    p.copy_(w if ui is None else w + (ui if t is None else t * ui))

        def project(u):
            n = _norm(u)
            return u if n <= rho else [ui * (rho / n) for ui in u]

        base, passes = None, 0.0
        if self.p["random_init"]:
            u = [torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device) for w in weights]
            u = [ui * (rho / (_norm(u) or 1.0)) for ui in u]
        else:
            u = [None] * len(weights)  # u = 0: the first pass is at w itself
        worst = -math.inf
        for t in range(steps + 1):
            set_weights(u)
            if t == steps:  # the last iterate needs its loss only
                with torch.no_grad():
                    loss = float(self._loss(model, batch))
                passes += 1 / 3
            else:
                loss_t = self._loss(model, batch)
                grads = torch.autograd.grad(loss_t, params, allow_unused=True)
                loss = float(loss_t.detach())
                passes += 1.0
            if t == 0 and not self.p["random_init"]:
                base = loss
            worst = max(worst, loss)
            if t == steps:
                break
            tg = [torch.zeros_like(w) if g is None else (g if s is None else s * g)
                  for g, s, w in zip(grads, scale, weights)]
            gnorm = _norm(tg)
            if gnorm == 0.0:  # a stationary point of L_B(w + T u): no ascent direction
                break
            u = project([(0 if ui is None else ui) + alpha / gnorm * g for ui, g in zip(u, tg)])
        if base is None:
            set_weights([None] * len(weights))
            with torch.no_grad():
                base = float(self._loss(model, batch))
            passes += 1 / 3
        return base, max(worst, base), passes  # e = 0 is in the ball: the max is >= L_B(w)


_COMMON = {
    "steps": Param(int, 10, "projected gradient ascent steps per batch", check=at_least_one),
    "step_size": Param(float, None, "ascent step (in the normalized coordinates); default 2 * rho / steps",
                       check=positive, optional=True),
    "examples": Param(int, 1024, "training examples analysed (a seeded random sample)", check=at_least_one),
    "batch_size": Param(int, 128, "m of m-sharpness: the max is taken per batch of m and averaged",
                        check=at_least_one),
    "random_init": Param(bool, False, "start each batch's ascent from a seeded random point on the sphere "
                                      "(default: from w, along the gradient)"),
}


@ANALYSES.register("sharpness")
class WorstCaseSharpness(_WorstCaseSharpness):
    description = "worst-case m-sharpness: mean over batches of max_{||e||<=rho} L(w+e) - L(w) (eval mode)"
    params = {"rho": Param(float, 0.05, "radius of the l2 ball in weight space", check=nonneg), **_COMMON}

    def label(self) -> str:
        return f"sharpness rho={fmt_value(self.p['rho'])}"


@ANALYSES.register("asharpness")
class AdaptiveSharpness(_WorstCaseSharpness):
    description = "adaptive worst-case m-sharpness: max over ||e / (|w| + eta)||<=rho (scale-invariant)"
    params = {
        "rho": Param(float, 0.5, "radius of the l2 ball in the normalized weight space", check=nonneg),
        "eta": Param(float, 0.0, "offset of the normalization T = |w| + eta", check=nonneg),
        **_COMMON,
    }

    def transform(self, weights):
        return [w.abs() + self.p["eta"] for w in weights]

    def label(self) -> str:
        return f"adaptive sharpness rho={fmt_value(self.p['rho'])}"


# A Hessian-vector product (forward, backward keeping its graph, backward through it) in forward-backward
# passes: 5-6 measured on the digits CNN on a CPU (see "Cost" above).
HVP_PASSES = 6


@ANALYSES.register("hessian")
class HessianTopEigenvalue(Analysis):
    description = "top eigenvalue of the training-loss Hessian (power iteration with Hessian-vector products)"
    params = {
        "iters": Param(int, 20, "maximum power iterations", check=at_least_one),
        "tol": Param(float, 1e-4, "stop when the eigenvalue estimate changes by less than tol, relatively",
                     check=nonneg),
        "examples": Param(int, 1024, "training examples analysed (a seeded random sample)", check=at_least_one),
        "batch_size": Param(int, 128, "examples per Hessian-vector product (memory: for classification "
                                      "the result does not depend on it)", check=at_least_one),
    }

    def label(self) -> str:
        return "Hessian top eigenvalue"

    def run(self, model, dataset, *, collate, device, seed: int) -> dict[str, Any]:
        import torch

        indices = chosen_examples(dataset, self.p["examples"], seed)
        batches = batches_of(dataset, indices, self.p["batch_size"], collate, self.adapter, device)
        total = sum(self.adapter.batch_size(b) for b in batches)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.enable_grad(), preserved_model(model) as kept:
            params = kept.params
            v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
            n0 = _norm(v)
            v = [vi / n0 for vi in v]
            value, prev, done, converged = 0.0, None, 0, False
            for _ in range(self.p["iters"]):
                hv = self._hvp(model, batches, params, v, total)
                done += 1
                value = sum(float((a.double() * b.double()).sum()) for a, b in zip(hv, v))  # Rayleigh quotient
                norm = _norm(hv)
                if norm == 0.0:
                    converged = True
                    break
                v = [h / norm for h in hv]
                if prev is not None and abs(value - prev) <= self.p["tol"] * abs(value):
                    converged = True
                    break
                prev = value
                self.advance(done, self.p["iters"])
        return {"value": value, "iters": done, "converged": float(converged), "examples": total,
                "hvps": done * len(batches)}

    def example_passes(self, n_train: int) -> float:
        # at most `iters` Hessian-vector products over the examples, each about HVP_PASSES
        # forward-backward passes (the tolerance may stop it earlier)
        return min(self.p["examples"], n_train) * self.p["iters"] * HVP_PASSES

    def _hvp(self, model, batches, params, v, total):
        """H v for the loss averaged over all chosen examples, accumulated batch by batch.

        Attention runs in its plain-math form here: the fused scaled-dot-product kernels have no
        second derivative (transformers, e.g. the text task's models, would fail)."""
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        hv = [torch.zeros_like(p) for p in params]
        for batch in batches:
            weight = self.adapter.batch_size(batch) / total
            with sdpa_kernel(SDPBackend.MATH):
                loss = self.adapter.loss(self.adapter.forward(model, batch), batch) * weight
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            dot = sum((g * vi).sum() for g, vi in zip(grads, v) if g is not None)
            if not torch.is_tensor(dot) or not dot.requires_grad:
                continue  # the loss is linear in every parameter: this batch adds nothing
            for acc, h in zip(hv, torch.autograd.grad(dot, params, allow_unused=True)):
                if h is not None:
                    acc.add_(h)
        return hv
