"""StAdv (Xiao et al., ICLR 2018): spatially transformed adversarial examples.

Each output pixel p is read from the clean image at its own position moved by a flow vector
f_p = (du_p, dv_p), by bilinear interpolation. The attack minimises, per example,

    L_adv(x_f) + tau * L_flow(f),   L_adv = z_y - max_{j != y} z_j   (the CW margin, as the paper uses),
    L_flow(f) = sum_p sum_{q in N(p)} sqrt((du_p - du_q)^2 + (dv_p - dv_q)^2 + 1e-10)

where N(p) are p's 4 neighbours inside the image (each neighbouring pair counts twice, once from
each side, as the paper's double sum does; the 1e-10 keeps the square root differentiable at 0).

Written here rather than imported: the only packaged version (perceptual-advex, through
recoloradv's mister_ed) pins a statsmodels that no longer builds. This one follows its settings,
which is how StAdv appears in robustness papers (Laidlaw et al. 2021; Zhang et al. 2024):
- flow in normalised grid units, where the image spans [-1, 1] between its corner pixel centres
  (grid_sample with align_corners=True); so a flow of 1.0 is (W - 1) / 2 pixels horizontally and
  (H - 1) / 2 vertically. `bound` = 0.05 is 0.775 pixels on a 32x32 image, 0.175 on 8x8;
- the budget is linf on each flow component: |du_p| <= bound and |dv_p| <= bound for every pixel
  (perceptual-advex's lp_style='inf'), enforced by clamping after every optimiser step;
- border padding (a pixel pulled from outside the image takes the nearest border value), which is
  what mister_ed's clipping of the grid to [-1, 1] amounts to;
- tau = 0.05 (perceptual-advex sets 0.0025 / bound), the margin without clamp (kappa = inf), Adam
  with lr 0.01 from the zero flow (no random start). The paper used L-BFGS without a flow bound;
  the bounded Adam version is the one robustness evaluations run. 100 steps by default, as in
  perceptual-advex's README evaluations (its class default is 20).

An example counts as broken at the first iterate the model misclassifies (every iterate's
prediction is read from the forward pass the optimiser makes anyway, plus one pass after the last
step); that iterate is the adversarial input returned. Adam's state and the loss are per example
and per coordinate, so an example's result does not depend on the rest of its batch.

Exactness at zero flow: in float32, grid_sample at the identity grid is off by up to ~3e-6 on a
32x32 image (the grid's rounding), so the warp is applied as x + (sample(x, f) - sample(x, 0)),
which returns x bit for bit at f = 0 and differs from sample(x, f) by that rounding only.
"""
from __future__ import annotations

from suite.attacks.base import Attack, AttackResult
from suite.params import Param, at_least_one, fmt_value, nonneg, positive
from suite.registry import ATTACKS


def identity_grid(x):
    """(N, H, W, 2) sampling grid in normalised (x, y) coordinates that maps the image to itself."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device).expand(n, 2, 3)
    return F.affine_grid(theta, list(x.shape), align_corners=True)


def warp(x, flow, base=None, clean=None):
    """x (N, C, H, W) moved by `flow` (N, 2, H, W; channel 0 = du along width, 1 = dv along height),
    normalised units, bilinear, border padding. `base`/`clean` (the identity grid and the image
    sampled at it) may be passed to save recomputing them every step."""
    import torch.nn.functional as F

    if base is None:
        base = identity_grid(x)
    if clean is None:
        clean = F.grid_sample(x, base, mode="bilinear", padding_mode="border", align_corners=True)
    moved = F.grid_sample(x, base + flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                          align_corners=True)
    return x + (moved - clean)


def flow_smoothness(flow, eps: float = 1e-10):
    """L_flow per example (see the module docstring): (N, 2, H, W) -> (N,)."""
    dh = flow[:, :, 1:, :] - flow[:, :, :-1, :]  # vertical neighbour pairs
    dw = flow[:, :, :, 1:] - flow[:, :, :, :-1]  # horizontal neighbour pairs
    # each unordered pair appears twice in the paper's sum over p and its neighbours q
    return 2 * ((dh.pow(2).sum(1) + eps).sqrt().sum((1, 2)) + (dw.pow(2).sum(1) + eps).sqrt().sum((1, 2)))


@ATTACKS.register("stadv")
class StAdv(Attack):
    description = ("StAdv spatial flow attack (Xiao et al. 2018): CW margin + tau * flow smoothness, Adam, "
                   "flow bounded in linf (normalised units: 0.05 = 0.775 px on 32x32)")
    modalities = ("image",)
    threat = "spatial flow"
    params = {
        "bound": Param(float, 0.05, "linf bound on each flow component, in units of half the image side "
                                    "(0.05 = 0.775 px on 32x32)", check=nonneg),
        "tau": Param(float, 0.05, "weight of the flow smoothness loss", check=nonneg),
        "steps": Param(int, 100, "Adam steps", check=at_least_one),
        "lr": Param(float, 0.01, "Adam learning rate (normalised flow units)", check=positive),
        "kappa": Param(float, None, "clamp of the margin loss (none = unclamped, as perceptual-advex)",
                       check=nonneg, optional=True),
    }

    def label(self) -> str:
        k = "" if self.p["kappa"] is None else f" kappa={fmt_value(self.p['kappa'])}"
        return f"StAdv tau={fmt_value(self.p['tau'])} flow<={fmt_value(self.p['bound'])}{k}"

    def attack_flow(self, model, batch):
        """(success, adversarial images, flow) for a batch; the flow is the one that made them."""
        import torch
        import torch.nn.functional as F

        from suite.attacks.cw import cw_loss

        a, p = self.adapter, self.p
        x = a.surface(model, batch).detach()
        y = batch[1]
        n = x.shape[0]
        flow = torch.zeros(n, 2, *x.shape[2:], dtype=x.dtype, device=x.device)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_x, best_flow = x.clone(), flow.clone()
        if n == 0 or p["bound"] == 0:
            with torch.no_grad():
                success = ~a.correct(a.forward_surface(model, batch, x), batch)
            return success, x, flow
        base = identity_grid(x)
        with torch.no_grad():
            clean = F.grid_sample(x, base, mode="bilinear", padding_mode="border", align_corners=True)
        lo, hi = a.bounds if a.bounds is not None else (None, None)

        def images(f):
            out = warp(x, f, base, clean)
            return out.clamp(lo, hi) if lo is not None else out

        def record(f, x_f, out):
            nonlocal success
            new = ~a.correct(out, batch) & ~success
            best_x[new], best_flow[new] = x_f[new].detach(), f[new].detach()
            success = success | new

        params = [q for q in model.parameters() if q.requires_grad]
        for q in params:
            q.requires_grad_(False)
        try:
            flow.requires_grad_(True)
            opt = torch.optim.Adam([flow], lr=p["lr"])
            for _ in range(p["steps"]):
                x_f = images(flow)
                out = a.forward_surface(model, batch, x_f)
                with torch.no_grad():
                    record(flow, x_f, out)
                adv = -cw_loss(out, y, p["kappa"])  # z_y - max_{j != y} z_j (clamped at -kappa)
                loss = (adv + p["tau"] * flow_smoothness(flow)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    flow.clamp_(-p["bound"], p["bound"])
            with torch.no_grad():
                x_f = images(flow)
                record(flow, x_f, a.forward_surface(model, batch, x_f))
        finally:
            for q in params:
                q.requires_grad_(True)
        with torch.no_grad():
            left = ~success  # unbroken examples return their last iterate
            best_x[left], best_flow[left] = images(flow)[left], flow.detach()[left]
        return success, best_x, best_flow

    def run(self, model, batch):
        success, x_adv, _ = self.attack_flow(model, batch)
        return AttackResult(success=success, adversarial=x_adv)
