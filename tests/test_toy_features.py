"""The `toy_features` task: exact optima of the paper's model vs Theorems 4.1-4.4, its data, model,
attack mask, analysis and leaderboard section, and short trained runs against the exact targets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq

from suite.attacks.engine import pgd
from suite.config import TaskOptions
from suite.plugins import load_builtins
from suite.records import RecordStore
from suite.registry import METHODS, MODALITIES, TASKS
from suite.runner import execute, plan_run
from tasks import toy_features as toy

load_builtins()
TASK = TASKS.get("toy_features")



# --- (a) exact optima ------------------------------------------------------------------------------
@pytest.mark.parametrize("p,eta,d", [(toy.P, toy.ETA, toy.D), (0.7, 0.1, 10), (0.9, 0.3, 50), (0.8, 0.2, 1)])
def test_st_exact_optimum_matches_theorem_4_1(p, eta, d):
    assert toy.exact_st(p, eta, d) == pytest.approx(toy.w1_star(p, eta), rel=1e-3)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.15, 0.19])
def test_at_exact_optimum_matches_theorem_4_2(eps):
    assert toy.exact_at(eps) == pytest.approx(toy.w1_at(eps), rel=1e-3)


def test_at_outside_theorem_is_refused():
    with pytest.raises(ValueError):
        toy.exact_at(toy.ETA)
    with pytest.raises(ValueError):
        toy.w1_at(0.25)


def test_closed_forms_are_the_papers():
    assert toy.w1_star(0.8, 0.2) == pytest.approx(math.log(4) / 0.4)
    assert toy.w1_at(0.1, 0.8, 0.2) == pytest.approx(math.log(4) / 0.2)
    assert toy.w1_sam_thm44(0.5, 0.8, 0.2) == pytest.approx(math.log(4) / 0.4 * (1 + 2 / 3 * 0.25))


def test_zero_one_loss_matches_the_sampled_distribution():
    """The formula of (a) and the sampler of (b) describe the same distribution."""
    x, label = toy.sample(200_000, np.random.RandomState(1))
    y = 2 * label - 1
    for w1 in (0.0, toy.w1_star(), 8.0):
        err = np.mean(np.sign(w1 * x[:, 0] + x[:, 1:].sum(1)) != y)
        want = toy.zero_one_loss(w1)
        assert abs(err - want) < 4 * math.sqrt(want * (1 - want) / len(y))


def test_max_over_interval_finds_interior_and_endpoint_maxima():
    bump = lambda x: -(np.asarray(x) - 0.3) ** 2  # noqa: E731  interior maximum at 0.3
    assert toy.max_over_interval(bump, 0.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert toy.max_over_interval(bump, 0.5, 1.0) == pytest.approx(-0.04, abs=1e-12)
    # For the 0-1 loss (decreasing, then increasing) the maximum is at an endpoint.
    f = lambda w: toy.zero_one_loss(w)  # noqa: E731
    for c in (0.0, 3.0, toy.w1_star(), 6.0):
        assert toy.max_over_interval(f, c - 1, c + 1) == pytest.approx(max(f(c - 1), f(c + 1)), abs=1e-15)


@pytest.mark.parametrize("eps,d", [(0.1, 25), (0.5, 25), (1.0, 25), (0.5, 10)])
def test_sam_exact_optimum(eps, d):
    w = toy.exact_sam(eps, d=d)
    ws = toy.w1_star()
    # the minimax sits where the loss is equal at both ends of the ball (an independent computation)
    kink = brentq(lambda v: toy.zero_one_loss(v + eps, d=d) - toy.zero_one_loss(v - eps, d=d), 0.0, 20.0, xtol=1e-14)
    assert w == pytest.approx(kink, rel=1e-7)
    assert w > ws  # Theorem 4.3 holds in this objective
    # the second-order expansion w1* (1 + eps^2 / (3d)) describes the shift (not Theorem 4.4's 2/3 eps^2)
    assert (w / ws - 1) == pytest.approx(eps ** 2 / (3 * d), rel=0.02)
    assert (w / ws - 1) < 0.1 * (2 / 3 * eps ** 2)


def test_sam_with_zero_budget_is_st():
    assert toy.exact_sam(0.0) == pytest.approx(toy.w1_star(), rel=1e-6)


# --- (b) data, model, attack surface, analysis -----------------------------------------------------
def test_data_is_deterministic_and_has_the_models_statistics():
    a, b = toy.build_data(TaskOptions()), toy.build_data(TaskOptions())
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    x, label = a.train.tensors
    assert x.shape == (toy.N_TRAIN, toy.D + 1) and x.dtype == torch.float32 and len(a.test) == toy.N_TEST
    assert set(label.unique().tolist()) == {0, 1}
    y = (2 * label - 1).double()
    assert abs((x[:, 0].double() * y == 1).double().mean().item() - toy.P) < 0.01
    assert abs((x[:, 1:].double() * y[:, None]).mean().item() - toy.ETA) < 0.01
    assert not torch.equal(a.train.tensors[0][:100], a.test.tensors[0][:100])


def test_linear_logit_cross_entropy_is_the_logistic_loss():
    torch.manual_seed(0)
    model = toy.LinearLogit(toy.D + 1)
    x = torch.randn(64, toy.D + 1)
    label = torch.randint(0, 2, (64,))
    z = model.linear(x).squeeze(1)
    y = 2 * label.float() - 1
    ce = F.cross_entropy(model(x), label, reduction="none")
    assert torch.allclose(ce, F.softplus(-y * z), atol=1e-6)
    assert model.linear.bias is None


def test_attacks_never_touch_the_robust_feature():
    adapter = MODALITIES.get(TASK.modality)(TASK)
    model = toy.LinearLogit(toy.D + 1)
    with torch.no_grad():
        model.linear.weight.fill_(0.1)  # small: no example's loss saturates, so every gradient has a sign
    x, label = toy.sample(32, np.random.RandomState(3))
    batch = (torch.from_numpy(x), torch.from_numpy(label))
    adv = pgd(model, adapter, batch, norm="linf", eps=0.1, step_size=0.05, steps=5, random_init=True)
    delta = adv - batch[0]
    assert torch.equal(delta[:, 0], torch.zeros(32))
    # for positive weights the worst case moves every non-robust feature by -eps * y
    y = (2 * batch[1] - 1).float()
    assert torch.allclose(delta[:, 1:], -0.1 * y[:, None].expand(-1, toy.D), atol=1e-6)


def test_extra_metrics_report_the_ratio():
    model = toy.LinearLogit(toy.D + 1)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[2.0] + [0.5] * toy.D]))
    out = toy.extra_metrics(model, TaskOptions())
    assert out["w1"] == pytest.approx(2.0) and out["mean_w_nonrobust"] == pytest.approx(0.5)
    assert out["w1_ratio"] == pytest.approx(4.0)
    assert out["w1_star"] == pytest.approx(toy.w1_star())


def test_sweep_preset_and_defaults_are_valid():
    for method, params in TASK.sweeps["toy_main"]:
        assert method in METHODS
        plan_run("toy_features", method, method_params=params)  # validates params and attacks
    assert TASK.perturbable[0] is False and all(TASK.perturbable[1:]) and len(TASK.perturbable) == toy.D + 1


# --- (b) short trained runs against the exact optimum on the training sample -----------------------
def _trained_ratio(tmp_path, method, params, epochs):
    plan = plan_run("toy_features", method, method_params=params, overrides={"epochs": str(epochs)},
                    attacks=["fgsm:norm=linf,eps=0.2"])  # exact for a linear model
    rec = execute(plan, RecordStore(tmp_path), work_dir=tmp_path / "work", device=torch.device("cpu"),
                  progress=False, log=lambda *a: None)
    return rec


def test_st_and_at_training_reach_their_targets(tmp_path):
    st = _trained_ratio(tmp_path, "st", {}, epochs=4)
    at = _trained_ratio(tmp_path, "at", {"norm": "linf", "eps": 0.1, "steps": 3}, epochs=2)
    # the trainer lands on the sample's exact optimum; the sample's optimum is near the population's
    assert st["extra"]["w1_ratio"] == pytest.approx(toy.sample_optimum(0.0), rel=0.01)
    assert at["extra"]["w1_ratio"] == pytest.approx(toy.sample_optimum(0.1), rel=0.02)
    assert toy.sample_optimum(0.0) == pytest.approx(toy.w1_star(), rel=0.03)
    assert toy.sample_optimum(0.1) == pytest.approx(toy.w1_at(0.1), rel=0.03)
    # AT trades clean accuracy for robustness under the attack that erases the non-robust features
    assert at["metrics"]["clean"] < st["metrics"]["clean"]
    assert at["metrics"]["attacks"][0]["value"] > st["metrics"]["attacks"][0]["value"] + 5

    section = toy.report([st, at])
    assert "| ST (custom training) | 1 |" in section and "w1_AT(eps=0.1)" in section


# --- the leaderboard section -----------------------------------------------------------------------
def _fake(method, params, ratio, seed, label, version=toy.VERSION):
    return {"status": "complete", "task": {"name": "toy_features", "version": version},
            "method": {"name": method, "params": params, "label": label}, "seed": seed,
            "train": {}, "metrics": {"clean": 88.0},
            "extra": {"w1_ratio": ratio, "mean_w_nonrobust": 0.4}}


def test_report_tables(monkeypatch):
    monkeypatch.setattr(toy, "sample_optimum", lambda eps=0.0: 3.0 + eps)  # no data build here
    recs = [_fake("st", {}, 3.40, 0, "ST"), _fake("st", {}, 3.42, 1, "ST"),
            _fake("sam", {"rho": 1.0}, 3.20, 0, "SAM rho=1"), _fake("sam", {"rho": 1.0}, 3.22, 1, "SAM rho=1"),
            _fake("at", {"norm": "linf", "eps": 0.1}, 6.9, 0, "AT linf 0.1"),
            _fake("st", {}, 9.9, 0, "ST", version="0")]
    text = toy.report(recs)
    assert "### (a)" in text and "### (b)" in text
    assert f"{toy.w1_star():.4f}" in text and f"{toy.w1_at(0.15):.4f}" in text
    assert "| ST | 2 | 3.410 +- 0.014 | 3.000 |" in text
    assert "| AT linf 0.1 | 1 | 6.900 | 3.100 | w1_AT(eps=0.1) (Thm 4.2) | 6.931 |" in text
    assert "SAM rho=1: -5.87% (below ST)" in text
    assert "1 record(s) not shown" in text
    assert toy.report([]).count("no runs recorded yet") == 1
