"""TRADES, AWP and SAM-AT against their published update rules, computed by hand in float64.

As in tests/test_methods.py: the hand computations use `torch.func` on copies of the parameters and
share no code with `suite.methods` (only PyTorch's cross-entropy and softmax). The two add the same
float64 numbers in a different order, so they agree to ~1e-15 relative; rtol=1e-10 leaves room for
that and nothing else. Random starts are reproduced by seeding torch before both.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ADAPTER, RecordingAdapter, assert_params_close, one_step, sgd, step_and_check_bn_stats
from helpers import data as plain_data
from reference import ATOL, RTOL, bn_mlp, global_norm, max_diff, mlp, params_of
from torch import nn
from torch.func import functional_call, grad

from suite.errors import UserError
from suite.methods.base import StepContext
from suite.plugins import load_builtins
from suite.registry import METHODS

load_builtins()


# --- helpers (independent of suite.methods; one_step, sgd, assert_params_close and the BatchNorm
# check: tests/helpers.py)


def data(seed: int = 1, n: int = 12):
    """tests/helpers.py's data with some coordinates on the box boundary, so the [0, 1] clamp is exercised."""
    return plain_data(seed=seed, n=n, boundary=True)


def f(model, params, x):
    return functional_call(model, params, (x,))


def ce(model, params, x, y, reduction="mean"):
    return F.cross_entropy(f(model, params, x), y, reduction=reduction)


def hand_kl(p_logits, q_logits):
    """Per-example KL(softmax(p) || softmax(q)), written out."""
    return (torch.softmax(p_logits, 1) * (torch.log_softmax(p_logits, 1) - torch.log_softmax(q_logits, 1))).sum(1)


def hand_pgd(loss_sum, x, start, norm, eps, alpha, steps):
    """PGD from x + start on loss_sum(x_adv) -> scalar; box [0, 1]; one l2 norm per row.

    The l2 divisions carry the engine's documented 1e-12 guard: TRADES' KL gradients near its start
    are ~1e-4, where the guard alone moves the step by 1e-8 relative."""
    tiny = 1e-12

    def constrain(d):
        if norm == "linf":
            d = d.clamp(-eps, eps)
        else:
            d = d * torch.clamp(eps / (d.norm(dim=1, keepdim=True) + tiny), max=1.0)
        return (x + d).clamp(0, 1) - x

    delta = constrain(start)
    for _ in range(steps):
        gx = grad(lambda d: loss_sum(x + d))(delta)
        delta = delta + alpha * (gx.sign() if norm == "linf" else gx / (gx.norm(dim=1, keepdim=True) + tiny))
        delta = constrain(delta)
    return x + delta


def grads_of(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def sgd_update(w, g, lr):
    return {n: w[n] - lr * g[n] for n in w}


THREATS = {"linf": {"norm": "linf", "eps": 0.1, "step_size": 0.04, "steps": 3},
           "l2": {"norm": "l2", "eps": 0.4, "step_size": 0.25, "steps": 3}}


# --- TRADES ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_trades_step_matches_zhang_et_al(norm):
    beta, lr, threat = 6.0, 0.3, THREATS[norm]
    model, (x, y) = mlp(), data()
    w = params_of(model)
    torch.manual_seed(7)
    start = 0.001 * torch.randn_like(x)  # the authors' start, drawn as the method draws it
    target = f(model, w, x).detach()
    x_adv = hand_pgd(lambda xa: hand_kl(target, f(model, w, xa)).sum(), x, start, threat["norm"],
                     threat["eps"], threat["step_size"], threat["steps"])

    def trades_loss(p):
        out = f(model, p, x)
        return F.cross_entropy(out, y) + beta * hand_kl(out, f(model, p, x_adv)).mean()

    g = grad(trades_loss)(w)
    torch.manual_seed(7)
    actual = one_step(METHODS.get("trades")(beta=beta, **threat), model, (x, y), lr)
    assert_params_close(actual, sgd_update(w, g, lr))
    assert_params_close(grads_of(model), g)  # the optimizer saw exactly this gradient: nothing leaked in
    # the attack and the KL term matter, so the check can fail
    kl_start = hand_kl(target, f(model, w, x + start)).sum()
    assert hand_kl(target, f(model, w, x_adv)).sum() > 10 * kl_start
    assert max_diff(actual, sgd_update(w, grad(lambda p: ce(model, p, x, y))(w), lr)) > 1e-4


def test_trades_kl_is_per_example_over_classes_then_mean_over_pixels():
    from suite.methods.trades import kl_per_example

    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 4, 2, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 2, 5, generator=g,
                                                                                   dtype=torch.float64)
    per_pixel = hand_kl(p.permute(0, 2, 3, 1).reshape(-1, 4), q.permute(0, 2, 3, 1).reshape(-1, 4))
    torch.testing.assert_close(kl_per_example(p, q), per_pixel.view(3, 10).mean(1), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(kl_per_example(p[:, :, 0, 0], q[:, :, 0, 0]),
                               hand_kl(p[:, :, 0, 0], q[:, :, 0, 0]), rtol=RTOL, atol=ATOL)


def test_trades_on_segmentation_averages_the_pixel_kl_per_image():
    """Dense logits (N, C, H, W): KL over classes, averaged over an image's pixels (labelled or not:
    the KL needs no label), then over images; the CE is the adapter's (mean over valid pixels)."""
    from suite.modalities.segmentation import Segmentation

    beta, lr, eps, alpha, steps = 2.0, 0.3, 0.1, 0.04, 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1)).double()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 2, 5, 6, generator=g, dtype=torch.float64)
    mask = torch.randint(0, 3, (4, 5, 6), generator=g)
    mask[0, :2] = 255  # unlabelled pixels
    w = params_of(model)

    def pixel_kl_per_image(p_logits, q_logits):
        n, c = p_logits.shape[:2]
        flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, c)
        return hand_kl(flat(p_logits), flat(q_logits)).view(n, -1).mean(1)

    torch.manual_seed(7)
    start = 0.001 * torch.randn_like(x)
    target = f(model, w, x).detach()
    delta = ((start.clamp(-eps, eps) + x).clamp(0, 1) - x)
    for _ in range(steps):
        gx = grad(lambda d: pixel_kl_per_image(target, f(model, w, x + d)).sum())(delta)
        delta = ((delta + alpha * gx.sign()).clamp(-eps, eps) + x).clamp(0, 1) - x
    x_adv = x + delta

    def trades_loss(p):
        out = f(model, p, x)
        return F.cross_entropy(out, mask, ignore_index=255) + beta * pixel_kl_per_image(out, f(model, p, x_adv)).mean()

    expected = sgd_update(w, grad(trades_loss)(w), lr)
    torch.manual_seed(7)
    method = METHODS.get("trades")(beta=beta, norm="linf", eps=eps, step_size=alpha, steps=steps)
    actual = one_step(method, model, (x, mask), lr, adapter=Segmentation())
    assert_params_close(actual, expected)


def test_trades_beta_zero_eps_zero_is_standard_training_update():
    lr = 0.3
    model, (x, y) = mlp(), data()
    w = params_of(model)
    actual = one_step(METHODS.get("trades")(beta=0.0, eps=0.0), model, (x, y), lr)
    assert_params_close(actual, sgd_update(w, grad(lambda p: ce(model, p, x, y))(w), lr))


# --- AWP ------------------------------------------------------------------------------------------
def hand_at_batch(model, w, x, y, threat):
    return hand_pgd(lambda xa: ce(model, w, xa, y, "sum"), x, torch.zeros_like(x), threat["norm"],
                    threat["eps"], threat["step_size"], threat["steps"])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_awp_step_matches_wu_et_al(norm):
    gamma, lr, threat = 0.05, 0.3, THREATS[norm]
    model, (x, y) = mlp(), data()
    w = params_of(model)
    x_adv = hand_at_batch(model, w, x, y, threat)
    g1 = grad(lambda p: ce(model, p, x_adv, y))(w)
    # layer-wise: v_l = gamma ||w_l|| g_l / ||g_l|| on the 2-D weights only (not on biases)
    v = {n: gamma * w[n].norm() * g1[n] / g1[n].norm() if n.endswith("weight") else torch.zeros_like(w[n])
         for n in w}
    g2 = grad(lambda p: ce(model, p, x_adv, y))({n: w[n] + v[n] for n in w})
    expected = sgd_update(w, g2, lr)

    actual = one_step(METHODS.get("awp")(gamma=gamma, random_start=False, **threat), model, (x, y), lr)
    assert_params_close(actual, expected)
    assert_params_close(grads_of(model), g2)
    # the perturbation matters, and it is layer-wise and spares the biases (each could fail)
    assert max_diff(expected, sgd_update(w, g1, lr)) > 1e-5
    v_all = {n: gamma * w[n].norm() * g1[n] / g1[n].norm() for n in w}
    g_all = grad(lambda p: ce(model, p, x_adv, y))({n: w[n] + v_all[n] for n in w})
    assert max_diff(expected, sgd_update(w, g_all, lr)) > 1e-6
    v_glob = {n: gamma * global_norm({k: w[k] for k in w if k.endswith("weight")}) * g1[n]
              / global_norm({k: g1[k] for k in w if k.endswith("weight")}) if n.endswith("weight") else 0 * w[n]
              for n in w}
    g_glob = grad(lambda p: ce(model, p, x_adv, y))({n: w[n] + v_glob[n] for n in w})
    assert max_diff(expected, sgd_update(w, g_glob, lr)) > 1e-6


def test_awp_perturbs_only_multidimensional_weights():
    from suite.methods.awp import perturbed

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LayerNorm(2), nn.Linear(2, 3),
                          nn.Embedding(4, 2))
    chosen = {n for n, p in model.named_parameters() if perturbed(n, p)}
    assert chosen == {"0.weight", "4.weight", "5.weight"}


# --- SAM-AT ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("reattack", [False, True])
def test_sam_at_step_matches_hand_computation(norm, reattack):
    rho, lr, threat = 0.5, 0.3, THREATS[norm]
    model, (x, y) = mlp(), data()
    w = params_of(model)
    x_adv = hand_at_batch(model, w, x, y, threat)
    g1 = grad(lambda p: ce(model, p, x_adv, y))(w)
    w_e = {n: w[n] + rho * g1[n] / global_norm(g1) for n in w}
    x_second = hand_at_batch(model, w_e, x, y, threat) if reattack else x_adv
    g2 = grad(lambda p: ce(model, p, x_second, y))(w_e)
    expected = sgd_update(w, g2, lr)

    method = METHODS.get("sam_at")(rho=rho, random_start=False, reattack=reattack, **threat)
    actual = one_step(method, model, (x, y), lr)
    assert_params_close(actual, expected)
    assert_params_close(grads_of(model), g2)
    assert max_diff(expected, sgd_update(w, g1, lr)) > 1e-4  # the weight ascent matters
    other = hand_at_batch(model, w, x, y, threat) if reattack else hand_at_batch(model, w_e, x, y, threat)
    g_other = grad(lambda p: ce(model, p, other, y))(w_e)
    assert max_diff(expected, sgd_update(w, g_other, lr)) > 1e-6  # so does which x' the second pass sees


# --- BatchNorm rule, no leaks, exact restore --------------------------------------------------------


ROBUST = [
    ("trades", {"norm": "linf", "eps": 0.1, "steps": 3}),
    ("awp", {"norm": "linf", "eps": 0.1, "steps": 3, "gamma": 0.05}),
    ("sam_at", {"norm": "l2", "eps": 0.5, "steps": 3, "rho": 0.5}),
    ("sam_at", {"norm": "linf", "eps": 0.1, "steps": 3, "rho": 0.5, "reattack": True}),
]


def _attack_calls(name, params):
    """Indices of the attack's forward_surface calls, and of the pass that should update BN stats."""
    steps = params["steps"]
    if name == "trades":  # the clean pass updates them (it does not go through forward_surface)
        return list(range(steps)), None
    if params.get("reattack"):
        return list(range(steps)) + list(range(steps + 1, 2 * steps + 1)), steps
    return list(range(steps)), steps


@pytest.mark.parametrize("name,params", ROBUST)
def test_bn_running_stats_updated_exactly_once_per_step(name, params):
    _, updating = _attack_calls(name, params)
    # one train-mode forward at w: clean for TRADES, the adversarial batch otherwise
    step = step_and_check_bn_stats(lambda: METHODS.get(name)(**params),
                                   lambda x, adapter: x if updating is None else adapter.calls[updating]["x"],
                                   boundary=True)  # this file's data()
    assert not torch.equal(step.adapter.calls[-1]["x"], step.x)


@pytest.mark.parametrize("name,params", ROBUST)
def test_inner_attacks_run_without_parameter_gradients_and_leave_grad_alone(name, params):
    model, (x, y) = bn_mlp(), data(n=16)
    for p in model.parameters():
        p.grad = torch.full_like(p, 123.0)  # stale gradients: the method must clear them, not mix them in
    adapter = RecordingAdapter()
    torch.manual_seed(0)
    METHODS.get(name)(**params).train_step(model, (x, y), sgd(model, 0.3), adapter)
    attack, _ = _attack_calls(name, params)
    assert len(adapter.calls) == len(attack) + (1 if name == "trades" else 2)
    for i, call in enumerate(adapter.calls):
        if i in attack:
            assert not call["param_grad_on"], i
            assert all(g is None for g in call["grads"]), i  # cleared before, untouched by the attack
        else:
            assert call["param_grad_on"], i
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name,params", [r for r in ROBUST if r[0] != "trades"])
def test_weights_restored_exactly_after_the_perturbed_pass(name, params):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))  # float32
    x, y = data(n=16)
    w = params_of(model)
    adapter = RecordingAdapter()
    torch.manual_seed(0)
    METHODS.get(name)(**params).train_step(model, (x.float(), y), sgd(model, 0.0), adapter)
    second = adapter.calls[-1]["weights"]
    assert any(not torch.equal(a, b) for a, b in zip(second, w.values()))  # the weights were perturbed
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), w[n]), n  # and are back bit for bit (lr = 0)


def _train_seq(methods, seed=0):
    """One step per (method, epoch) pair on one model and optimizer, as the trainer would run them."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for i, (method, epoch) in enumerate(methods):
        x, y = data(seed=10 + i, n=16)
        method.train_step(model, (x.float(), y), opt, ADAPTER, StepContext(epoch=epoch))
    return model.state_dict()


def _train(method, seed=0, steps=4):
    return _train_seq([(method, 0)] * steps, seed)


@pytest.mark.parametrize("name,params", [("awp", {"gamma": 0.0}), ("sam_at", {"rho": 0.0})])
def test_zero_weight_perturbation_is_pgd_at_bit_for_bit(name, params):
    threat = {"norm": "linf", "eps": 0.1, "steps": 3}
    at = _train(METHODS.get("at")(**threat))
    same = _train(METHODS.get(name)(**params, **threat))
    assert all(torch.equal(at[k], same[k]) for k in at)
    moved = _train(METHODS.get(name)(**{k: 0.5 for k in params}, **threat))
    assert any(not torch.equal(at[k], moved[k]) for k in at)


def test_awp_warmup_steps_are_pgd_at_then_awp_bit_for_bit():
    threat = {"norm": "linf", "eps": 0.1, "steps": 3}
    at, awp = METHODS.get("at")(**threat), METHODS.get("awp")(gamma=0.5, **threat)
    warm = METHODS.get("awp")(gamma=0.5, warmup=2, **threat)
    epochs = [0, 1, 2, 3]
    expected = _train_seq([(at, 0), (at, 1), (awp, 2), (awp, 3)])
    actual = _train_seq([(warm, e) for e in epochs])
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    no_warmup = _train_seq([(awp, e) for e in epochs])
    assert any(not torch.equal(no_warmup[k], actual[k]) for k in actual)


def _published_awp_records() -> list[dict]:
    """The digits AWP records published before `warmup` existed."""
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "leaderboards" / "records" / "digits"
    records = [r for r in (json.loads(f.read_text()) for f in sorted(folder.glob("*.json")))
               if r["method"]["name"] == "awp"]
    assert records
    return records


def test_awp_warmup_keeps_earlier_run_ids():
    # the planner still names the records published before `warmup` existed with their ids
    from suite.runner import plan_run

    records = _published_awp_records()
    for r in records:
        assert "warmup" not in r["method"]["params"]
        plan = plan_run("digits", "awp", method_params=r["method"]["params"], seed=r["seed"])
        assert plan.run_id == r["run_id"]
        warm = plan_run("digits", "awp", method_params={**r["method"]["params"], "warmup": 5}, seed=r["seed"])
        assert warm.run_id != r["run_id"] and warm.identity["method_params"]["warmup"] == 5
        assert warm.method.label() == r["method"]["label"] + " warmup=5"


def test_a_new_awp_record_groups_with_those_made_before_warmup_existed(tmp_path):
    from suite.leaderboard import _config_key
    from suite.records import RecordStore
    from suite.runner import execute, plan_run

    old = _published_awp_records()[0]
    plan = plan_run("digits", "awp", method_params=old["method"]["params"], seed=7, attacks=[], analyses=[],
                    overrides={"epochs": "1", "train_examples": "64", "eval_examples": "20"})
    rec = execute(plan, RecordStore(tmp_path / "out"), work_dir=tmp_path / "runs", device=torch.device("cpu"),
                  progress=False, log=lambda *a: None)
    assert rec["status"] == "complete" and "warmup" not in rec["method"]["params"]
    # same configuration as the old record once the settings this tiny run changed are put back
    same = {**old, "train": rec["train"], "evaluation": rec["evaluation"], "metrics": rec["metrics"]}
    assert _config_key(rec) == _config_key(same)


# --- declarations and validation ------------------------------------------------------------------
@pytest.mark.parametrize("name,params,cost", [
    ("trades", {}, 12.0), ("trades", {"steps": 5}, 7.0),
    ("awp", {}, 12.0), ("awp", {"steps": 5}, 7.0),
    ("sam_at", {}, 12.0), ("sam_at", {"steps": 5, "reattack": True}, 12.0),
])
def test_cost_declarations(name, params, cost):
    assert METHODS.get(name)(**params).cost() == pytest.approx(cost, rel=1e-12)


def test_defaults_and_labels():
    t = METHODS.get("trades")()
    assert t.p["beta"] == 6.0 and t.p["eps"] == 8 / 255 and t.pgd_step_size() == pytest.approx(2 / 255, rel=1e-12)
    assert t.label() == "TRADES beta=6 linf 8/255 (PGD-10)"
    assert METHODS.get("awp")().p["gamma"] == 5e-3
    assert METHODS.get("awp")().label() == "AWP gamma=0.005 linf 8/255 (PGD-10)"
    assert METHODS.get("sam_at")(reattack="true").label() == "SAM-AT rho=0.05 linf 8/255 (PGD-10) reattack"


@pytest.mark.parametrize("name,key,value", [
    ("trades", "beta", -1), ("trades", "eps", "-8/255"), ("trades", "steps", 0), ("trades", "norm", "l1"),
    ("awp", "gamma", -0.01), ("awp", "steps", "2.5"), ("awp", "step_size", -1), ("awp", "warmup", -1),
    ("awp", "warmup", "1.5"),
    ("sam_at", "rho", "abc"), ("sam_at", "reattack", "maybe"), ("sam_at", "eps", "nan"),
])
def test_invalid_parameters_raise_user_error_naming_them(name, key, value):
    with pytest.raises(UserError) as info:
        METHODS.get(name)(**{key: value})
    assert key in str(info.value)


# --- they train, and buy robustness, on real data -------------------------------------------------
def _digits():
    from tasks.digits import load_digits_arrays, split_indices

    x, y = load_digits_arrays()
    tr, te = split_indices(y)
    return (torch.from_numpy(x[tr]), torch.from_numpy(y[tr])), (torch.from_numpy(x[te]), torch.from_numpy(y[te]))


def _fit(name, params, train, epochs, seed=0):
    from tasks.digits import SmallCNN

    torch.manual_seed(seed)
    model = SmallCNN(width=8)
    method = METHODS.get(name)(**params)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = train
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        total = 0.0
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            total += method.train_step(model, (x[idx], y[idx]), opt, ADAPTER)["loss"] * len(idx)
        losses.append(total / len(y))
    return model, losses


def _robust_accuracy(model, test, eps):
    from suite.attacks.engine import pgd

    model.eval()
    x, y = test
    x_adv = pgd(model, ADAPTER, (x, y), norm="linf", eps=eps, step_size=eps / 4, steps=10, random_init=False)
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item(), (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_robust_methods_train_on_digits_and_beat_st_under_pgd():
    train, test = _digits()
    epochs, eps = 4, 16 / 255
    threat = {"norm": "linf", "eps": eps, "steps": 3, "step_size": 8 / 255}
    st, _ = _fit("st", {}, train, epochs)
    st_robust, _ = _robust_accuracy(st, test, eps)
    for name, params in [("trades", {"beta": 6.0}), ("awp", {"gamma": 5e-3}), ("sam_at", {"rho": 0.05})]:
        model, losses = _fit(name, {**params, **threat}, train, epochs)
        robust, clean = _robust_accuracy(model, test, eps)
        assert losses[-1] < 0.6 * losses[0], (name, losses)
        assert clean > 0.8, (name, clean)
        assert robust > st_robust + 0.05, (name, robust, st_robust)
