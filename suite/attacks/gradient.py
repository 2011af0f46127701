"""Gradient attacks on any adapter's attack surface: FGSM and PGD (linf, l2).

They work for images (pixels), feature vectors and text (input embeddings), because all they touch
is the adapter's surface. The model is attacked in eval mode.

PGD restarts (`restarts=k`): each example keeps the first adversarial input that breaks it; the
examples still unbroken are attacked again from a new random start, up to k times in all. An
example counts as broken when the model's per-example score on it (classification: correct) falls;
for modalities without a per-example verdict (segmentation) every restart runs on every example and
the one with the highest loss is kept.
"""
from __future__ import annotations

from suite.attacks.base import Attack, AttackResult
from suite.params import NORMS, Param, at_least_one, fmt_value, nonneg
from suite.registry import ATTACKS

MODALITIES = ("image", "features", "text", "segmentation")


@ATTACKS.register("pgd")
class PGD(Attack):
    description = ("projected gradient descent (Madry et al. 2018) on the loss, linf or l2, random start "
                   "(l2: radius uniform in [0, eps]), optional restarts")
    modalities = MODALITIES
    params = {
        "norm": Param(str, "linf", "threat model", choices=NORMS),
        "eps": Param(float, 8 / 255, "budget (e.g. 2/255)", check=nonneg),
        "steps": Param(int, 10, "iterations", check=at_least_one),
        "step_size": Param(float, None, "step; default eps / 4", check=nonneg, optional=True),
        "random_start": Param(bool, True, "start from a random point in the ball"),
        "restarts": Param(int, 1, "random restarts; per example the first that succeeds is kept", check=at_least_one),
    }

    def label(self) -> str:
        r = f", {self.p['restarts']} restarts" if self.p["restarts"] > 1 else ""
        return f"PGD-{self.p['steps']} {self.p['norm']} {fmt_value(self.p['eps'])}{r}"

    def run(self, model, batch):
        import torch

        from suite.attacks.engine import pgd

        a = self.adapter
        step = self.p["eps"] / 4 if self.p["step_size"] is None else self.p["step_size"]
        kw = dict(norm=self.p["norm"], eps=self.p["eps"], step_size=step, steps=self.p["steps"],
                  random_init=self.p["random_start"])
        x_adv = pgd(model, a, batch, **kw)
        restarts = self.p["restarts"] if self.p["random_start"] else 1
        if restarts == 1:
            return AttackResult(adversarial=x_adv)
        if a.attack_only_correct:  # classification: re-attack only the examples not yet broken
            with torch.no_grad():
                robust = a.correct(a.forward_surface(model, batch, x_adv), batch)
            for _ in range(restarts - 1):
                idx = torch.nonzero(robust).flatten()
                if not len(idx):
                    break
                sub = a.subset(batch, idx)
                x_new = pgd(model, a, sub, **kw)
                with torch.no_grad():
                    broken = ~a.correct(a.forward_surface(model, sub, x_new), sub)
                x_adv[idx[broken]] = x_new[broken]
                robust[idx[broken]] = False
            return AttackResult(success=~robust, adversarial=x_adv)
        with torch.no_grad():  # no verdict per example: keep the restart with the highest loss
            best = a.loss(a.forward_surface(model, batch, x_adv), batch, reduction="none")
        for _ in range(restarts - 1):
            x_new = pgd(model, a, batch, **kw)
            with torch.no_grad():
                loss = a.loss(a.forward_surface(model, batch, x_new), batch, reduction="none")
            better = loss > best
            x_adv[better] = x_new[better]
            best = torch.maximum(best, loss)
        return AttackResult(adversarial=x_adv)


@ATTACKS.register("fgsm")
class FGSM(Attack):
    description = "fast gradient sign method (Goodfellow et al. 2015): one step of size eps (l2: normalized gradient)"
    modalities = MODALITIES
    params = {
        "norm": Param(str, "linf", "threat model", choices=NORMS),
        "eps": Param(float, 8 / 255, "budget", check=nonneg),
    }

    def label(self) -> str:
        return f"FGSM {self.p['norm']} {fmt_value(self.p['eps'])}"

    def run(self, model, batch):
        from suite.attacks.engine import pgd

        x_adv = pgd(model, self.adapter, batch, norm=self.p["norm"], eps=self.p["eps"], step_size=self.p["eps"],
                    steps=1, random_init=False)
        return AttackResult(adversarial=x_adv)
