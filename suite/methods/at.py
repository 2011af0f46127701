"""Adversarial training through the adapter's attack surface (pixels for images, input embeddings
for text): the inner attack runs in train mode with BatchNorm running statistics frozen, and the
single training pass on the adversarial batch is the one that updates them.

- `at` (Madry et al. 2018): PGD with random start, linf or l2.
- `fast_at` (Wong et al. 2020): one FGSM step of size alpha from a uniform random start.
"""
from __future__ import annotations

from suite.methods.adversarial import PGD_PARAMS, PGDThreatModel
from suite.methods.base import Method
from suite.modalities.base import frozen_bn_stats
from suite.params import Param, fmt_value, nonneg
from suite.registry import METHODS


class InputAdversarialTraining(Method):
    """One training pass on an adversarial batch that an inner attack on the inputs found;
    subclasses define the attack."""

    def inner_attack(self, model, batch, adapter):
        raise NotImplementedError

    def train_step(self, model, batch, optimizer, adapter, ctx=None):
        with frozen_bn_stats(model):
            x_adv = self.inner_attack(model, batch, adapter)
        optimizer.zero_grad(set_to_none=True)
        out = adapter.forward_surface(model, batch, x_adv)
        loss = adapter.loss(out, batch)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "acc": adapter.correct(out.detach(), batch).float().mean().item()}


@METHODS.register("at")
class PGDAdversarialTraining(PGDThreatModel, InputAdversarialTraining):
    description = "PGD adversarial training (Madry et al. 2018), linf or l2, random start"
    params = dict(PGD_PARAMS)

    def cost(self) -> float:
        return self.p["steps"] + 1.0

    def inner_attack(self, model, batch, adapter):
        return self.pgd_attack(model, batch, adapter, random_init=self.p["random_start"])

    def label(self) -> str:
        return f"AT {self.threat_label()}"


@METHODS.register("fast_at")
class FastAdversarialTraining(InputAdversarialTraining):
    description = "fast adversarial training (Wong et al. 2020): FGSM from a random start, step alpha = 1.25 eps"
    params = {
        "norm": PGD_PARAMS["norm"],
        "eps": PGD_PARAMS["eps"],
        "alpha": Param(float, None, "FGSM step; default 1.25 * eps", check=nonneg, optional=True),
    }

    def cost(self) -> float:
        return 2.0

    def inner_attack(self, model, batch, adapter):
        from suite.attacks.engine import pgd

        alpha = 1.25 * self.p["eps"] if self.p["alpha"] is None else self.p["alpha"]
        return pgd(model, adapter, batch, norm=self.p["norm"], eps=self.p["eps"], step_size=alpha, steps=1,
                   random_init=True)

    def label(self) -> str:
        return f"FastAT {self.p['norm']} {fmt_value(self.p['eps'])}"
