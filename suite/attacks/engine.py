"""Gradient attacks on an adapter's attack surface: one PGD engine for training and evaluation.

Written here rather than taken from torchattacks because it must perturb whatever surface the
modality adapter exposes (pixels, feature vectors, text input embeddings, with a mask and with or
without a box), and because torchattacks pins an old `requests`. FGSM is PGD with one step of size
eps and no random start; FGSM with random start (Wong et al. 2020) is one step from a random point.
"""
from __future__ import annotations

import torch

from suite.modalities.base import Adapter


def _per_example_norm(v: torch.Tensor) -> torch.Tensor:
    """l2 norm of each example, shaped to broadcast against v."""
    n = v.flatten(1).norm(p=2, dim=1)
    return n.view(-1, *([1] * (v.dim() - 1)))


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        n = _per_example_norm(delta)
        return delta * torch.clamp(eps / (n + 1e-12), max=1.0)
    raise ValueError(f"unknown norm {norm!r}")


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / (_per_example_norm(grad) + 1e-12)
    raise ValueError(f"unknown norm {norm!r}")


def random_start(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """linf: uniform in the ball. l2: a uniformly random direction with a radius drawn uniformly in
    [0, eps], as torchattacks' PGDL2 and Madry et al.'s robustness library do.

    Not uniform in the l2 ball: in d dimensions almost all of that ball's volume lies near its
    boundary (radius ~ eps * U^(1/d)), and from there 10 steps of eps/4 explore less; on the digits
    model that start left 3 points more robust accuracy at l2 0.5 than torchattacks' PGD-L2.
    """
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return g / (_per_example_norm(g) + 1e-12) * eps * r


def _constrain(x0, delta, norm, eps, mask, bounds):
    if mask is not None:
        delta = delta * mask
    delta = project(delta, norm, eps)
    if bounds is not None:
        delta = (x0 + delta).clamp(*bounds) - x0
    return delta


def pgd(
    model: torch.nn.Module,
    adapter: Adapter,
    batch,
    *,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    random_init: bool = True,
    loss_fn=None,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximise a loss over the surface within the `norm` ball of radius `eps`.

    The loss is the adapter's (summed over examples) unless `loss_fn(output, batch) -> scalar` is
    given (e.g. CW's margin loss, TRADES' KL); it must be a sum of per-example terms, so that each
    example's gradient is its own. `init` is a given starting perturbation (TRADES starts at
    x + 0.001 N(0, I)), constrained like a random one. Returns the adversarial surface tensor (detached). With eps == 0
    it returns the clean surface exactly. The model's mode is left as it is: AT attacks in train mode
    (callers freeze BatchNorm statistics), evaluation attacks in eval mode.
    """
    from suite.distributed import unwrap

    # Under DistributedDataParallel the attack runs on the module itself: it needs no parameter
    # gradients, and a forward through DDP's reducer would wait for gradients that never come.
    model = unwrap(model)
    x0 = adapter.surface(model, batch).detach()
    if eps == 0 or steps == 0:
        return x0
    mask = adapter.surface_mask(batch)
    bounds = adapter.bounds
    if init is not None:
        delta = _constrain(x0, init, norm, eps, mask, bounds)
    elif random_init:
        delta = _constrain(x0, random_start(x0, norm, eps), norm, eps, mask, bounds)
    else:
        delta = torch.zeros_like(x0)
    # Parameter gradients are not needed here; only the surface's. autograd.grad(loss, delta) would
    # skip the weight-gradient kernels anyway, but with the parameters frozen the forward also keeps
    # fewer tensors for backward, and no .grad can be touched (AT's gradient is taken after).
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            out = adapter.forward_surface(model, batch, x0 + delta)
            loss = adapter.loss(out, batch, reduction="sum") if loss_fn is None else loss_fn(out, batch)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = delta + step_size * ascent_direction(grad, norm)
                delta = _constrain(x0, delta, norm, eps, mask, bounds)
    finally:
        for p in params:
            p.requires_grad_(True)
    return (x0 + delta).detach()
