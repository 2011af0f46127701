"""SegPGD (Gu, Zhao, Tresp and Torr, ECCV 2022): PGD on a loss that shifts weight from the pixels the
model still gets right to those it already gets wrong as the iterations go on.

At iteration t = 1..T, with P_T the valid pixels classified correctly at the current iterate and P_F
those classified wrongly (Eq. 4 and 5 of the paper):

    L_t = (1 - lambda_t) / |V| * sum_{j in P_T} CE_j  +  lambda_t / |V| * sum_{k in P_F} CE_k,
    lambda_t = (t - 1) / (2 T),

normalized by the number of pixels (the paper's H x W; here |V|, the image's valid pixels, since
ignored pixels carry no label). The first step attacks only the correct pixels; the last weights
wrong pixels by almost 1/2. The normalization does not change the attack: linf steps take the
gradient's sign and l2 steps its direction, per image. Per-image terms are summed over the batch, so
every image's gradient is its own.

The loop is written here rather than passed to `suite.attacks.engine.pgd` as a `loss_fn`: the loss
depends on the iteration index, which the engine does not pass, and a loss that counted its own
calls would silently break if the engine ever evaluated it twice per step. The projection, random
start and step rules are the engine's own functions, so SegPGD and PGD differ only in the loss
(the default step is also the suite's PGD step, eps / 4).
"""
from __future__ import annotations

from suite.attacks.base import Attack, AttackResult
from suite.params import NORMS, Param, at_least_one, fmt_value, nonneg
from suite.registry import ATTACKS


def segpgd_lambda(t: int, steps: int) -> float:
    """Eq. 5 of the paper, t = 1..T."""
    return (t - 1) / (2.0 * steps)


def segpgd_loss(adapter, output, batch, lam: float):
    """Sum over images of the SegPGD loss of each image (its valid pixels only)."""
    import torch

    per_pixel, valid = adapter.pixel_loss(output, batch[1])
    with torch.no_grad():
        right = output.argmax(dim=1) == batch[1]
        weight = torch.where(right, 1.0 - lam, lam) * valid
    per_image = (weight * per_pixel).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    return per_image.sum()


def segpgd(model, adapter, batch, *, norm: str, eps: float, step_size: float, steps: int,
           random_init: bool = True):
    """The adversarial images (detached). The model's mode is left as it is (evaluation: eval mode)."""
    import torch

    from suite.attacks.engine import ascent_direction, project, random_start

    x0 = adapter.surface(model, batch).detach()
    if eps == 0 or steps == 0:
        return x0
    mask = adapter.surface_mask(batch)

    def constrain(delta):
        if mask is not None:
            delta = delta * mask
        delta = project(delta, norm, eps)
        if adapter.bounds is not None:
            delta = (x0 + delta).clamp(*adapter.bounds) - x0
        return delta

    delta = constrain(random_start(x0, norm, eps)) if random_init else torch.zeros_like(x0)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # only the input's gradient is needed
        p.requires_grad_(False)
    try:
        for t in range(1, steps + 1):
            delta.requires_grad_(True)
            out = adapter.forward_surface(model, batch, x0 + delta)
            loss = segpgd_loss(adapter, out, batch, segpgd_lambda(t, steps))
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = constrain(delta + step_size * ascent_direction(grad, norm))
    finally:
        for p in params:
            p.requires_grad_(True)
    return (x0 + delta).detach()


@ATTACKS.register("segpgd")
class SegPGD(Attack):
    description = ("SegPGD (Gu et al. 2022): PGD on a pixel loss that moves weight from correct to wrong pixels, "
                   "lambda_t = (t-1)/(2T); segmentation")
    modalities = ("segmentation",)
    params = {
        "norm": Param(str, "linf", "threat model", choices=NORMS),
        "eps": Param(float, 2 / 255, "budget (e.g. 2/255)", check=nonneg),
        "steps": Param(int, 10, "iterations T", check=at_least_one),
        "step_size": Param(float, None, "step; default eps / 4", check=nonneg, optional=True),
        "random_start": Param(bool, True, "start from a uniform point in the ball"),
    }

    def label(self) -> str:
        return f"SegPGD-{self.p['steps']} {self.p['norm']} {fmt_value(self.p['eps'])}"

    def run(self, model, batch):
        """The adversarial images; evaluation scores them itself (no per-image verdict here)."""
        step = self.p["eps"] / 4 if self.p["step_size"] is None else self.p["step_size"]
        x_adv = segpgd(model, self.adapter, batch, norm=self.p["norm"], eps=self.p["eps"], step_size=step,
                       steps=self.p["steps"], random_init=self.p["random_start"])
        return AttackResult(adversarial=x_adv)
