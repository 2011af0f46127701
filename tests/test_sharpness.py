"""Sharpness analyses against closed forms on quadratic losses, and their contract on real networks.

For a quadratic loss L(w) = 1/2 w^T A w + b^T w, with g = A w + b:
- the Hessian is A, so power iteration must find A's top eigenvalue;
- L(w + e) - L(w) = g.e + 1/2 e^T A e. Its max over ||e|| <= rho has closed forms in two cases:
  A = c I: rho ||g|| + c rho^2 / 2 (at e = rho g / ||g||); g = 0: rho^2 lambda_max(A) / 2;
- adaptive sharpness is the same problem in the coordinates u = e / |w|: the gradient becomes T g
  and the curvature T A T (T = diag |w|), so A = c T^-2 gives rho ||T g|| + c rho^2 / 2.
The quadratic is served by a tiny model whose "logits" are each example's loss and an adapter whose
loss averages them: the analyses only ever see the adapter, as with a real task.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from suite.analysis.sharpness import chosen_examples
from suite.errors import UserError
from suite.modalities.image import FeatureClassification, ImageClassification
from suite.plugins import load_builtins
from suite.registry import ANALYSES

load_builtins()


class Quadratic(nn.Module):
    """Example i's loss: 1/2 w^T A w + b^T w + x_i . w (x_i = 0 gives the same loss for every example)."""

    def __init__(self, A, b, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("A", A.clone())
        self.register_buffer("b", b.clone())

    def forward(self, x):
        w = self.w
        return (0.5 * w @ self.A @ w + self.b @ w + x @ w).unsqueeze(1)  # (N, 1)


class LossAdapter(FeatureClassification):
    """The model's single output column is the per-example loss."""

    def loss(self, output, batch, reduction="mean"):
        per = output[:, 0]
        return per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per


ADAPTER = LossAdapter()


def run(name, model, dataset=None, seed=0, adapter=ADAPTER, **params):
    if dataset is None:
        dataset = TensorDataset(torch.zeros(64, model.w.numel(), dtype=torch.float64), torch.zeros(64, dtype=torch.long))
    return ANALYSES.get(name)(adapter, **params).run(model, dataset, collate=None, device="cpu", seed=seed)


def spd(eigs, seed=0):
    """A symmetric matrix with the given eigenvalues in a random orthonormal basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def vec(*v):
    return torch.tensor(v, dtype=torch.float64)


EIGS = [4.0, 1.5, 1.0, -0.5, 0.2]


# --- closed forms ---------------------------------------------------------------------------------
def test_hessian_top_eigenvalue_of_a_quadratic():
    A = spd(EIGS)
    model = Quadratic(A, vec(0.3, -1, 2, 0, 0.5), vec(1, 2, -1, 0.5, 0.1))
    out = run("hessian", model, iters=100, tol=0.0)
    assert out["value"] == pytest.approx(4.0, rel=1e-6)
    assert out["examples"] == 64 and out["hvps"] == out["iters"]  # one batch of 64 (batch_size 128)
    fast = run("hessian", model, iters=100, tol=1e-10)  # the tolerance stops it early, still right
    assert fast["converged"] == 1.0 and fast["iters"] < 100
    assert fast["value"] == pytest.approx(4.0, rel=1e-6)
    # a flatter loss (A / 10) has a ten times smaller top eigenvalue
    flat = Quadratic(A / 10, vec(0.3, -1, 2, 0, 0.5), vec(1, 2, -1, 0.5, 0.1))
    assert run("hessian", flat, iters=100, tol=0.0)["value"] == pytest.approx(0.4, rel=1e-6)


def test_sharpness_closed_form_isotropic_curvature():
    c, rho = 2.0, 0.3
    w, b = vec(1, 2, -1, 0.5), vec(0.3, -1, 2, 0)
    model = Quadratic(c * torch.eye(4, dtype=torch.float64), b, w)
    g = c * w + b
    out = run("sharpness", model, rho=rho)  # defaults: 10 steps of 2 rho / 10 from e = 0
    assert out["value"] == pytest.approx(rho * g.norm().item() + 0.5 * c * rho ** 2, rel=1e-10)
    assert out["base_loss"] == pytest.approx((0.5 * c * w @ w + b @ w).item(), rel=1e-12)
    assert out["worst_loss"] == pytest.approx(out["base_loss"] + out["value"], rel=1e-12)
    assert out["passes"] == pytest.approx(10 + 1 / 3, rel=1e-12)  # one batch: 10 steps, one last forward


def test_sharpness_closed_form_at_a_minimum_needs_the_random_start():
    rho = 0.2
    A = spd(EIGS)
    w = vec(1, 2, -1, 0.5, 0.1)
    model = Quadratic(A, -(A @ w), w)  # g = A w + b = 0: w is the minimiser
    out = run("sharpness", model, rho=rho, random_init=True, steps=80, step_size=rho)
    assert out["value"] == pytest.approx(0.5 * rho ** 2 * 4.0, rel=1e-8)
    assert out["passes"] == pytest.approx(80 + 2 / 3, rel=1e-12)
    # from e = 0 the only ascent direction at a minimum is rounding noise: whatever it finds is a lower bound
    assert 0.0 <= run("sharpness", model, rho=rho)["value"] <= out["value"] * (1 + 1e-12)
    # a flatter loss: ten times smaller
    flat = Quadratic(A / 10, -(A @ w) / 10, w)
    flat_out = run("sharpness", flat, rho=rho, random_init=True, steps=80, step_size=rho)
    assert flat_out["value"] == pytest.approx(out["value"] / 10, rel=1e-8)


def test_adaptive_sharpness_closed_form_in_normalized_coordinates():
    c, rho = 3.0, 0.4
    w, b = vec(1.5, -2, 0.5, 0.25), vec(0.3, -1, 2, 0.1)
    t = w.abs()
    model = Quadratic(torch.diag(c / t ** 2), b, w)  # T A T = c I
    g = torch.diag(c / t ** 2) @ w + b
    expected = rho * (t * g).norm().item() + 0.5 * c * rho ** 2
    assert run("asharpness", model, rho=rho)["value"] == pytest.approx(expected, rel=1e-10)
    # with eta, T = |w| + eta: the same closed form for A = c T^-2
    eta = 0.1
    model_eta = Quadratic(torch.diag(c / (t + eta) ** 2), b, w)
    g_eta = torch.diag(c / (t + eta) ** 2) @ w + b
    expected_eta = rho * ((t + eta) * g_eta).norm().item() + 0.5 * c * rho ** 2
    assert run("asharpness", model_eta, rho=rho, eta=eta)["value"] == pytest.approx(expected_eta, rel=1e-10)
    # and plain sharpness of the same model is another number
    assert abs(run("sharpness", model, rho=rho)["value"] - expected) > 0.01


def test_m_sharpness_is_the_per_batch_max_averaged_over_batches():
    """Example i's loss c/2 ||w||^2 + x_i.w: a batch B has gradient c w + mean_B x, max rho ||g_B|| + c rho^2 / 2.
    50 examples in batches of 16: three of 16 and one of 2, weighted by size."""
    c, rho, n, m, seed = 1.5, 0.25, 50, 16, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g, dtype=torch.float64)
    data = TensorDataset(x, torch.zeros(80, dtype=torch.long))
    w = vec(1, -1, 0.5, 2)
    model = Quadratic(c * torch.eye(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), w)
    out = run("sharpness", model, data, seed=seed, rho=rho, examples=n, batch_size=m)

    chosen = chosen_examples(data, n, seed)  # the analysed examples, in batch order
    total, sizes = 0.0, []
    for start in range(0, n, m):
        idx = torch.as_tensor(chosen[start:start + m])
        g_b = c * w + x[idx].mean(0)
        total += len(idx) * (rho * g_b.norm().item() + 0.5 * c * rho ** 2)
        sizes.append(len(idx))
    assert sizes == [16, 16, 16, 2] and out["batches"] == 4 and out["examples"] == n
    assert out["value"] == pytest.approx(total / n, rel=1e-10)
    whole = run("sharpness", model, data, seed=seed, rho=rho, examples=n, batch_size=n)
    g_all = c * w + x[torch.as_tensor(chosen)].mean(0)
    assert whole["value"] == pytest.approx(rho * g_all.norm().item() + 0.5 * c * rho ** 2, rel=1e-10)
    assert whole["value"] < out["value"]  # averaging gradients over more examples shrinks ||g||


def trust_region_max(A, g, rho):
    """Exact max of g.e + e^T A e / 2 over ||e|| <= rho (the 'easy case'), by bisection on the multiplier."""
    lam, Q = np.linalg.eigh(A)
    gq = Q.T @ g
    lo, hi = max(lam.max(), 0.0) + 1e-12, lam.max() + np.abs(g).sum() / rho + 10
    for _ in range(200):  # ||(mu I - A)^-1 g|| = rho, mu > lambda_max
        mu = 0.5 * (lo + hi)
        if np.linalg.norm(gq / (mu - lam)) > rho:
            lo = mu
        else:
            hi = mu
    e = Q @ (gq / (mu - lam))
    return g @ e + 0.5 * e @ A @ e


def test_sharpness_is_a_close_lower_bound_of_the_exact_trust_region_max():
    A = spd(EIGS, seed=1).numpy()
    w, b = np.array([1, 2, -1, 0.5, 0.1]), np.array([0.3, -1, 2, 0, 0.5])
    for rho in (0.1, 0.5, 2.0):
        exact = trust_region_max(A, A @ w + b, rho)
        est = run("sharpness", Quadratic(torch.from_numpy(A), torch.from_numpy(b), torch.from_numpy(w)),
                  rho=rho)["value"]
        assert est <= exact * (1 + 1e-12)
        assert est >= 0.995 * exact, (rho, est, exact)


# --- the contract on a real network ---------------------------------------------------------------
def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(4 * 8 * 8, 10))


def image_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def trained_cnn():
    """A few SGD steps in train mode, so BatchNorm running statistics are not at their defaults."""
    model, data = cnn(), image_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.tensors
    for i in range(0, 96, 32):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
        opt.step()
    return model, data


ANALYSIS_PARAMS = [
    ("sharpness", {"rho": 0.1, "steps": 3, "examples": 64, "batch_size": 16}),
    ("sharpness", {"rho": 0.1, "steps": 3, "examples": 64, "batch_size": 16, "random_init": True}),
    ("asharpness", {"rho": 0.5, "steps": 3, "examples": 64, "batch_size": 32, "eta": 0.01}),
    ("hessian", {"iters": 4, "examples": 64, "batch_size": 32}),
]


@pytest.mark.parametrize("name,params", ANALYSIS_PARAMS)
def test_model_is_left_exactly_as_found_and_runs_repeat_exactly(name, params):
    model, data = trained_cnn()
    model.train()
    model[4].eval()  # mixed modes: each module's own mode must come back
    model[0].bias.requires_grad_(False)  # a frozen parameter: neither perturbed nor unfrozen
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()

    adapter = ImageClassification()
    first = run(name, model, data, seed=1, adapter=adapter, **params)
    after = model.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state)  # weights and BN buffers, bit for bit
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is not consumed

    again = run(name, model, data, seed=1, adapter=adapter, **params)
    assert again == first
    assert math.isfinite(first["value"]) and first["value"] > 0
    other = run(name, model, data, seed=2, adapter=adapter, **params)  # other examples, other start
    assert other["value"] != first["value"]


def test_analyses_use_eval_mode():
    """The same numbers whether the model arrives in train or eval mode (BatchNorm running statistics,
    dropout off), and not those of a train-mode evaluation."""
    model, data = trained_cnn()
    adapter = ImageClassification()
    params = {"rho": 0.1, "steps": 3, "examples": 64, "batch_size": 16}
    model.train()
    in_train = run("sharpness", model, data, adapter=adapter, **params)
    model.eval()
    in_eval = run("sharpness", model, data, adapter=adapter, **params)
    assert in_train == in_eval
    x, y = data.tensors
    chosen = torch.as_tensor(chosen_examples(data, 64, 0))
    with torch.no_grad():
        assert in_eval["base_loss"] == pytest.approx(
            nn.functional.cross_entropy(model(x[chosen]), y[chosen]).item(), rel=1e-5)


def relu_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def test_adaptive_sharpness_is_invariant_to_rescaling_a_relu_layer():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g))
    model = relu_mlp()
    scaled = copy.deepcopy(model)
    with torch.no_grad():  # layer 1 times 4, layer 2 divided by 4: the same function
        scaled[0].weight.mul_(4)
        scaled[0].bias.mul_(4)
        scaled[2].weight.div_(4)
    x = data.tensors[0]
    torch.testing.assert_close(scaled(x), model(x), rtol=1e-12, atol=1e-12)
    adapter = FeatureClassification()
    params = {"rho": 0.5, "steps": 5, "examples": 64, "batch_size": 32}
    a, a_scaled = run("asharpness", model, data, adapter=adapter, **params), run("asharpness", scaled, data,
                                                                                  adapter=adapter, **params)
    assert a_scaled["value"] == pytest.approx(a["value"], rel=1e-9)
    s, s_scaled = (run("sharpness", m, data, adapter=adapter, rho=0.1, steps=5, examples=64, batch_size=32)
                   for m in (model, scaled))
    assert abs(s_scaled["value"] / s["value"] - 1) > 0.1  # plain sharpness is not invariant
    h, h_scaled = (run("hessian", m, data, adapter=adapter, iters=30, examples=64) for m in (model, scaled))
    assert abs(h_scaled["value"] / h["value"] - 1) > 0.1  # nor is the Hessian


@pytest.mark.parametrize("name", ANALYSES.names())
def test_analyses_run_on_segmentation_logits(name):
    from suite.modalities.segmentation import Segmentation

    cls = ANALYSES.get(name)
    if cls.modalities and "segmentation" not in cls.modalities:
        pytest.skip(f"{name} does not declare the segmentation modality")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (32, 8, 8), generator=g)
    masks[:, 0] = 255
    data = TensorDataset(torch.rand(32, 1, 8, 8, generator=g), masks)
    small = {"examples": 32, "batch_size": 16, "iters": 3, "steps": 3}  # those of them it declares
    out = run(name, model, data, adapter=Segmentation(), **{k: v for k, v in small.items() if k in cls.params})
    assert math.isfinite(out["value"]) and out["value"] > 0


def test_hessian_does_not_depend_on_the_batch_size():
    model, data = trained_cnn()
    adapter = ImageClassification()
    a = run("hessian", model, data, adapter=adapter, iters=5, tol=0.0, examples=64, batch_size=64)
    b = run("hessian", model, data, adapter=adapter, iters=5, tol=0.0, examples=64, batch_size=16)
    assert b["value"] == pytest.approx(a["value"], rel=1e-4)  # float32 sums in another order
    assert a["hvps"] == 5 and b["hvps"] == 20


# --- declarations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,key,value", [
    ("sharpness", "rho", -0.1), ("sharpness", "steps", 0), ("sharpness", "examples", 0),
    ("sharpness", "batch_size", "1.5"), ("sharpness", "step_size", 0), ("asharpness", "eta", -1),
    ("hessian", "iters", 0), ("hessian", "tol", -1e-3), ("hessian", "rho", 0.1),
])
def test_invalid_parameters_raise_user_error_naming_them(name, key, value):
    with pytest.raises(UserError) as info:
        ANALYSES.get(name)(ImageClassification(), **{key: value})
    assert key in str(info.value)


def test_labels_and_empty_dataset():
    assert ANALYSES.get("sharpness")(None).label() == "sharpness rho=0.05"
    assert ANALYSES.get("asharpness")(None, rho="1/2").label() == "adaptive sharpness rho=0.5"
    assert ANALYSES.get("hessian")(None).label() == "Hessian top eigenvalue"
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(UserError, match="training split is empty"):
        run("sharpness", cnn(), empty, adapter=ImageClassification())
