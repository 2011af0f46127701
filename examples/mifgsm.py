"""A user attack file: MI-FGSM (Dong et al., CVPR 2018), iterative FGSM with a momentum of
L1-normalised gradients, linf or l2 (the README's "Adding an attack" shows the code below this
docstring, verbatim).

It perturbs the adapter's attack surface only, so it runs on every modality that has one. Load it
with `--include` and name it in `--attacks` (or in a task's `evaluation`):

    python -m suite run --include examples/mifgsm.py --task digits --method st \\
        --attacks mifgsm:norm=linf,eps=16/255 pgd:norm=linf,eps=16/255,steps=10

tests/test_contracts.py includes this file and runs the attack through the attack contract on every
modality it declares (it lowers accuracy, stays in its budget and in the input box).
"""
# examples/mifgsm.py
from suite.attacks.base import Attack, AttackResult
from suite.params import NORMS, Param, at_least_one, fmt_value, nonneg
from suite.registry import ATTACKS


@ATTACKS.register("mifgsm")
class MIFGSM(Attack):
    description = "momentum iterative FGSM (Dong et al. 2018), linf or l2"
    modalities = ("image", "features", "text", "segmentation")  # any adapter with an attack surface
    threat = "norm-bounded"  # its worst case is taken together with PGD, FGSM, CW and AutoAttack
    params = {
        "norm": Param(str, "linf", "threat model", choices=NORMS),
        "eps": Param(float, 8 / 255, "budget (e.g. 8/255)", check=nonneg),
        "steps": Param(int, 10, "iterations, each of step eps / steps", check=at_least_one),
        "decay": Param(float, 1.0, "momentum decay mu", check=nonneg),
    }

    def label(self) -> str:  # the leaderboard's column
        return f"MI-FGSM-{self.p['steps']} {self.p['norm']} {fmt_value(self.p['eps'])}"

    def run(self, model, batch):
        import torch

        from suite.attacks.engine import ascent_direction, project

        a, p = self.adapter, self.p
        x0 = a.surface(model, batch)                 # detached: pixels, features or word embeddings
        mask = a.surface_mask(batch)                 # None, or 0 where the input must not change
        x, momentum = x0.clone(), torch.zeros_like(x0)
        for _ in range(p["steps"]):
            x.requires_grad_(True)
            loss = a.loss(a.forward_surface(model, batch, x), batch, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)   # a gradient for the input only, none for the weights
            if mask is not None:
                grad = grad * mask
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *[1] * (x0.dim() - 1))
            momentum = p["decay"] * momentum + grad / l1
            with torch.no_grad():
                step = p["eps"] / p["steps"] * ascent_direction(momentum, p["norm"])
                x = x0 + project(x + step - x0, p["norm"], p["eps"])
                if a.bounds is not None:             # images: stay in [0, 1]
                    x = x.clamp(*a.bounds)
        # Evaluation scores the adversarial inputs itself (accuracy, mIoU); an attack that edits
        # something else returns AttackResult(success=...) instead: per example, "now misclassified".
        return AttackResult(adversarial=x.detach())
