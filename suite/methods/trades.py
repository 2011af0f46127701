"""TRADES (Zhang et al., ICML 2019): trade clean accuracy for robustness with a KL regulariser.

    loss = CE(f(x), y) + beta * KL(f(x) || f(x'))      x' = argmax_{x' in B(x, eps)} KL(f(x) || f(x'))

The inner maximisation follows the authors' code (yaodongyu/TRADES, also used by AWP's TRADES-AWP):
PGD on the summed per-example KL, starting from x + 0.001 * N(0, I) (KL is at its minimum at x' = x,
where its gradient is zero, so PGD needs *some* start off x; a small Gaussian one is theirs), 10
steps of 2/255 in the linf ball of 8/255 by default. The outer loss averages the KL over examples
('batchmean'). KL terms are taken over the class dimension (dim 1) and, for dense outputs such as
segmentation logits (N, C, H, W), averaged over the remaining dimensions, per example.

Differences from the authors' code, each on purpose:
- BatchNorm: they attack in eval mode and then run f(x) twice and f(x') once in train mode, so the
  running statistics move three times per step. Here the suite's rule holds: the running statistics
  are updated exactly once per step, by the clean pass f(x) at the current weights. The inner attack
  and the outer f(x') run in train mode (batch statistics) with the running statistics frozen, as in
  the suite's AT.
- The clean logits are computed once and serve both as the fixed target distribution of the inner
  maximisation (detached) and in the outer loss (with gradient), so the step costs exactly
  steps + 2 forward-backward passes: `steps` attack passes, and the outer forwards on x and x'
  (1/3 each) with one backward through both (2 x 2/3). The price is that the clean pass's graph is
  kept alive during the attack (one forward's activations more memory).
- The random start is projected into the threat model (box, mask, ball) before the first step;
  theirs is projected after the first step only.
"""
from __future__ import annotations

from suite.methods.adversarial import PGDThreatModel, pgd_params
from suite.methods.base import Method
from suite.params import Param, fmt_value, nonneg
from suite.registry import METHODS

START_STD = 0.001  # the authors' x' = x + 0.001 * randn


def kl_per_example(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) over dim 1, averaged over any further dims: shape (N,)."""
    import torch
    import torch.nn.functional as F

    if p_logits.dtype in (torch.float16, torch.bfloat16):  # AMP logits: softmax in float32
        p_logits, q_logits = p_logits.float(), q_logits.float()
    log_p = F.log_softmax(p_logits, dim=1)
    log_q = F.log_softmax(q_logits, dim=1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)
    return kl.flatten(1).mean(dim=1) if kl.dim() > 1 else kl


@METHODS.register("trades")
class TRADES(PGDThreatModel, Method):
    description = "TRADES (Zhang et al. 2019): CE(f(x)) + beta KL(f(x) || f(x')), x' maximises the KL by PGD"
    params = {
        "beta": Param(float, 6.0, "weight of the KL robustness term (1/lambda in the paper)", check=nonneg),
        # the threat model without a random start (the start is the authors' Gaussian one, START_STD)
        **pgd_params(random_start=False,
                     step_size="PGD step; default 2.5 * eps / steps (2/255 for 8/255 and 10 steps)",
                     steps="PGD steps of the inner maximisation"),
    }

    def cost(self) -> float:
        return self.p["steps"] + 2.0

    def inner_max(self, model, batch, adapter, target_logits):
        """x' maximising sum_i KL(target_i || f(x'_i)) by PGD from x + 0.001 N(0, I) (the engine
        turns parameter gradients off while it attacks)."""
        import torch

        x0 = adapter.surface(model, batch).detach()
        target = target_logits.detach()
        return self.pgd_attack(model, batch, adapter, loss_fn=lambda out, b: kl_per_example(target, out).sum(),
                               init=START_STD * torch.randn_like(x0))

    def train_step(self, model, batch, optimizer, adapter, ctx=None):
        from suite.modalities.base import frozen_bn_stats

        optimizer.zero_grad(set_to_none=True)
        out = adapter.forward(model, batch)  # the clean pass at w: the one that updates BN statistics
        with frozen_bn_stats(model):
            x_adv = self.inner_max(model, batch, adapter, out)
            out_adv = adapter.forward_surface(model, batch, x_adv)
        natural = adapter.loss(out, batch)
        robust = kl_per_example(out, out_adv).mean()
        loss = natural + self.p["beta"] * robust
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "natural_loss": natural.item(), "kl": robust.item(),
                "acc": adapter.correct(out.detach(), batch).float().mean().item(),
                "adv_acc": adapter.correct(out_adv.detach(), batch).float().mean().item()}

    def label(self) -> str:
        return f"TRADES beta={fmt_value(self.p['beta'])} {self.threat_label()}"
