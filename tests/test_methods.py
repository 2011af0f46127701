"""Training methods against their published update rules, computed by hand in float64.

The hand computations use `torch.func` on copies of the parameters: they share no code with
`suite.methods` (only PyTorch's cross-entropy). Tolerances: the method and the hand version add the
same float64 numbers in a different order (e.g. the global gradient norm), so they agree to ~1e-15
relative; rtol=1e-10 leaves room for that and nothing else.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import ADAPTER, assert_params_close, data, one_step, step_and_check_bn_stats
from reference import global_norm, max_diff, mlp, params_of
from torch import nn
from torch.func import functional_call, grad

from suite.errors import UserError
from suite.plugins import load_builtins
from suite.registry import METHODS

load_builtins()


# --- helpers (data, one_step, assert_params_close, the BatchNorm check: tests/helpers.py) ----------


def hand_loss(model, params, x, y, reduction="mean"):
    return F.cross_entropy(functional_call(model, params, (x,)), y, reduction=reduction)


def hand_grad(model, params, x, y):
    return grad(lambda p: hand_loss(model, p, x, y))(params)


def hand_sam(model, x, y, rho, lr):
    w = params_of(model)
    g = hand_grad(model, w, x, y)
    norm = global_norm(g)
    w_adv = {n: w[n] + rho * g[n] / norm for n in w}
    g2 = hand_grad(model, w_adv, x, y)
    return {n: w[n] - lr * g2[n] for n in w}, {n: w[n] - lr * g[n] for n in w}


# --- SAM ------------------------------------------------------------------------------------------
def test_sam_step_matches_foret_et_al():
    rho, lr = 0.5, 0.3
    model, (x, y) = mlp(), data()
    expected, plain_sgd = hand_sam(model, x, y, rho, lr)
    actual = one_step(METHODS.get("sam")(rho=rho), model, (x, y), lr)
    assert_params_close(actual, expected)
    assert max_diff(expected, plain_sgd) > 1e-4  # the perturbation matters: the check can fail


def test_sam_rho_zero_is_sgd():
    model, (x, y) = mlp(), data()
    _, plain_sgd = hand_sam(model, x, y, 0.1, 0.3)
    actual = one_step(METHODS.get("sam")(rho=0.0), model, (x, y), 0.3)
    assert_params_close(actual, plain_sgd)


# --- ASAM -----------------------------------------------------------------------------------------
def test_asam_step_matches_kwon_et_al():
    rho, eta, lr = 0.7, 0.05, 0.3
    model, (x, y) = mlp(), data()
    w = params_of(model)
    g = hand_grad(model, w, x, y)
    # T = |w| + eta on weight tensors, identity on biases (the authors' implementation)
    t = {n: (w[n].abs() + eta) if n.endswith("weight") else torch.ones_like(w[n]) for n in w}
    norm_tg = global_norm({n: t[n] * g[n] for n in w})
    w_adv = {n: w[n] + rho * t[n] ** 2 * g[n] / norm_tg for n in w}
    g2 = hand_grad(model, w_adv, x, y)
    expected = {n: w[n] - lr * g2[n] for n in w}

    actual = one_step(METHODS.get("asam")(rho=rho, eta=eta), model, (x, y), lr)
    assert_params_close(actual, expected)
    # T really is applied (ASAM differs from SAM with the same radius) and biases are not scaled
    sam_like, _ = hand_sam(model, x, y, rho, lr)
    assert max_diff(expected, sam_like) > 1e-4
    t_all = {n: w[n].abs() + eta for n in w}
    norm_all = global_norm({n: t_all[n] * g[n] for n in w})
    w_adv_all = {n: w[n] + rho * t_all[n] ** 2 * g[n] / norm_all for n in w}
    g2_all = hand_grad(model, w_adv_all, x, y)
    assert max_diff(expected, {n: w[n] - lr * g2_all[n] for n in w}) > 1e-6


# --- ESAM -----------------------------------------------------------------------------------------
def test_esam_beta_gamma_one_is_sam_exactly():
    x, y = data()
    sam = one_step(METHODS.get("sam")(rho=0.4), mlp(), (x, y), 0.3)
    esam = one_step(METHODS.get("esam")(rho=0.4, beta=1.0, gamma=1.0), mlp(), (x, y), 0.3)
    for n in sam:
        assert torch.equal(esam[n], sam[n]), n  # bit for bit


@pytest.mark.parametrize("gamma", [0.5, 0.25])
def test_esam_sharpness_sensitive_data_selection(gamma):
    rho, lr = 0.5, 0.3
    model, (x, y) = mlp(), data(n=12)
    w = params_of(model)
    g = hand_grad(model, w, x, y)
    w_adv = {n: w[n] + rho / 1.0 * g[n] / global_norm(g) for n in w}
    with torch.no_grad():
        rise = hand_loss(model, w_adv, x, y, "none") - hand_loss(model, w, x, y, "none")
    k = math.floor(gamma * len(y))
    order = torch.argsort(rise, descending=True)
    assert (rise[order[k - 1]] - rise[order[k]]).item() > 1e-8  # no near-tie at the cut
    chosen = order[:k]
    g2 = hand_grad(model, w_adv, x[chosen], y[chosen])
    expected = {n: w[n] - lr * g2[n] for n in w}

    actual = one_step(METHODS.get("esam")(rho=rho, beta=1.0, gamma=gamma), model, (x, y), lr)
    assert_params_close(actual, expected)
    # selecting the k *smallest* rises (or all examples) would give another update
    low = order[-k:]
    g2_low = hand_grad(model, w_adv, x[low], y[low])
    assert max_diff(expected, {n: w[n] - lr * g2_low[n] for n in w}) > 1e-4
    sam, _ = hand_sam(model, x, y, rho, lr)
    assert max_diff(expected, sam) > 1e-4


def test_esam_keeps_two_examples_where_gamma_would_leave_one():
    """gamma * n < 2 would train the second pass on one example, which a BatchNorm layer that pools
    to 1x1 cannot (DeepLabV3's ASPP): ESAM keeps the two sharpest examples instead."""
    from torch import nn

    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    seen = []
    model[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    one_step(METHODS.get("esam")(rho=0.1, beta=1.0, gamma=0.25), model, (x, y), 0.1)  # 0.25 * 4 = 1 example
    assert seen[-1] == 2


def _mixed_mask_seed(n_tensors: int, beta: float) -> tuple[int, torch.Tensor]:
    for s in range(1000):
        torch.manual_seed(s)
        keep = torch.rand(n_tensors) < beta
        if 0 < int(keep.sum()) < n_tensors:
            return s, keep
    raise AssertionError("no seed with a mixed mask")


def test_esam_stochastic_weight_perturbation():
    rho, beta, lr = 0.5, 0.5, 0.3
    model, (x, y) = mlp(), data()
    names = [n for n, _ in model.named_parameters()]
    seed, keep = _mixed_mask_seed(len(names), beta)
    selected = {n for n, k in zip(names, keep.tolist()) if k}

    w = params_of(model)
    g = hand_grad(model, w, x, y)
    g_s = {n: g[n] for n in selected}
    norm_s = global_norm(g_s)
    w_adv = {n: w[n] + (rho / beta * g[n] / norm_s if n in selected else 0.0) for n in w}
    g2 = hand_grad(model, w_adv, x, y)
    expected = {n: w[n] - lr * g2[n] for n in w}

    torch.manual_seed(seed)  # the method draws the same mask, once, before its first forward
    actual = one_step(METHODS.get("esam")(rho=rho, beta=beta, gamma=1.0), model, (x, y), lr)
    assert_params_close(actual, expected)
    # every tensor is updated (the second gradient is taken for all), and the mask matters
    assert all((actual[n] - w[n]).abs().max() > 0 for n in w)
    w_adv_all = {n: w[n] + rho / beta * g[n] / global_norm(g) for n in w}
    g2_all = hand_grad(model, w_adv_all, x, y)
    assert max_diff(expected, {n: w[n] - lr * g2_all[n] for n in w}) > 1e-6
    assert all(p.requires_grad for p in model.parameters())  # SWP restores requires_grad


# --- BatchNorm rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", [
    ("sam", {"rho": 0.5}),
    ("asam", {"rho": 1.0}),
    ("esam", {"rho": 0.5, "beta": 1.0, "gamma": 0.5}),
    ("esam", {"rho": 0.5, "beta": 0.5, "gamma": 0.5}),
])
def test_ascent_methods_update_bn_stats_once_on_clean_batch(name, params):
    step = step_and_check_bn_stats(lambda: METHODS.get(name)(**params),
                                   lambda x, adapter: x,  # one train-mode forward at w on the clean batch
                                   adapter=ADAPTER)
    assert math.isfinite(step.out["loss"])
    assert not torch.equal(step.after["1.running_var"], step.before["1.running_var"])


@pytest.mark.parametrize("name,params,n_calls", [
    ("at", {"norm": "linf", "eps": 0.1, "steps": 3}, 4),
    ("at", {"norm": "l2", "eps": 0.5, "steps": 2}, 3),
    ("fast_at", {"norm": "linf", "eps": 0.1}, 2),
])
def test_adversarial_training_updates_bn_stats_once_on_final_adversarial_batch(name, params, n_calls):
    step = step_and_check_bn_stats(lambda: METHODS.get(name)(**params),
                                   lambda x, adapter: adapter.surfaces[-1])  # the final adversarial batch
    assert len(step.adapter.surfaces) == n_calls  # inner attack steps, then the training pass
    assert not torch.equal(step.adapter.surfaces[-1], step.x)


# --- adversarial training -------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_at_step_matches_hand_pgd(norm):
    eps, alpha, steps, lr = (0.1, 0.07, 2, 0.3) if norm == "linf" else (0.4, 0.3, 2, 0.3)
    model, (x, y) = mlp(), data(boundary=True)  # some coordinates on the box boundary: the clamp is exercised
    w = params_of(model)
    delta = torch.zeros_like(x)
    for _ in range(steps):
        gx = grad(lambda d: hand_loss(model, w, x + d, y, "sum"))(delta)
        if norm == "linf":
            delta = (delta + alpha * gx.sign()).clamp(-eps, eps)
        else:
            delta = delta + alpha * gx / gx.norm(dim=1, keepdim=True)
            delta = delta * torch.clamp(eps / delta.norm(dim=1, keepdim=True), max=1.0)
        delta = (x + delta).clamp(0, 1) - x
    x_adv = x + delta
    g = hand_grad(model, w, x_adv, y)
    expected = {n: w[n] - lr * g[n] for n in w}
    actual = one_step(METHODS.get("at")(norm=norm, eps=eps, step_size=alpha, steps=steps, random_start=False),
                      model, (x, y), lr)
    assert_params_close(actual, expected)
    g_clean = hand_grad(model, w, x, y)
    assert max_diff(expected, {n: w[n] - lr * g_clean[n] for n in w}) > 1e-4


def _train(method, seed=0, steps=5):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for i in range(steps):
        x, y = data(seed=10 + i, n=16)
        method.train_step(model, (x.float(), y), opt, ADAPTER)
    return model.state_dict()


@pytest.mark.parametrize("name,params", [
    ("at", {"eps": 0.0}), ("at", {"norm": "l2", "eps": 0.0, "steps": 3}), ("fast_at", {"eps": 0.0}),
])
def test_adversarial_training_with_zero_budget_is_standard_training(name, params):
    st = _train(METHODS.get("st")())
    at = _train(METHODS.get(name)(**params))
    assert st.keys() == at.keys()
    for k in st:
        assert torch.equal(st[k], at[k]), k
    moved = _train(METHODS.get(name)(**{**params, "eps": 0.1}))
    assert any(not torch.equal(st[k], moved[k]) for k in st)  # eps > 0 does change training


# --- declarations and validation ------------------------------------------------------------------
@pytest.mark.parametrize("name,params,cost", [
    ("st", {}, 1.0), ("sam", {}, 2.0), ("asam", {}, 2.0),
    ("at", {"steps": 7}, 8.0), ("at", {}, 11.0), ("fast_at", {}, 2.0),
    ("esam", {"beta": 1.0, "gamma": 1.0}, 2.0),  # exactly SAM: no ranking forward is run
    ("esam", {"gamma": 0.5}, 1.0 + 1.0 / 3.0 + 0.5),
])
def test_cost_declarations(name, params, cost):
    assert METHODS.get(name)(**params).cost() == pytest.approx(cost, rel=1e-12)


@pytest.mark.parametrize("name,key,value", [
    ("sam", "rho", -0.1), ("asam", "rho", -1), ("asam", "eta", -0.01), ("esam", "rho", "-0.05"),
    ("esam", "beta", 0.0), ("esam", "beta", 1.5), ("esam", "gamma", 0), ("esam", "gamma", "1.01"),
    ("at", "eps", -8 / 255), ("at", "eps", "-8/255"), ("at", "steps", 0), ("at", "steps", "2.5"),
    ("at", "norm", "l1"), ("at", "step_size", -0.1), ("fast_at", "eps", -0.1), ("fast_at", "norm", "L3"),
    ("fast_at", "alpha", "nan"), ("sam", "rho", "abc"),
])
def test_invalid_parameters_raise_user_error_naming_them(name, key, value):
    with pytest.raises(UserError) as info:
        METHODS.get(name)(**{key: value})
    assert key in str(info.value)


def test_unknown_parameter_is_user_error():
    with pytest.raises(UserError, match="radius"):
        METHODS.get("sam")(radius=0.1)


def test_fraction_budgets_parse():
    m = METHODS.get("at")(eps="8/255", step_size="2/255", steps="5")
    assert m.p["eps"] == 8 / 255 and m.p["step_size"] == 2 / 255 and m.p["steps"] == 5
    assert METHODS.get("fast_at")(eps=" 4 / 255 ").p["eps"] == 4 / 255
    assert METHODS.get("esam")(beta="1/2").p["beta"] == 0.5
    assert METHODS.get("at")(eps="8/255").pgd_step_size() == pytest.approx(2.5 * (8 / 255) / 10, rel=1e-15)
