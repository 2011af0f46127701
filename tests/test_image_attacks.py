"""Image attacks (AutoAttack via pyautoattack, CW-PGD, StAdv, Pixle), pre-attack sanity checks, and
the CIFAR-10-C loader."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from suite.attacks.base import AttackSpec
from suite.attacks.cw import cw_loss, cw_margin
from suite.attacks.sanity import check_model
from suite.attacks.stadv import flow_smoothness, warp
from suite.data import corruptions
from suite.errors import UserError
from suite.evaluate import evaluate
from suite.modalities.image import ImageClassification
from suite.registry import ATTACKS

CPU = torch.device("cpu")
IMAGE = ImageClassification()




def correct_batch(digits, n, start=0):
    """The first n test images the model classifies correctly (what evaluation hands an attack)."""
    model, test = digits
    x, y = test.tensors
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][start:start + n], y[ok][start:start + n]


def predictions_wrong(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


# --- AutoAttack through pyautoattack ---------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", 16 / 255), ("l2", 0.5)])
def test_apgd_ce_equals_the_package_called_directly(digits, norm, eps):
    from pyautoattack.autopgd_base import APGDAttack

    model, _ = digits
    x, y = correct_batch(digits, 48)
    torch.manual_seed(123)  # the global state must not matter
    res = AttackSpec.of("apgd_ce", norm=norm, eps=eps).build(IMAGE).run(model, (x, y))
    # the standard version's APGD-CE, straight from the package's class
    direct = APGDAttack(model, n_restarts=1, n_iter=100, eps=eps, norm={"linf": "Linf", "l2": "L2"}[norm],
                        eot_iter=1, rho=0.75, seed=0, device=CPU)
    direct.loss = "ce"
    expected = predictions_wrong(model, direct.perturb(x, y), y)
    assert torch.equal(res.success, expected)
    assert 0 < int(expected.sum()) < len(y)  # not vacuous: some broken, some robust


def test_apgd_is_the_package_custom_version_ce_then_t(digits):
    import pyautoattack

    model, _ = digits
    x, y = correct_batch(digits, 24)
    eps = 12 / 255
    res = AttackSpec.of("apgd", eps=eps).build(IMAGE).run(model, (x, y))
    aa = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"],
                                 device=CPU, seed=0)
    aa.verbose = False
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(y))
    expected = y_adv != y
    assert torch.equal(res.success, expected)
    ce = AttackSpec.of("apgd_ce", eps=eps).build(IMAGE).run(model, (x, y)).success
    assert bool((ce <= res.success).all())  # APGD-T only adds to what APGD-CE broke
    assert 0 < int(res.success.sum()) < len(y)


@pytest.mark.slow  # ~10 s alone, 30+ s on a busy machine: Square runs 5000 queries on what is left
def test_autoattack_standard_equals_the_package_called_directly(digits):
    import pyautoattack

    model, _ = digits
    x, y = correct_batch(digits, 12)
    spec = AttackSpec.parse("autoattack:norm=linf,eps=16/255")
    res = spec.build(IMAGE).run(model, (x, y))
    aa = pyautoattack.AutoAttack(model, norm="Linf", eps=16 / 255, version="standard", device=CPU, seed=0)
    aa.verbose = False
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(x))
    assert torch.equal(res.success, y_adv != y)
    assert res.adversarial is None  # the package's verdict is the result (see the module docstring)
    assert 0 < int(res.success.sum()) < len(y)


def test_autoattack_result_depends_only_on_batch_and_seed(digits):
    model, _ = digits
    x, y = correct_batch(digits, 32)
    attack = AttackSpec.of("apgd_ce", eps=16 / 255).build(IMAGE)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    flags = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        flags.append(attack.run(model, (x, y)).success)
        # the package reseeds torch; the suite restores the caller's random state around it
        after = torch.rand(3)
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.rand(3))
    assert torch.equal(flags[0], flags[1]) and flags[0].any()
    for p, g in zip(model.parameters(), grads):  # no gradients leaked into the weights
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
        assert p.requires_grad


def test_autoattack_components_and_labels():
    for name, label in [("autoattack", "AutoAttack linf 8/255"), ("apgd_ce", "APGD-CE linf 8/255"),
                        ("apgd", "APGD-CE+T linf 8/255"),
                        ("apgd_t", "APGD-T linf 8/255"), ("fab_t", "FAB-T linf 8/255"),
                        ("square", "Square-5000 linf 8/255")]:
        assert name in ATTACKS
        assert AttackSpec.parse(f"{name}:eps=8/255").build(IMAGE).label() == label
    assert AttackSpec.parse("autoattack:norm=l2,eps=0.5").build(IMAGE).label() == "AutoAttack l2 0.5"
    with pytest.raises(UserError, match="norm"):
        AttackSpec.parse("autoattack:norm=l1").build(IMAGE)


def test_autoattack_with_fewer_classes_and_single_examples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    for name in ("apgd_t", "fab_t"):  # 9 target classes would need 10; 4 are used
        res = AttackSpec.of(name, eps=0.3).build(IMAGE).run(model, (x, y))
        assert res.success.shape == (6,) and res.success.any()
    res = AttackSpec.of("apgd_ce", eps=0.3).build(IMAGE).run(model, (x[:1], y[:1]))
    assert res.success.shape == (1,)
    three = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with pytest.raises(UserError, match="at least 4 classes"):
        AttackSpec.of("apgd_t").build(IMAGE).run(three, (x, three(x).argmax(1)))


# --- CW-PGD ----------------------------------------------------------------------------------------
def test_cw_margin_and_loss_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 1.0, -2.0], [2.0, 7.0, 1.0], [0.5, 0.5, -1.0]])
    y = torch.tensor([1, 0, 0, 0])
    # max over the other classes minus the true class's logit
    margins = [2.0 - 3.0, 1.0 - 5.0, 7.0 - 2.0, 0.5 - 0.5]
    torch.testing.assert_close(cw_margin(logits, y), torch.tensor(margins), rtol=0, atol=0)
    torch.testing.assert_close(cw_loss(logits, y, 0.0), torch.tensor([-1.0, -4.0, 0.0, 0.0]), rtol=0, atol=0)
    torch.testing.assert_close(cw_loss(logits, y, 3.0), torch.tensor([-1.0, -4.0, 3.0, 0.0]), rtol=0, atol=0)
    torch.testing.assert_close(cw_loss(logits, y, None), torch.tensor(margins), rtol=0, atol=0)


@pytest.mark.parametrize("norm,eps", [("linf", 16 / 255), ("l2", 0.5)])
def test_cw_lowers_accuracy_within_its_budget(digits, norm, eps):
    model, _ = digits
    x, y = correct_batch(digits, 100)
    torch.manual_seed(0)
    attack = AttackSpec.of("cw", norm=norm, eps=eps).build(IMAGE)
    res = attack.run(model, (x, y))
    d = (res.adversarial - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert torch.equal(res.success, predictions_wrong(model, res.adversarial, y))
    assert res.success.float().mean() > 0.15  # 100% -> ~80% (linf 16/255), ~50% (l2 0.5)
    assert attack.label() == f"CW-PGD-50 {norm} {'16/255' if norm == 'linf' else '0.5'}"


# --- StAdv -----------------------------------------------------------------------------------------
def test_flow_smoothness_by_hand_on_3x3():
    eps = 1e-10
    # du = 1 at the centre: its 4 neighbour pairs differ by 1, counted from both sides (8 terms);
    # the other 16 ordered neighbour pairs of a 3x3 grid differ by 0 and add sqrt(eps) each
    flow = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    flow[0, 0, 1, 1] = 1.0
    assert flow_smoothness(flow).item() == pytest.approx(8 * math.sqrt(1 + eps) + 16 * math.sqrt(eps), rel=1e-12)
    # (du, dv) = (3, 4) at a corner: 2 neighbours at distance 5, both directions
    flow = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    flow[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    assert flow_smoothness(flow).item() == pytest.approx(4 * math.sqrt(25 + eps) + 20 * math.sqrt(eps), rel=1e-12)
    # a random flow against the paper's double sum, written as loops
    g = torch.Generator().manual_seed(0)
    flow = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    for n in range(2):
        total = 0.0
        for i in range(3):
            for j in range(3):
                for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    k, m = i + di, j + dj
                    if 0 <= k < 3 and 0 <= m < 3:
                        du = flow[n, 0, i, j] - flow[n, 0, k, m]
                        dv = flow[n, 1, i, j] - flow[n, 1, k, m]
                        total += math.sqrt(du.item() ** 2 + dv.item() ** 2 + eps)
        assert flow_smoothness(flow)[n].item() == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("size", [8, 32])
def test_zero_flow_reproduces_the_input_exactly_and_units_are_half_sides(size):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert torch.equal(warp(x, torch.zeros(2, 2, size, size)), x)
    # a flow of 2 / (W - 1) normalised units is one pixel: the image moves one column to the left
    # (each pixel reads its right neighbour; the last column reads the border)
    flow = torch.zeros(2, 2, size, size)
    flow[:, 0] = 2.0 / (size - 1)
    moved = warp(x, flow)
    torch.testing.assert_close(moved[..., :-1], x[..., 1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(moved[..., -1], x[..., -1], rtol=0, atol=1e-5)


def test_stadv_lowers_accuracy_within_its_flow_bound(digits):
    model, _ = digits
    x, y = correct_batch(digits, 64)
    attack = AttackSpec.of("stadv", bound=0.1, steps=50).build(IMAGE)
    assert attack.label() == "StAdv tau=0.05 flow<=0.1"
    success, x_adv, flow = attack.attack_flow(model, (x, y))
    assert flow.abs().max() <= 0.1 + 1e-7 and flow.abs().max() > 0.05  # bound respected and used
    torch.testing.assert_close(x_adv, warp(x, flow).clamp(0, 1), rtol=0, atol=1e-6)  # what the flow makes
    assert torch.equal(success, predictions_wrong(model, x_adv, y))
    assert success.float().mean() > 0.3  # 100% -> ~40% on this MLP
    zero = AttackSpec.of("stadv", bound=0).build(IMAGE).run(model, (x, y))
    assert torch.equal(zero.adversarial, x) and not zero.success.any()


# --- Pixle -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 10])
def test_pixle_changes_at_most_k_pixels_and_lowers_accuracy(digits, k):
    model, _ = digits
    x, y = correct_batch(digits, 64)
    torch.manual_seed(0)
    res = AttackSpec.of("pixle", pixels=k).build(IMAGE).run(model, (x, y))
    changed = (res.adversarial != x).any(dim=1).flatten(1).sum(1)  # locations, across channels
    assert (changed <= k).all()
    assert changed.max() == k  # the budget is used
    assert torch.equal(res.success, predictions_wrong(model, res.adversarial, y))
    assert res.success.float().mean() > {1: 0.05, 3: 0.2, 10: 0.6}[k]  # 100% -> ~85%, ~65%, ~10%
    assert res.extra["pixels_sum"] <= k * res.extra["pixels_count"]
    # every changed pixel holds a value of the clean image (Pixle moves pixels, it does not paint)
    values = set(x.flatten().tolist())
    assert set(res.adversarial[res.adversarial != x].tolist()) <= values


def test_pixle_on_colour_images_counts_locations_not_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    x = torch.rand(8, 3, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = AttackSpec.of("pixle", pixels=2, restarts=3, iterations=4).build(IMAGE).run(model, (x, y))
    diff = res.adversarial != x
    assert ((diff.any(1).flatten(1).sum(1)) <= 2).all()
    assert torch.equal(diff.any(1), diff.all(1))  # a moved pixel changes all its channels (random data)


# --- the whole evaluation: worst case over the new attacks -----------------------------------------
def test_evaluation_with_the_image_attacks(digits):
    model, test = digits
    specs = [AttackSpec.parse(s) for s in ("cw:eps=16/255,steps=20", "stadv:steps=20", "pixle:pixels=3,restarts=5",
                                           "apgd_ce:eps=16/255")]
    m = evaluate(model, IMAGE, test, specs, batch_size=120, device=CPU, n_examples=120)
    accs = [a["value"] for a in m["attacks"]]
    assert all(a < m["clean"] for a in accs)
    # the worst case is the norm-bounded family's (CW, APGD-CE); StAdv and Pixle are families of their own
    assert [a["threat"] for a in m["attacks"]] == ["norm-bounded", "spatial flow", "pixel rearrangement",
                                                   "norm-bounded"]
    assert m["worst_case"] <= min(accs[0], accs[3])
    fams = {f["threat"]: f["value"] for f in m["worst_by_threat"]}
    assert fams == {"norm-bounded": m["worst_case"], "spatial flow": accs[1], "pixel rearrangement": accs[2]}


# --- sanity checks ---------------------------------------------------------------------------------
class Wrap(nn.Module):
    def __init__(self, model, how):
        super().__init__()
        self.model, self.how = model, how

    def forward(self, x):
        if self.how == "softmax":
            return self.model(x).softmax(1)
        if self.how == "dropout":  # a dropout that ignores eval()
            return self.model(F.dropout(x, 0.3, training=True))
        if self.how == "detach":
            return self.model(x.detach())
        if self.how == "round":
            return self.model(torch.round(x * 16) / 16)
        return self.model(x)


@pytest.mark.parametrize("how,message", [
    ("softmax", "the model returns probabilities \\(rows sum to 1\\); attacks need logits"),
    ("dropout", "not deterministic in eval mode"),
    ("detach", "zero gradient"),
    ("round", "zero gradient"),
])
def test_sanity_checks_catch_broken_models(digits, how, message):
    model, test = digits
    batch = test.tensors[0][:32], test.tensors[1][:32]
    check_model(Wrap(model, "none").eval(), IMAGE, batch, CPU)  # the same model, unbroken, passes
    with pytest.raises(UserError, match=message):
        check_model(Wrap(model, how).eval(), IMAGE, batch, CPU)


def test_sanity_check_catches_a_surface_that_is_not_the_input(digits):
    model, test = digits

    class Inverted(ImageClassification):
        def surface(self, model, batch):  # e.g. a surface in another normalisation than the model's input
            return 1 - batch[0]

    batch = test.tensors[0][:32], test.tensors[1][:32]
    with pytest.raises(UserError, match="eps=0 changes"):
        check_model(model, Inverted(), batch, CPU)


def test_sanity_checks_run_before_attacks_in_evaluation(digits):
    model, test = digits
    with pytest.raises(UserError, match="probabilities"):
        evaluate(Wrap(model, "softmax"), IMAGE, test, [AttackSpec.parse("fgsm")], batch_size=64, device=CPU,
                 n_examples=64)


# --- CIFAR-10-C ------------------------------------------------------------------------------------
PER_SEVERITY = 4


def write_cifar_c(folder, names=("fog", "snow"), h=5, w=6):
    """Tiny files in the official layout: <name>.npy (5 x PER_SEVERITY, H, W, 3) uint8 + labels.npy."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 5 * PER_SEVERITY
    arrays = {}
    for k, name in enumerate(names):
        # pixel value encodes (corruption, row of the file, channel) so any slicing mistake shows
        a = np.zeros((n, h, w, 3), dtype=np.uint8)
        for i in range(n):
            for c in range(3):
                a[i, :, :, c] = (k * 100 + i * 4 + c) % 256
        a[:, 0, 1, 0] = 255  # one asymmetric pixel: catches an H/W transpose
        np.save(folder / f"{name}.npy", a)
        arrays[name] = a
    labels = np.tile(np.array([3, 1, 4, 1], dtype=np.int64), 5)
    np.save(folder / "labels.npy", labels)
    return arrays, labels


def test_load_corruption_slices_the_severity_block(tmp_path):
    arrays, _ = write_cifar_c(tmp_path)
    ds = corruptions.load_corruption(tmp_path, "fog", 3)
    x, y = ds.tensors
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == (PER_SEVERITY, 3, 5, 6)
    expected = torch.from_numpy(arrays["fog"][8:12]).permute(0, 3, 1, 2)
    assert torch.equal(x, expected)
    assert x[0, 1, 2, 3].item() == 8 * 4 + 1  # row 8 of the file (severity 3, first image), channel 1
    assert x[0, 0, 0, 1].item() == 255 and x[0, 0, 1, 0].item() == 8 * 4  # H and W not swapped
    assert y.tolist() == [3, 1, 4, 1]
    assert corruptions.block_labels(tmp_path).tolist() == [3, 1, 4, 1]
    xs, ys = corruptions.load_corruption(tmp_path, "snow", 5, indices=[2, 0]).tensors
    assert torch.equal(xs, torch.from_numpy(arrays["snow"][[18, 16]]).permute(0, 3, 1, 2))
    assert ys.tolist() == [4, 3]
    # the adapter turns the uint8 images into [0, 1] floats
    xf, _ = IMAGE.to_device((xs, ys), CPU)
    assert xf.dtype == torch.float32 and xf.max() == 1.0 and xf[0, 0, 2, 2].item() == pytest.approx((100 + 72) / 255)


def test_load_corruption_memory_maps(tmp_path, monkeypatch):
    write_cifar_c(tmp_path)
    modes = []
    real = np.load
    monkeypatch.setattr(corruptions.np, "load", lambda *a, **k: modes.append(k.get("mmap_mode")) or real(*a, **k))
    corruptions.load_corruption(tmp_path, "fog", 1, indices=[0])
    assert modes and all(m == "r" for m in modes)


def test_corruption_specs():
    assert len(corruptions.KNOWN) == 19 and len(corruptions.BENCHMARK) == 15 and len(set(corruptions.KNOWN)) == 19
    assert corruptions.parse_spec("paper") == [(n, 3) for n in ("brightness", "fog", "frost", "gaussian_blur",
                                                                 "impulse_noise", "jpeg_compression", "shot_noise",
                                                                 "snow", "speckle_noise")]
    assert len(corruptions.parse_spec("all")) == 75
    assert corruptions.parse_spec("all:3") == [(n, 3) for n in corruptions.BENCHMARK]
    assert corruptions.parse_spec("fog") == [("fog", s) for s in range(1, 6)]
    assert corruptions.parse_spec("fog:3, snow:1,fog:3") == [("fog", 3), ("snow", 1)]
    assert corruptions.parse_spec(["saturate:2", "spatter:5"]) == [("saturate", 2), ("spatter", 5)]
    with pytest.raises(UserError, match="Did you mean 'fog'"):
        corruptions.parse_spec("fogg:3")
    for bad in ("fog:6", "fog:x", "paper:2", ""):
        with pytest.raises(UserError):
            corruptions.parse_spec(bad)


def test_corruption_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"CIFAR-10-C not found in .*missing: expected fog\.npy \.\.\. labels\.npy; "
                                        r"download from https://zenodo\.org/record/2535967") as e:
        corruptions.load_corruption(tmp_path / "missing", "fog", 1)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="CIFAR-100-C not found .* https://zenodo.org/record/3555552"):
        corruptions.check_folder(tmp_path / "missing", [("snow", 1)], "CIFAR-100-C")
    write_cifar_c(tmp_path / "c", names=("fog",))
    with pytest.raises(UserError, match="snow.npy is missing"):
        corruptions.check_folder(tmp_path / "c", corruptions.parse_spec("fog:1,snow:1"))
    np.save(tmp_path / "c" / "snow.npy", np.zeros((20, 5, 6, 3), dtype=np.float32))
    with pytest.raises(UserError, match="expected uint8"):
        corruptions.load_corruption(tmp_path / "c", "snow", 1)
    np.save(tmp_path / "c" / "snow.npy", np.zeros((15, 5, 6, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="has shape"):
        corruptions.load_corruption(tmp_path / "c", "snow", 1)
    with pytest.raises(UserError, match="indices"):
        corruptions.load_corruption(tmp_path / "c", "fog", 1, indices=[PER_SEVERITY])
    (tmp_path / "c" / "labels.npy").unlink()
    with pytest.raises(UserError, match="labels.npy"):
        corruptions.load_corruption(tmp_path / "c", "fog", 1)


def test_corruption_datasets_checks_everything_up_front(tmp_path):
    write_cifar_c(tmp_path, names=("fog",))
    with pytest.raises(UserError, match="snow.npy"):
        corruptions.datasets(tmp_path, "fog,snow:2")  # fails before any dataset is built
    got = [(n, s, len(ds)) for n, s, ds in corruptions.datasets(tmp_path, "fog:2,fog:4")]
    assert got == [("fog", 2, PER_SEVERITY), ("fog", 4, PER_SEVERITY)]
