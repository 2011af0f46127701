"""Measurement fidelity: evaluation subsets that represent the split, and an l2 PGD as strong as the field's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import fit
from reference import accuracy, clean_correct
from torch import nn
from torch.utils.data import Subset, TensorDataset

from suite import subsets
from suite.attacks.base import AttackSpec
from suite.config import TaskOptions
from suite.data.text import TextDataset
from suite.errors import UserError
from suite.evaluate import evaluate
from suite.modalities.image import ImageClassification

CPU = torch.device("cpu")
IMAGE = ImageClassification()


# --- subsets ----------------------------------------------------------------------------------------
def sorted_split(counts=(533, 533)):
    """A split sorted by label, like Rotten Tomatoes' test split (533 positive, then 533 negative)."""
    return np.concatenate([np.full(c, k) for k, c in enumerate(counts)])


@pytest.mark.parametrize("counts", [(533, 533), (5, 300, 60, 1000), (1,) * 10 + (50,)])
def test_every_prefix_of_the_stratified_order_is_class_balanced(counts):
    labels = sorted_split(counts)
    order = subsets.stratified_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation
    total = len(labels)
    for n in [n for n in list(range(1, 40)) + [100, 300, 777] if n <= total] + [total]:
        got = np.bincount(labels[order[:n]], minlength=len(counts))
        expected = n * np.array(counts) / total
        assert np.all(np.abs(got - expected) <= 1.0 + 1e-9), (n, got, expected)


def test_first_n_of_a_sorted_split_is_one_class_but_the_stratified_subset_is_not():
    labels = sorted_split()
    ds = TextDataset(["s"] * len(labels), labels.tolist())
    first = subsets.select(ds, 300, "first")
    strat = subsets.select(ds, 300, "stratified")
    assert set(labels[first]) == {0}
    assert np.bincount(labels[strat]).tolist() == [150, 150]


def test_subsets_are_nested_seeded_and_sorted():
    labels = np.random.RandomState(0).randint(0, 7, size=1000)
    ds = TensorDataset(torch.zeros(1000, 2), torch.from_numpy(labels))
    small, mid, big = subsets.nested(ds, [50, 300, 700], "stratified", seed=4)
    assert set(small) <= set(mid) <= set(big)
    assert np.array_equal(small, np.sort(small)) and len(set(big)) == 700
    assert np.array_equal(big, subsets.select(ds, 700, "stratified", seed=4))  # the same as selecting alone
    assert not np.array_equal(big, subsets.select(ds, 700, "stratified", seed=5))  # the seed matters
    assert np.array_equal(subsets.select(ds, 0), np.arange(1000))  # 0 = the whole split
    r1, r2 = subsets.nested(ds, [100, 400], "random", seed=1)
    assert set(r1) <= set(r2)


def test_labels_are_read_without_iterating_and_through_subsets():
    y = torch.tensor([3, 1, 2, 1])
    ds = TensorDataset(torch.zeros(4, 1), y)
    assert subsets.dataset_labels(ds).tolist() == [3, 1, 2, 1]
    assert subsets.dataset_labels(Subset(ds, [2, 0])).tolist() == [2, 3]
    assert subsets.dataset_labels(TextDataset(["a", "b"], [1, 0])).tolist() == [1, 0]
    masks = TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, 2, 2, dtype=torch.long))  # segmentation-like
    assert subsets.dataset_labels(masks) is None
    with pytest.raises(UserError, match="eval_subset=random"):
        subsets.select(masks, 2, "stratified")


# --- evaluation on subsets ----------------------------------------------------------------------------


def test_per_attack_example_counts_are_nested_paired_and_recorded(digits):
    model, test = digits
    specs = [AttackSpec.parse("pgd:norm=linf,eps=0.05,steps=3"), AttackSpec.parse("fgsm:eps=0.1,n=60")]
    m = evaluate(model, IMAGE, test, specs, batch_size=64, device=CPU, n_examples=200, subset_seed=0)
    labels = test.tensors[1].numpy()
    idx200 = subsets.select(test, 200, "stratified", 0)
    idx60 = subsets.select(test, 60, "stratified", 0)
    assert m["n"] == 200 and m["subset"] == {"strategy": "stratified", "seed": 0, "n": 200, "of": len(test),
                                             "indices_sha256": subsets.indices_hash(idx200)}
    pgd, fgsm = m["attacks"]
    assert pgd["n"] == 200 and fgsm["n"] == 60 and fgsm["subset"] == subsets.indices_hash(idx60)
    assert np.bincount(labels[idx60], minlength=10).min() >= 5  # 60 of 10 classes: ~6 each
    # independently: FGSM's accuracy on exactly those 60 examples
    x, y = test.tensors[0][idx60], test.tensors[1][idx60]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    adv = specs[1].build(IMAGE).run(model, (x[clean], y[clean])).adversarial
    with torch.no_grad():
        robust = model(adv).argmax(1) == y[clean]
    assert fgsm["attacked"] == int(clean.sum())
    assert fgsm["value"] == pytest.approx(100.0 * robust.sum().item() / 60)
    # the worst case is taken over the 60 examples every attack saw
    assert m["worst_case_n"] == 60 and m["worst_case"] <= fgsm["value"]
    # another model sees exactly the same examples: rows are paired
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    m2 = evaluate(other, IMAGE, test, specs, batch_size=64, device=CPU, n_examples=200, subset_seed=0)
    assert m2["subset"] == m["subset"] and m2["attacks"][1]["subset"] == fgsm["subset"]


def test_first_subset_is_refused_where_the_split_is_not_known_to_be_shuffled(tmp_path):
    from suite.records import RecordStore
    from suite.runner import execute, plan_run

    plan = plan_run("digits", "st", overrides={"eval_subset": "first", "eval_examples": "50", "epochs": "1"})
    with pytest.raises(UserError, match="not known to be in shuffled order"):
        execute(plan, RecordStore(tmp_path / "out"), work_dir=tmp_path / "runs", device=CPU, progress=False)


# --- l2 PGD: at least as strong as the common practice --------------------------------------------------
def reference_pgd_l2(model, x, y, eps, alpha, steps, gen):
    """PGD-L2 exactly as torchattacks writes it (random start: Gaussian direction, radius uniform in
    [0, eps]; normalized gradient steps; projection onto the ball, then the [0, 1] box). Written here
    so the test shares no code with the suite."""
    delta = torch.randn(x.shape, generator=gen)
    n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    r = torch.rand(n.shape, generator=gen)
    adv = (x + delta * r / n * eps).clamp(0, 1)
    for _ in range(steps):
        adv = adv.clone().requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (g,) = torch.autograd.grad(loss, adv)
        gn = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10
        adv = adv.detach() + alpha * g / gn
        d = adv - x
        dn = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        d = d * torch.clamp(eps / dn, max=1.0)
        adv = (x + d).clamp(0, 1).detach()
    return adv


@pytest.fixture(scope="module")
def digits_cnn():
    """A small CNN trained for a few seconds on digits (images, so the l2 ball is 64-dimensional)."""
    from tasks.digits import build_data

    data = build_data(TaskOptions())
    x, y = data.train.tensors
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 64, 10))
    return fit(model, lambda m: F.cross_entropy(m(x), y), steps=120, lr=3e-3), data.test


def test_l2_pgd_is_never_weaker_than_the_reference_implementation(digits_cnn):
    model, test = digits_cnn
    x, y = clean_correct(model, test)
    eps, steps = 0.5, 10
    ours, theirs = [], []
    for seed in range(5):
        torch.manual_seed(seed)
        adv = AttackSpec.parse(f"pgd:norm=l2,eps={eps},steps={steps}").build(IMAGE).run(model, (x, y)).adversarial
        ref = reference_pgd_l2(model, x, y, eps, eps / 4, steps, torch.Generator().manual_seed(seed))
        ours.append(accuracy(model, adv, y))
        theirs.append(accuracy(model, ref, y))
        assert ((adv - x).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    assert 0.05 < np.mean(theirs) < 0.95  # the budget is neither trivial nor overwhelming here
    # the same algorithm with other random numbers: equal up to sampling noise (1 point of ~350 examples)
    assert np.mean(ours) <= np.mean(theirs) + 0.01, (ours, theirs)


def test_the_old_uniform_in_ball_start_was_weaker(digits_cnn):
    """Why the start changed: a point uniform in the 64-dimensional ball sits at radius ~ eps U^(1/64),
    close to the boundary, and 10 steps from there leave more examples unbroken than the reference."""
    from suite.attacks.engine import random_start

    x = torch.zeros(20000, 1, 8, 8)
    r = random_start(x, "l2", 0.5, torch.Generator().manual_seed(0)).flatten(1).norm(dim=1)
    assert r.mean().item() == pytest.approx(0.25, abs=0.01)  # uniform radius in [0, eps]
    assert r.max().item() <= 0.5 + 1e-6


def test_restarts_only_add_broken_examples(digits_cnn):
    model, test = digits_cnn
    x, y = clean_correct(model, test)

    def robust(spec):
        torch.manual_seed(7)  # the first restart draws the same start in both runs
        res = AttackSpec.parse(spec).build(IMAGE).run(model, (x, y))
        with torch.no_grad():
            return model(res.adversarial).argmax(1) == y

    one = robust("pgd:norm=l2,eps=0.4,steps=5")
    five = robust("pgd:norm=l2,eps=0.4,steps=5,restarts=5")
    assert bool((five <= one).all())  # every example robust to 5 restarts was robust to the first
    assert five.sum() < one.sum()  # and the restarts do break more
    assert AttackSpec.parse("pgd:norm=l2,eps=0.4,restarts=5").build(IMAGE).label() == "PGD-10 l2 0.4, 5 restarts"


# --- corruption robustness through the runner ----------------------------------------------------------
def _corruption_task(tmp_path):
    """A 3x4x4 image task whose test images are the corrupted files' severity-3 block, written here."""
    from suite.config import DataBundle, Task, TrainConfig
    from suite.registry import TASKS

    rng = np.random.RandomState(0)
    n = 40
    labels = np.tile(np.arange(4), n // 4).astype(np.int64)
    clean = (rng.rand(n, 4, 4, 3) * 255).astype(np.uint8)
    folder = tmp_path / "data" / "TOY-C"
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", np.tile(labels, 5))
    fog = np.concatenate([clean] * 5)
    fog[2 * n:3 * n] = 255 - clean  # severity 3: inverted images
    np.save(folder / "fog.npy", fog)
    np.save(folder / "snow.npy", np.concatenate([clean] * 5))

    def build_data(options):
        x = torch.from_numpy(clean.transpose(0, 3, 1, 2).copy())
        y = torch.from_numpy(labels)
        return DataBundle(train=TensorDataset(x, y), test=TensorDataset(x, y))

    def build_model(options):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(48, 4))

    TASKS.register("_toy_c", Task(name="_toy_c", modality="image", version="1", num_classes=4, description="t",
                                  build_data=build_data, build_model=build_model, needs_data_dir=True,
                                  recipe=TrainConfig(epochs=1, batch_size=8, lr=0.01), corruption_data="TOY-C"))
    return clean, labels


def test_corruption_accuracy_is_recorded_per_corruption_and_averaged(tmp_path):
    from suite.config import TaskOptions as Opts
    from suite.records import RecordStore
    from suite.registry import TASKS
    from suite.runner import execute, plan_run

    clean, labels = _corruption_task(tmp_path)
    try:
        with pytest.raises(UserError, match="unknown corruption 'fgo'"):
            plan_run("_toy_c", "st", corruptions="fgo:3")
        plan = plan_run("_toy_c", "st", corruptions="fog:3,snow:1", attacks=[], analyses=[],
                        overrides={"eval_examples": "20"}, options=Opts(data_dir=tmp_path / "data"))
        rec = execute(plan, RecordStore(tmp_path / "out"), work_dir=tmp_path / "runs", device=CPU, progress=False)
        model = TASKS.get("_toy_c").build_model(None)
        model.load_state_dict(torch.load(tmp_path / "runs" / plan.run_id / "model.pt"))
        c = rec["metrics"]["corruptions"]
        idx = subsets.select(TensorDataset(torch.zeros(40, 0), torch.from_numpy(labels)), 20, "stratified", 0)
        acc = {}
        for name, images in (("fog:3", 255 - clean), ("snow:1", clean)):
            x = torch.from_numpy(images[idx].transpose(0, 3, 1, 2).copy()).float() / 255
            with torch.no_grad():
                acc[name] = 100.0 * (model(x).argmax(1) == torch.from_numpy(labels[idx])).float().mean().item()
        assert [(i["label"], i["n"]) for i in c["items"]] == [("fog:3", 20), ("snow:1", 20)]
        assert [i["value"] for i in c["items"]] == pytest.approx([acc["fog:3"], acc["snow:1"]])
        assert rec["metrics"]["corruption_mean"] == pytest.approx((acc["fog:3"] + acc["snow:1"]) / 2)
        assert c["items"][1]["value"] == pytest.approx(rec["metrics"]["clean"])  # snow:1 here is the clean images
        # a missing file is one line, before anything trains
        (tmp_path / "data" / "TOY-C" / "snow.npy").unlink()
        plan2 = plan_run("_toy_c", "st", seed=1, corruptions="snow:1", attacks=[], analyses=[],
                         options=Opts(data_dir=tmp_path / "data"))
        with pytest.raises(UserError, match="snow.npy is missing"):
            execute(plan2, RecordStore(tmp_path / "out"), work_dir=tmp_path / "runs", device=CPU, progress=False)
        assert not (tmp_path / "runs" / plan2.run_id).exists()
        from suite.leaderboard import render
        md = render(TASKS.get("_toy_c"), RecordStore(tmp_path / "out").load("_toy_c"))
        assert "| fog:3 | snow:1 | mean |" in md and "corruption mean" in md
    finally:
        TASKS.unregister("_toy_c")
