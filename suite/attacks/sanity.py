"""Checks run once before attacking, on the first evaluation batch, so that a broken model/adapter pairing
stops with one line instead of producing robustness numbers that mean nothing.

Each check catches a way an attack can report false robustness (the list follows the ones
AutoAttack's `checks.py` warns about, made fatal here, plus the suite's own surface contract):
- the model is deterministic in eval mode (a dropout or noise layer left on makes every attack's
  verdict a coin toss, and resumed evaluations irreproducible);
- eps = 0 reproduces clean predictions through the adapter's attack surface (the surface really is
  what the model reads: right normalisation, nothing dropped);
- the model returns logits, not probabilities (a softmax output flattens the cross-entropy and
  margin losses the attacks climb);
- input gradients are not all zero (a model that detaches, rounds or quantises its input would
  look robust to every gradient attack).
"""
from __future__ import annotations

from typing import Any

from suite.errors import UserError

# two forward passes on the same batch may differ by float noise on some accelerators (nondeterministic
# kernels); a dropout layer changes logits by O(1)
DETERMINISM_TOL = 1e-4
PROBABILITY_TOL = 1e-4
MAX_EXAMPLES = 64


def check_model(model, adapter, batch: Any, device=None) -> None:
    """Raise UserError (one line) if the model fails any check; `batch` is on the model's device."""
    import torch

    n = adapter.batch_size(batch)
    if n == 0:
        return
    if n > MAX_EXAMPLES:
        batch = adapter.subset(batch, torch.arange(MAX_EXAMPLES, device=_device_of(batch, device)))
    check_deterministic(model, adapter, batch)
    check_zero_budget(model, adapter, batch)
    check_logits(model, adapter, batch)
    check_input_gradients(model, adapter, batch)


def _device_of(batch, device):
    import torch

    if device is not None:
        return device
    for t in (batch if isinstance(batch, (tuple, list)) else [batch]):
        if isinstance(t, torch.Tensor):
            return t.device
    return None


def _outputs(model, adapter, batch):
    import torch

    with torch.no_grad():
        out = adapter.forward(model, batch)
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def check_deterministic(model, adapter, batch) -> None:
    a, b = _outputs(model, adapter, batch), _outputs(model, adapter, batch)
    diff = (a - b).abs().max().item()
    scale = 1.0 + a.abs().max().item()
    if not diff <= DETERMINISM_TOL * scale:  # also catches NaN
        raise UserError(f"the model is not deterministic in eval mode: two forward passes on the same batch differ "
                        f"by up to {diff:.3g}; is a dropout or noise layer still active? attacks need a fixed model")


def check_zero_budget(model, adapter, batch) -> None:
    import torch

    from suite.attacks.engine import pgd

    x0 = pgd(model, adapter, batch, norm="linf", eps=0.0, step_size=0.0, steps=1, random_init=False)
    with torch.no_grad():
        via_surface = adapter.correct(adapter.forward_surface(model, batch, x0), batch)
    clean = adapter.correct(_outputs(model, adapter, batch), batch)
    if not torch.equal(via_surface.cpu(), clean.cpu()):
        k = int((via_surface != clean).sum())
        raise UserError(f"an attack with eps=0 changes {k} of {clean.numel()} clean predictions: the adapter's "
                        f"attack surface does not reproduce the model's input (check the input normalisation "
                        f"and forward_surface)")


def check_logits(model, adapter, batch) -> None:
    out = _outputs(model, adapter, batch)
    if out.dim() < 2 or out.shape[1] < 2:
        return
    in_unit = bool(((out >= -PROBABILITY_TOL) & (out <= 1 + PROBABILITY_TOL)).all())
    sums_to_one = bool(((out.sum(dim=1) - 1).abs() <= PROBABILITY_TOL).all())
    if in_unit and sums_to_one:
        raise UserError("the model returns probabilities (rows sum to 1); attacks need logits "
                        "(remove the final softmax)")


def check_input_gradients(model, adapter, batch) -> None:
    import torch

    x = adapter.surface(model, batch).detach().clone().requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            out = adapter.forward_surface(model, batch, x)
            loss = adapter.loss(out, batch, reduction="sum")
            if not loss.requires_grad:
                grad = None
            else:
                (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(True)
    if grad is None or not bool((grad != 0).any()):
        raise UserError("the loss has zero gradient with respect to the input for every example (does the model "
                        "detach, round or quantise its input?); gradient attacks would report false robustness")
    if not bool(torch.isfinite(grad).all()):
        raise UserError("the loss has non-finite (NaN or inf) gradients with respect to the input; "
                        "gradient attacks cannot run on this model")
