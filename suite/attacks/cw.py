"""CW-PGD: the Carlini-Wagner margin loss maximised by PGD (linf or l2), as robustness papers use it.

Carlini & Wagner (2017) minimise f(x') = max(z_y - max_{j != y} z_j, -kappa) (their f6, untargeted)
plus a distance term. Robust-training papers (TRADES, MART, and Zhang et al.'s "CW" column) instead
keep the budget as a hard constraint and run PGD on the margin; that is this attack: PGD maximises
-f = min(max_{j != y} z_j - z_y, kappa) per example inside the norm ball.

kappa = 0 (the default): once an example is misclassified its loss is flat (gradient 0), so PGD
leaves it where it is and the final iterate stays adversarial; no "best iterate" bookkeeping is
needed. `kappa=none` drops the clamp (the raw margin keeps growing).

Steps: 50 by default (the usual CW-inf/CW-l2 settings in the AT literature use 20-100); the step
size defaults to 2.5 * eps / steps (Madry et al.'s rule), which for 10 steps is the suite's PGD
default eps / 4. The gradient engine is the suite's own (`suite.attacks.engine.pgd`), through the
adapter, with the same random start and box as `pgd`.
"""
from __future__ import annotations

from suite.attacks.base import Attack, AttackResult
from suite.params import NORMS, Param, at_least_one, fmt_value, nonneg
from suite.registry import ATTACKS


def cw_margin(logits, y):
    """Per example: max_{j != y} z_j - z_y (positive iff the example is misclassified, ties aside)."""
    import torch

    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    is_y = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    other = logits.masked_fill(is_y, float("-inf")).amax(dim=1)
    return other - z_y


def cw_loss(logits, y, kappa: float | None = 0.0):
    """The quantity CW-PGD maximises, per example: min(margin, kappa) (no clamp when kappa is None)."""
    m = cw_margin(logits, y)
    return m if kappa is None else m.clamp(max=kappa)


@ATTACKS.register("cw")
class CW(Attack):
    description = ("Carlini-Wagner margin loss min(max_{j!=y} z_j - z_y, kappa) maximised by PGD, linf or l2, "
                   "50 steps, random start")
    modalities = ("image", "features")
    params = {
        "norm": Param(str, "linf", "threat model", choices=NORMS),
        "eps": Param(float, 8 / 255, "budget (e.g. 8/255)", check=nonneg),
        "steps": Param(int, 50, "PGD iterations", check=at_least_one),
        "step_size": Param(float, None, "step; default 2.5 * eps / steps", check=nonneg, optional=True),
        "kappa": Param(float, 0.0, "confidence: the margin is clamped at kappa (none = no clamp)",
                       check=nonneg, optional=True),
        "random_start": Param(bool, True, "start from a random point in the ball"),
    }

    def label(self) -> str:
        k = "" if self.p["kappa"] == 0 else f" kappa={'none' if self.p['kappa'] is None else fmt_value(self.p['kappa'])}"
        return f"CW-PGD-{self.p['steps']} {self.p['norm']} {fmt_value(self.p['eps'])}{k}"

    def run(self, model, batch):
        import torch

        from suite.attacks.engine import pgd

        p = self.p
        step = 2.5 * p["eps"] / p["steps"] if p["step_size"] is None else p["step_size"]
        kappa = p["kappa"]

        def loss_fn(out, b):
            return cw_loss(out, b[1], kappa).sum()

        x_adv = pgd(model, self.adapter, batch, norm=p["norm"], eps=p["eps"], step_size=step, steps=p["steps"],
                    random_init=p["random_start"], loss_fn=loss_fn)
        with torch.no_grad():
            success = ~self.adapter.correct(self.adapter.forward_surface(model, batch, x_adv), batch)
        return AttackResult(success=success, adversarial=x_adv)
