"""Gradient attacks (PGD engine, pgd/fgsm) and the evaluation that combines them."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import accuracy, clean_correct
from torch import nn
from torch.func import grad

from suite.attacks.base import AttackSpec
from suite.attacks.engine import pgd
from suite.attacks.gradient import PGD
from suite.evaluate import evaluate
from suite.modalities.image import FeatureClassification, ImageClassification
from suite.plugins import load_builtins
from suite.registry import ATTACKS

load_builtins()

CPU = torch.device("cpu")
IMAGE = ImageClassification()



def image_batch(n=24, seed=0):
    """8x8 one-channel images in [0, 1] with many pixels exactly on the box boundary."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    x = torch.where(x < 0.3, torch.zeros_like(x), torch.where(x > 0.7, torch.ones_like(x), x))
    return x, torch.randint(0, 10, (n,), generator=g)


def image_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).eval()




# --- the engine: budget, box, eps = 0 -------------------------------------------------------------
@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.06), ("l2", 0.8, 0.5)])
@pytest.mark.parametrize("random_init", [True, False])
def test_pgd_stays_in_ball_and_box(norm, eps, step, random_init):
    x, y = image_batch()
    torch.manual_seed(0)
    x_adv = pgd(image_model(), IMAGE, (x, y), norm=norm, eps=eps, step_size=step, steps=5, random_init=random_init)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    d = (x_adv - x).flatten(1)
    size = d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all(), size.max()
    assert (size >= 0.9 * eps).float().mean() > 0.5  # the budget is used: the check is not vacuous
    # the box really constrains: some pixels at 0 or 1 were pushed against it and stayed there
    at_bound = (x == 0) | (x == 1)
    assert ((x_adv == x) & at_bound).any() and ((x_adv != x) & ~at_bound).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_with_zero_budget_returns_clean_input(norm):
    x, y = image_batch()
    x_adv = pgd(image_model(), IMAGE, (x, y), norm=norm, eps=0.0, step_size=0.1, steps=10, random_init=True)
    assert torch.equal(x_adv, x)
    for name, params in (("pgd", {"norm": norm, "eps": 0.0}), ("fgsm", {"norm": norm, "eps": "0"})):
        res = AttackSpec.of(name, **params).build(IMAGE).run(image_model(), (x, y))
        assert torch.equal(res.adversarial, x)


def test_fgsm_is_one_signed_gradient_step():
    x, y = image_batch()
    model, eps = image_model(), 0.05
    gx = grad(lambda v: F.cross_entropy(model(v), y, reduction="sum"))(x)
    expected = (x + eps * gx.sign()).clamp(0, 1)
    res = AttackSpec.parse("fgsm:norm=linf,eps=0.05").build(IMAGE).run(model, (x, y))
    torch.testing.assert_close(res.adversarial, expected, rtol=0, atol=1e-7)  # float32 rounding of x + eps
    assert res.success is None  # evaluation scores the adversarial input itself


# --- the features adapter's mask ------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", 0.5), ("l2", 2.0)])
def test_features_surface_mask_keeps_masked_coordinates(norm, eps):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 6, generator=g) * 3, torch.randint(0, 3, (20,), generator=g)
    perturbable = torch.tensor([True, False, True, False, False, True])
    adapter = FeatureClassification(types.SimpleNamespace(perturbable=perturbable))
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    outs = [pgd(model, adapter, (x, y), norm=norm, eps=eps, step_size=eps / 3, steps=4, random_init=True)]
    for spec in (f"pgd:norm={norm},eps={eps},steps=3", f"fgsm:norm={norm},eps={eps}"):
        outs.append(AttackSpec.parse(spec).build(adapter).run(model, (x, y)).adversarial)
    for x_adv in outs:
        assert torch.equal(x_adv[:, ~perturbable], x[:, ~perturbable])
        assert (x_adv[:, perturbable] != x[:, perturbable]).float().mean() > 0.9
        d = (x_adv - x).flatten(1)
        size = d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-5).all()  # float32 features of size ~3: 1e-5 covers rounding of x + d
    # features are unbounded: without a mask nothing clamps them to [0, 1]
    free = pgd(model, FeatureClassification(), (x, y), norm=norm, eps=eps, step_size=eps / 3, steps=4)
    assert (free[:, ~perturbable] != x[:, ~perturbable]).any()
    assert free.min() < 0 and free.max() > 1


# --- strength on a trained model ------------------------------------------------------------------
def test_pgd_breaks_a_trained_model_and_beats_fgsm(digits):
    model, test = digits
    specs = [AttackSpec.parse("fgsm:norm=linf,eps=0.1"), AttackSpec.parse("pgd:norm=linf,eps=0.1,steps=10")]
    m = evaluate(model, IMAGE, test, specs, batch_size=128, device=CPU)
    clean, (fgsm_acc, pgd_acc) = m["clean"], [a["value"] for a in m["attacks"]]
    assert clean > 90
    assert pgd_acc < clean - 40  # ~97% -> ~25%
    # PGD maximises the loss, not the error count, so on a few examples FGSM may win: 1 point = 3-4
    # of the 359 test images
    assert pgd_acc <= fgsm_acc + 1.0
    assert m["worst_case"] <= min(fgsm_acc, pgd_acc)


def reference_pgd_linf(model, x, y, eps, alpha, steps, random_start, gen):
    """PGD-Linf exactly as torchattacks' PGD writes it (random start uniform in [-eps, eps] per pixel,
    then the [0, 1] box; signed steps of the mean cross-entropy's gradient; projection onto the ball,
    then the box). Written here so the test shares no code with the suite."""
    adv = x.clone().detach()
    if random_start:
        adv = (adv + torch.empty_like(adv).uniform_(-eps, eps, generator=gen)).clamp(0, 1).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (g,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * g.sign()
        delta = (adv - x).clamp(-eps, eps)
        adv = (x + delta).clamp(0, 1).detach()
    return adv


def test_linf_pgd_equals_the_reference_and_is_never_weaker(digits):
    """The linf counterpart of tests/test_fidelity.py's l2 check, on the same footing: an independent
    implementation of the common practice, the suite's PGD no weaker than it."""
    model, test = digits
    x, y = clean_correct(model, test)
    eps, steps = 0.1, 10

    # without a random start both are one deterministic algorithm: the same adversarial images
    fixed = AttackSpec.parse(f"pgd:norm=linf,eps={eps},steps={steps},random_start=false").build(IMAGE)
    ours = fixed.run(model, (x, y)).adversarial
    ref = reference_pgd_linf(model, x, y, eps, eps / 4, steps, False, None)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)  # float32 rounding of x + delta
    # with random starts (other random numbers): equal up to sampling noise (1 point of ~350 examples)
    ours, theirs = [], []
    for seed in range(5):
        torch.manual_seed(seed)
        adv = AttackSpec.parse(f"pgd:norm=linf,eps={eps},steps={steps}").build(IMAGE).run(model, (x, y)).adversarial
        assert (adv - x).abs().max() <= eps + 1e-6 and 0 <= adv.min() and adv.max() <= 1
        ours.append(accuracy(model, adv, y))
        theirs.append(accuracy(model, reference_pgd_linf(model, x, y, eps, eps / 4, steps, True,
                                                         torch.Generator().manual_seed(seed)), y))
    assert 0.05 < np.mean(theirs) < 0.95  # the budget is neither trivial nor overwhelming here
    assert np.mean(ours) <= np.mean(theirs) + 0.01, (ours, theirs)


def test_worst_case_is_the_per_example_and(digits):
    model, test = digits
    texts = ["fgsm:norm=linf,eps=0.05", "pgd:norm=linf,eps=0.05,steps=5,random_start=false",
             "pgd:norm=l2,eps=0.3,steps=5,random_start=false"]
    specs = [AttackSpec.parse(t) for t in texts]
    bs = 100
    m = evaluate(model, IMAGE, test, specs, batch_size=bs, device=CPU)

    # independently: per-example flags of each (deterministic) attack, batched the same way
    x, y = test.tensors
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    robust = []
    for spec in specs:
        attack = spec.build(IMAGE)
        r = torch.zeros(len(y), dtype=torch.bool)
        for lo in range(0, len(y), bs):
            idx = lo + torch.nonzero(clean[lo:lo + bs]).flatten()
            adv = attack.run(model, (x[idx], y[idx])).adversarial
            with torch.no_grad():
                r[idx] = model(adv).argmax(1) == y[idx]
        robust.append(r)
    pct = lambda f: 100.0 * f.float().mean().item()
    assert m["n"] == len(y) and m["clean"] == pct(clean)
    for entry, r in zip(m["attacks"], robust):
        assert entry["value"] == pct(r)
    worst = clean & robust[0] & robust[1] & robust[2]
    assert m["worst_case"] == pct(worst)
    accs = [e["value"] for e in m["attacks"]]
    assert m["worst_case"] < min(accs)  # the attacks break different examples: not just the min


@pytest.mark.parametrize("batch_size", [50, 1000])
def test_zero_budget_robust_accuracy_equals_clean(digits, batch_size):
    model, test = digits
    specs = [AttackSpec.parse("pgd:norm=linf,eps=0,steps=5"), AttackSpec.parse("pgd:norm=l2,eps=0"),
             AttackSpec.parse("fgsm:eps=0/255")]
    m = evaluate(model, IMAGE, test, specs, batch_size=batch_size, device=CPU)
    assert 90 < m["clean"] < 100
    assert all(a["value"] == m["clean"] for a in m["attacks"])
    assert m["worst_case"] == m["clean"]


# --- resumable evaluation -------------------------------------------------------------------------
class FlakyPGD(PGD):
    """PGD that can be made to fail on its k-th call (an interrupted evaluation), logging calls."""

    name = "_test_flaky_pgd"
    log: list = []
    fail_on: tuple | None = None  # (eps, k): raise on the k-th call with that eps

    def run(self, model, batch):
        FlakyPGD.log.append(self.p["eps"])
        if FlakyPGD.fail_on and FlakyPGD.log.count(FlakyPGD.fail_on[0]) == FlakyPGD.fail_on[1]:
            raise RuntimeError("interrupted")
        return super().run(model, batch)


@pytest.fixture
def flaky():
    ATTACKS.register(FlakyPGD.name, FlakyPGD)
    FlakyPGD.log, FlakyPGD.fail_on = [], None
    try:
        yield FlakyPGD
    finally:
        ATTACKS.unregister(FlakyPGD.name)


def test_evaluation_resumes_to_the_uninterrupted_result(digits, flaky, tmp_path):
    model, test = digits
    # random starts matter here: a 1-step attack with a tiny step is mostly its uniform random start,
    # so resumed batches must see the same random numbers as in an uninterrupted run
    specs = [AttackSpec.of(flaky.name, norm="linf", eps=0.08, steps=2, step_size=0.01),
             AttackSpec.of(flaky.name, norm="linf", eps=0.3, steps=1, step_size=0.001)]
    bs = 60
    n_batches = -(-len(test) // bs)
    ref = evaluate(model, IMAGE, test, specs, batch_size=bs, device=CPU, state_path=tmp_path / "ref.pt", seed=3)

    flaky.log, flaky.fail_on = [], (0.3, 3)  # the second attack dies on its third batch
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate(model, IMAGE, test, specs, batch_size=bs, device=CPU, state_path=tmp_path / "s.pt", seed=3)
    assert flaky.log == [0.08] * n_batches + [0.3] * 3
    flaky.log, flaky.fail_on = [], None
    resumed = evaluate(model, IMAGE, test, specs, batch_size=bs, device=CPU, state_path=tmp_path / "s.pt", seed=3)
    assert flaky.log == [0.3] * (n_batches - 2)  # finished batches are not re-run

    ref.pop("eval_time_s"), resumed.pop("eval_time_s")
    assert resumed == ref
    a, b = torch.load(tmp_path / "ref.pt", weights_only=False), torch.load(tmp_path / "s.pt", weights_only=False)
    assert torch.equal(a["clean"], b["clean"])
    for ra, rb in zip(a["stats"], b["stats"]):
        assert torch.equal(ra, rb)
    assert 0 < ref["attacks"][1]["value"] < ref["clean"]  # the random attack does break examples

    # a finished state is read back without running anything
    flaky.log = []
    again = evaluate(model, IMAGE, test, specs, batch_size=bs, device=CPU, state_path=tmp_path / "s.pt", seed=3)
    again.pop("eval_time_s")
    assert again == ref and flaky.log == []


def test_evaluation_state_for_other_attacks_is_not_reused(digits, flaky, tmp_path):
    model, test = digits
    path = tmp_path / "s.pt"
    evaluate(model, IMAGE, test, [AttackSpec.of(flaky.name, eps=0.0)], batch_size=200, device=CPU, state_path=path)
    flaky.log = []
    m = evaluate(model, IMAGE, test, [AttackSpec.of(flaky.name, eps=0.1)], batch_size=200, device=CPU,
                 state_path=path)
    assert flaky.log == [0.1, 0.1]
    assert m["attacks"][0]["value"] < m["clean"]
