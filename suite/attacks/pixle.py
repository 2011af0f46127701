"""Pixle (Pomponi, Scardapane & Uncini, IJCNN 2022): a black-box attack that rearranges pixels, here
with an L0 budget of `pixels` changed pixel locations.

Pixle's search (the `restart` mode of its reference implementation): a restart makes `iterations`
candidates from the same starting image; each copies a random rectangular patch of the *clean*
image's pixels to random positions of the starting image (the "random" pixel mapping). A candidate
is kept if it lowers the model's probability of the true class below the best so far; the best one
becomes the next restart's starting image. An example stops as soon as a candidate is misclassified.

What differs from the reference (torchattacks' Pixle, which is read, not imported: torchattacks pins
requests~=2.25.1):
- the budget: a candidate that changes more than `pixels` locations (a location counts once however
  many of its channels change) is rejected, and patches are drawn with area <= `pixels` (sides in
  [1, min(10, side)] as the reference's default (2, 10) range allows, with the lower end 1 so that a
  budget of 1 pixel works); patches always lie fully inside the image;
- destinations are distinct within a candidate (the reference may write one position twice);
- a restart that finds no better candidate keeps its starting image (the reference moves to its last,
  random, candidate, which would spend budget on a change that did not help);
- the whole batch is searched at once (one forward pass per iteration for every example still
  unbroken) instead of one image at a time. Randomness comes from torch's generator, which the
  evaluation seeds per attack and batch.

Defaults: the reference's 20 restarts x 10 iterations (200 queries per unbroken example).
Statistics: model queries per attacked example, changed pixels per broken example.
"""
from __future__ import annotations

from suite.attacks.base import Attack, AttackResult
from suite.params import Param, at_least_one
from suite.registry import ATTACKS

MAX_SIDE = 10  # the reference's default patch sides are 2..10 pixels


def changed_pixels(x_adv, x):
    """Per example: how many pixel locations differ in any channel (N, C, H, W) -> (N,)."""
    return (x_adv != x).any(dim=1).flatten(1).sum(1)


def candidates(x0, start, pixels: int):
    """One Pixle candidate per example: `start` with a random patch of `x0` copied to random places."""
    import torch

    m, _, h, w = x0.shape
    dev = x0.device
    wmax = min(MAX_SIDE, w, pixels)
    pw = torch.randint(1, wmax + 1, (m,), device=dev)
    hmax = torch.clamp(torch.div(pixels, pw, rounding_mode="floor"), max=min(MAX_SIDE, h))
    ph = (torch.rand(m, device=dev) * hmax).floor().long() + 1  # uniform in [1, hmax]
    py = (torch.rand(m, device=dev) * (h - ph + 1)).floor().long()
    px = (torch.rand(m, device=dev) * (w - pw + 1)).floor().long()
    area = min(pixels, MAX_SIDE * MAX_SIDE, h * w)
    cell = torch.arange(area, device=dev).view(1, -1)
    valid = cell < (pw * ph).view(-1, 1)
    sy = py.view(-1, 1) + torch.div(cell, pw.view(-1, 1), rounding_mode="floor")
    sx = px.view(-1, 1) + cell % pw.view(-1, 1)
    dest = torch.rand(m, h * w, device=dev).argsort(dim=1)[:, :area]  # distinct positions per example
    ex = torch.arange(m, device=dev).view(-1, 1).expand(m, area)
    ex, sy, sx, dest = ex[valid], sy[valid], sx[valid], dest[valid]
    out = start.clone()
    out[ex, :, torch.div(dest, w, rounding_mode="floor"), dest % w] = x0[ex, :, sy, sx]
    return out


@ATTACKS.register("pixle")
class Pixle(Attack):
    description = ("Pixle (Pomponi et al. 2022): black-box pixel rearrangement with an L0 budget of `pixels` "
                   "changed locations, 20 restarts x 10 iterations")
    modalities = ("image",)
    threat = "pixel rearrangement"
    params = {
        "pixels": Param(int, 10, "L0 budget: pixel locations that may change", check=at_least_one),
        "restarts": Param(int, 20, "restarts (each continues from the best image so far)", check=at_least_one),
        "iterations": Param(int, 10, "candidates per restart", check=at_least_one),
    }

    def label(self) -> str:
        q = self.p["restarts"] * self.p["iterations"]
        return f"Pixle pixels<={self.p['pixels']} ({q} queries)"

    def run(self, model, batch):
        import torch

        a, p = self.adapter, self.p
        x0 = a.surface(model, batch).detach()
        y = batch[1]
        n = x0.shape[0]
        with torch.no_grad():
            out = a.forward_surface(model, batch, x0)
        success = ~a.correct(out, batch)
        best = x0.clone()  # per example: the best image so far (lowest true-class probability)
        best_p = torch.softmax(out.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
        queries = torch.zeros(n, dtype=torch.long, device=x0.device)
        with torch.no_grad():
            for _ in range(p["restarts"]):
                start = best.clone()  # every candidate of a restart starts from the same image
                for _ in range(p["iterations"]):
                    idx = torch.nonzero(~success).flatten()
                    if not len(idx):
                        break
                    sub = a.subset(batch, idx)
                    cand = candidates(x0[idx], start[idx], p["pixels"])
                    out = a.forward_surface(model, sub, cand)
                    queries[idx] += 1
                    prob = torch.softmax(out.float(), dim=1).gather(1, y[idx].view(-1, 1)).squeeze(1)
                    ok = changed_pixels(cand, x0[idx]) <= p["pixels"]
                    broken = ok & ~a.correct(out, sub)
                    better = ok & ((prob < best_p[idx]) | broken)
                    best[idx[better]] = cand[better]
                    best_p[idx[better]] = prob[better]
                    success[idx[broken]] = True
        stats = {"queries_sum": float(queries.sum()), "queries_count": float(n),
                 "pixels_sum": float(changed_pixels(best[success], x0[success]).sum()),
                 "pixels_count": float(success.sum())}
        return AttackResult(success=success, adversarial=best, extra=stats)
