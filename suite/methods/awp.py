"""AWP (Wu et al., NeurIPS 2020): adversarial weight perturbation on top of PGD-AT.

    x' = PGD(w; x)
    v_l = gamma * ||w_l|| * g_l / ||g_l||      g = grad_w L(w; x'), per layer l (layer-wise relative size)
    step with grad_w L(w + v; x'), then w restored exactly

As in the authors' `AdvWeightPerturb` (csdongxian/AWP, `utils_awp.py`): one ascent step on the
adversarial cross-entropy, taken by a proxy copy of the model with SGD, then `diff_in_weights` keeps
only parameters whose name contains "weight" and that have more than one dimension (conv and linear
kernels, embedding tables), rescaled to gamma times that layer's weight norm. Biases and the weights
of BatchNorm/LayerNorm (1-D) are never perturbed. Here the same perturbation comes straight from
the gradient (the proxy's SGD step is lr * g, and the lr cancels in the rescaling), on the model
itself, and w is restored by copying it back rather than by subtracting v.

BatchNorm: the authors compute v on a proxy copy (its statistics are thrown away) and train in
train mode at w + v, so the model's running statistics move once, at the perturbed weights. Here
they move once, by the pass at the current weights w on the adversarial batch (the suite's AT rule);
the attack and the pass at w + v use batch statistics but leave them alone.

gamma defaults to 5e-3. The authors' TRADES-AWP script (trades_AWP/train_trades_cifar.py) defaults
to --awp-gamma 0.005 with --awp-warmup 10; the AT-AWP scripts derived from their train_cifar10.py
use --awp-gamma 0.01 with --awp-warmup 0. `warmup` is their --awp-warmup: during the first `warmup`
epochs (`epoch < warmup`, as in their `if epoch >= args.awp_warmup`) the step is the `at` method's
step with the same threat model.

Cost: steps (attack) + 1 (gradient at w, for v) + 1 (gradient at w + v) = steps + 2 per step after the
warm-up (steps + 1 during it, like `at`); the declared cost is the former, the price of the method's
own steps.
"""
from __future__ import annotations

from suite.methods.adversarial import PGD_PARAMS
from suite.methods.at import PGDAdversarialTraining
from suite.methods.base import StepContext
from suite.methods.sam_at import AdversarialWeightAscent
from suite.params import Param, fmt_value, nonneg
from suite.registry import METHODS

NORM_EPS = 1e-20  # the authors' EPS in the rescaling


def perturbed(name: str, param) -> bool:
    """Which parameters AWP perturbs: named '...weight...' with more than one dimension."""
    return "weight" in name and param.dim() > 1


@METHODS.register("awp")
class AdversarialWeightPerturbation(AdversarialWeightAscent):
    description = "AWP (Wu et al. 2020): PGD-AT with a layer-wise relative weight perturbation gamma ||w|| g/||g||"
    params = {
        "gamma": Param(float, 5e-3, "size of the weight perturbation relative to each layer's norm", check=nonneg),
        **PGD_PARAMS,
        "warmup": Param(int, 0, "epochs of plain PGD-AT before the weight perturbation starts (the authors' "
                        "--awp-warmup)", check=nonneg),
    }
    later_params = frozenset({"warmup"})

    def __init__(self, **params):
        super().__init__(**params)
        self._warmup_step = PGDAdversarialTraining(**{k: self.p[k] for k in PGD_PARAMS})

    def check_settings(self, cfg) -> None:
        super().check_settings(cfg)
        if self.p["warmup"] and self.p["warmup"] >= cfg.epochs:
            from suite.errors import UserError
            raise UserError(f"awp --warmup {self.p['warmup']} with epochs={cfg.epochs}: every epoch would be "
                            "plain PGD-AT and no weight perturbation would ever be applied; give a warm-up below "
                            "the number of epochs (or more epochs with --set epochs=N), or use --method at")

    def train_step(self, model, batch, optimizer, adapter, ctx=None):
        ctx = StepContext() if ctx is None else ctx
        if ctx.epoch < self.p["warmup"]:
            return self._warmup_step.train_step(model, batch, optimizer, adapter, ctx)
        return super().train_step(model, batch, optimizer, adapter, ctx)

    def perturbation(self, named):
        out = []
        for n, p in named:
            if p.grad is None or not perturbed(n, p):
                out.append(None)
                continue
            g = p.grad
            out.append(g * (self.p["gamma"] * p.detach().norm() / (g.norm() + NORM_EPS)))
        return out

    def label(self) -> str:
        warm = f" warmup={self.p['warmup']}" if self.p["warmup"] else ""
        return f"AWP gamma={fmt_value(self.p['gamma'])} {self.threat_label()}{warm}"
