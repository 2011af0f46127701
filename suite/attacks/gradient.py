"""Gradient attacks on any adapter's attack surface: FGSM and PGD (linf, l2).

They work for images (pixels), feature vectors and text (input embeddings), because all they touch
is the adapter's surface. The model is attacked in eval mode.
"""
from __future__ import annotations

import torch

from suite.attacks.base import Attack, AttackResult
from suite.attacks.engine import pgd
from suite.params import NORMS, Param, at_least_one, fmt_value, nonneg
from suite.registry import ATTACKS


def _success(model, adapter, batch, x_adv):
    with torch.no_grad():
        out = adapter.forward_surface(model, batch, x_adv)
    return ~adapter.correct(out, batch)


@ATTACKS.register("pgd")
class PGD(Attack):
    name = "pgd"
    description = "projected gradient descent (Madry et al. 2018) on the cross-entropy, linf or l2, random start"
    modalities = ("image", "features", "text")
    params = {
        "norm": Param(str, "linf", "threat model", choices=NORMS),
        "eps": Param(float, 8 / 255, "budget (e.g. 2/255)", check=nonneg),
        "steps": Param(int, 10, "iterations", check=at_least_one),
        "step_size": Param(float, None, "step; default eps / 4", check=nonneg, optional=True),
        "random_start": Param(bool, True, "start from a uniform point in the ball"),
    }

    def label(self) -> str:
        return f"PGD-{self.p['steps']} {self.p['norm']} {fmt_value(self.p['eps'])}"

    def run(self, model, batch):
        step = self.p["eps"] / 4 if self.p["step_size"] is None else self.p["step_size"]
        x_adv = pgd(model, self.adapter, batch, norm=self.p["norm"], eps=self.p["eps"], step_size=step,
                    steps=self.p["steps"], random_init=self.p["random_start"])
        return AttackResult(_success(model, self.adapter, batch, x_adv), x_adv)


@ATTACKS.register("fgsm")
class FGSM(Attack):
    name = "fgsm"
    description = "fast gradient sign method (Goodfellow et al. 2015): one step of size eps (l2: normalized gradient)"
    modalities = ("image", "features", "text")
    params = {
        "norm": Param(str, "linf", "threat model", choices=NORMS),
        "eps": Param(float, 8 / 255, "budget", check=nonneg),
    }

    def label(self) -> str:
        return f"FGSM {self.p['norm']} {fmt_value(self.p['eps'])}"

    def run(self, model, batch):
        x_adv = pgd(model, self.adapter, batch, norm=self.p["norm"], eps=self.p["eps"], step_size=self.p["eps"],
                    steps=1, random_init=False)
        return AttackResult(_success(model, self.adapter, batch, x_adv), x_adv)
