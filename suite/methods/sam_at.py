"""SAM around adversarial training: one weight ascent step on the PGD-AT loss.

    x' = PGD(w; x)                          the inner attack at w (parameter gradients off)
    g  = grad_w L(w; x'),  e = rho g / ||g||   SAM's ascent on the adversarial loss
    step with grad_w L(w + e; x')           the same x' (documented choice), or, with reattack=true,
                                            x'' = PGD(w + e; x) attacked again at the perturbed weights

The two perturbations never leak into each other's gradients: the attack runs with parameter
gradients off (the engine's rule), the gradient at w is discarded before the pass at w + e, and w is
restored by copying it back (w + e - e is not w in floating point) before the base optimizer steps.

This module also holds the skeleton shared with AWP (`suite.methods.awp`), `AdversarialWeightAscent`:
SAM's step (`suite.methods.sam`) with both passes on the adversarial batch. BatchNorm running
statistics are updated exactly once per step, by the pass at the current weights w on the adversarial
batch (AT's rule); the attacks and the pass at the perturbed weights use batch statistics but leave
them alone.

Cost: steps (attack) + 2 (the passes at w and at w + e); with reattack, 2 * steps + 2.
"""
from __future__ import annotations

from suite.methods.adversarial import PGD_PARAMS, PGDThreatModel
from suite.methods.sam import SAM, WeightAscentMethod
from suite.params import Param, fmt_value, nonneg
from suite.registry import METHODS


class AdversarialWeightAscent(PGDThreatModel, WeightAscentMethod):
    """SAM's two-pass step on a PGD adversarial batch; subclasses define the weight perturbation."""

    reattack: bool = False  # re-run PGD at the perturbed weights for the second pass

    def cost(self) -> float:
        return (2 if self.reattack else 1) * self.p["steps"] + 2.0

    def attack(self, model, batch, adapter):
        from suite.modalities.base import frozen_bn_stats

        with frozen_bn_stats(model):
            return self.pgd_attack(model, batch, adapter, random_init=self.p["random_start"])

    def _first_pass(self, model, batch, adapter, ctx):
        # at w on x': the pass that updates BatchNorm running statistics
        self._x_adv = self.attack(model, batch, adapter)
        out = adapter.forward_surface(model, batch, self._x_adv)
        loss = adapter.loss(out, batch)
        loss.backward()
        return out, loss

    def _second_pass(self, model, batch, adapter, first_out, first_loss, ctx):
        # at the perturbed weights, inside the base class's frozen_bn_stats
        x_adv = self.attack(model, batch, adapter) if self.reattack else self._x_adv
        self._x_adv = None
        loss = adapter.loss(adapter.forward_surface(model, batch, x_adv), batch)
        loss.backward()


@METHODS.register("sam_at")
class SAMAdversarialTraining(AdversarialWeightAscent):
    description = "SAM around PGD-AT: gradient at w + rho g/||g|| of the adversarial loss, on the same x'"
    params = {
        "rho": Param(float, 0.05, "radius of the l2 weight perturbation", check=nonneg),
        **PGD_PARAMS,
        "reattack": Param(bool, False, "re-run PGD at w + e for the second pass (default: reuse x')"),
    }
    perturbation = SAM.perturbation  # e = rho g / ||g||, over all parameters

    def __init__(self, **params):
        super().__init__(**params)
        self.reattack = self.p["reattack"]

    def label(self) -> str:
        again = " reattack" if self.reattack else ""
        return f"SAM-AT rho={fmt_value(self.p['rho'])} {self.threat_label()}{again}"
