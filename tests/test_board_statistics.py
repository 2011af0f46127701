"""Boards a reader can trust: per-example outcomes in records, intervals, paired tests against ST,
worst cases within one threat family, collapsed models flagged, headline columns."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from suite import outcomes
from suite import stats
from suite.attacks.base import Attack, AttackResult, AttackSpec
from suite.evaluate import evaluate
from suite.leaderboard import WORST, _limits, _spec_matches, build_rows, plot, plot_budgets, render
from suite.modalities.image import ImageClassification
from suite.modalities.segmentation import confusion_matrices, metrics_from_confusion
from suite.records import RecordError, RecordStore, run_id, validate
from suite.registry import ATTACKS, TASKS

CPU = torch.device("cpu")
IMAGE = ImageClassification()


# --- the statistics, each against a hand-checked case --------------------------------------------------

def test_mcnemar_exact_p_value_of_a_small_table_by_hand():
    # 20 examples: 12 right for both, 1 right only for A, 6 right only for B, 1 wrong for both
    a = np.array([1] * 12 + [1] + [0] * 6 + [0], dtype=bool)
    b = np.array([1] * 12 + [0] + [1] * 6 + [0], dtype=bool)
    # discordant pairs 1 and 6: p = 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128
    assert stats.mcnemar_exact(a, b) == pytest.approx(16 / 128)
    assert stats.mcnemar_exact(a, a) == 1.0


@pytest.mark.parametrize("k, n", [(56, 100), (0, 30), (359, 359), (273, 1000)])
def test_wilson_interval_is_the_closed_form(k, n):
    z = norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = stats.wilson(k, n)
    assert lo == pytest.approx(100 * max(0.0, centre - half), abs=1e-9)
    assert hi == pytest.approx(100 * min(1.0, centre + half), abs=1e-9)


def test_interval_of_a_mean_over_seeds_is_the_t_interval():
    m, s, lo, hi = stats.mean_interval([54.0, 55.0, 56.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) * std / sqrt(3), std = 1
    assert (m, s) == (55.0, 1.0) and (lo, hi) == pytest.approx((55.0 - half, 55.0 + half))


def _outcomes(rng, n, p):
    return rng.random(n) < p


def test_paired_interval_excludes_zero_for_a_better_row_and_is_zero_for_identical_outcomes():
    rng = np.random.default_rng(0)
    base = _outcomes(rng, 1000, 0.5)
    better = base.copy()
    better[np.flatnonzero(~base)[:60]] = True  # 60 more examples right, none lost: +6 points
    d = stats.paired_difference("correct", better[None], base[None])
    assert d.value == pytest.approx(6.0) and d.low > 0 and d.significant
    assert d.p_mcnemar == pytest.approx(2 * 0.5 ** 60)
    same = stats.paired_difference("correct", base[None], base[None])
    assert (same.value, same.low, same.high, same.p_mcnemar) == (0.0, 0.0, 0.0, 1.0) and not same.significant


def test_paired_interval_over_seeds_includes_zero_when_the_seeds_disagree():
    rng = np.random.default_rng(1)
    n = 2000
    row = np.stack([_outcomes(rng, n, p) for p in (0.45, 0.55, 0.65)])   # seeds spread over 20 points
    base = np.stack([_outcomes(rng, n, p) for p in (0.50, 0.55, 0.60)])
    d = stats.paired_difference("correct", row, base)
    assert d.low < 0 < d.high and d.p_mcnemar is None
    # the same spread on one seed each would look significant: the seeds are what make it wide
    assert d.high - d.low > 3 * (stats.paired_difference("correct", row[2:], base[2:]).high
                                 - stats.paired_difference("correct", row[2:], base[2:]).low) / 2


def test_segmentation_counts_give_the_adapters_metrics_and_a_paired_miou_test():
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 4, (6, 8, 8), generator=g)
    mask[0, :2] = 255
    pred = torch.where(torch.rand(6, 8, 8, generator=g) < 0.7, mask.clamp(max=3), torch.randint(0, 4, (6, 8, 8), generator=g))
    cm = confusion_matrices(pred, mask, 4)
    from suite.modalities.segmentation import Segmentation
    counts = Segmentation().outcome_array(cm)
    want = metrics_from_confusion(cm.sum(0))
    got = outcomes.seg_metrics(counts)
    for key in ("mIoU", "pixel_accuracy", "mean_class_accuracy"):
        assert got[key] == pytest.approx(want[key])
    assert outcomes.example_score("class_counts", counts) == pytest.approx(Segmentation().example_score(cm).double().numpy())
    d = stats.paired_difference("class_counts", counts[None], counts[None])
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)


def test_a_constant_classifier_is_collapsed_and_a_chance_level_one_too():
    assert "99.0%" in stats.collapsed("correct", [np.array([990, 10])], [(500, 1000)], [0.5])
    assert "not above chance" in stats.collapsed("correct", [np.array([600, 400])], [(520, 1000)], [0.5])
    assert stats.collapsed("correct", [np.array([600, 400])], [(800, 1000)], [0.5]) is None


# --- evaluation writes per-example outcomes, worst cases within a threat family -----------------------

class _BreakAll(Attack):
    """A test attack of another threat family that breaks every example it is given."""
    name = "_break_all"
    threat = "test family"
    modalities = ("image",)

    def label(self):
        return "BreakAll"

    def run(self, model, batch):
        return AttackResult(success=torch.ones(len(batch[1]), dtype=torch.bool))


@pytest.fixture
def break_all():
    ATTACKS.register("_break_all", _BreakAll)
    yield
    ATTACKS.unregister("_break_all")


def test_worst_case_ignores_another_threat_family_that_breaks_every_example(digits, break_all):
    model, test = digits
    specs = [AttackSpec.parse("pgd:norm=linf,eps=0.05,steps=3"), AttackSpec.parse("fgsm:eps=0.1,n=100"),
             AttackSpec.parse("_break_all:n=50")]
    m = evaluate(model, IMAGE, test, specs, batch_size=64, device=CPU, n_examples=200, subset_seed=0)
    pgd, fgsm, broken = m["attacks"]
    assert broken["value"] == 0.0 and broken["threat"] == "test family"
    # the worst case: pgd and fgsm only, over the 100 examples both saw; never 0 because of BreakAll
    assert m["worst_case_threat"] == "norm-bounded" and m["worst_case_n"] == 100
    assert 0 < m["worst_case"] <= min(fgsm["value"], 100.0)
    fams = {f["threat"]: f for f in m["worst_by_threat"]}
    assert fams["test family"]["value"] == 0.0 and fams["norm-bounded"]["value"] == m["worst_case"]
    # the outcomes reproduce every number, and the worst case per example
    out = outcomes.Outcomes.from_json(m["outcomes"])
    assert out.n == 200 and len(out.index) == 200 and out.split_size == len(test)
    cover, worst = out.column(WORST)
    assert cover.sum() == 100 and outcomes.metric_value("correct", worst[cover]) == pytest.approx(m["worst_case"])
    assert sum(m["predictions"]["histogram"]) == 200 and len(m["predictions"]["histogram"]) == 10
    with torch.no_grad():
        x, y = test.tensors[0][out.index], test.tensors[1][out.index]
        pred = model(x).argmax(1).numpy()
    assert np.array_equal(out.predicted, pred) and np.array_equal(out.clean, pred == y.numpy())
    assert out.labels.tolist() == np.bincount(y.numpy(), minlength=10).tolist()


def _record(metrics, method="st", seed=0, label=None):
    ident = {"task": "digits", "method": method, "seed": seed}
    return {
        "schema": 2, "run_id": run_id(ident), "status": "complete", "error": None,
        "task": {"name": "digits", "version": "1", "modality": "image"}, "model": None,
        "method": {"name": method, "params": {}, "label": label or method.upper()},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "schedule": "step"},
        "seed": seed, "evaluation": {"attacks": [{"name": "pgd", "eps": 0.05}], "n_examples": 0},
        "metrics": metrics,
        "cost": {"train_time_s": 10.0, "steps": 100, "passes_per_step": 1.0, "device": "cpu"},
        "provenance": {},
    }


def test_outcomes_are_validated_when_written_and_loaded(digits, tmp_path):
    model, test = digits
    m = evaluate(model, IMAGE, test, [AttackSpec.parse("pgd:norm=linf,eps=0.05,steps=3")], batch_size=64,
                 device=CPU, n_examples=100, subset_seed=0)
    rec = _record(m)
    store = RecordStore(tmp_path)
    path = store.write(rec)
    assert store.read(path)["metrics"]["outcomes"] == m["outcomes"]
    assert len(json.dumps(m["outcomes"])) < 1500  # compact: packed bits
    # one flipped outcome no longer gives the stated accuracy: refused on write and on load
    bad = copy.deepcopy(rec)
    clean = outcomes.decode(bad["metrics"]["outcomes"]["clean"])
    clean[0] = not clean[0]
    bad["metrics"]["outcomes"]["clean"] = outcomes.encode(clean)
    with pytest.raises(RecordError, match="outcomes give clean"):
        store.write(bad)
    path.write_text(json.dumps(bad))
    with pytest.raises(RecordError, match="outcomes give clean"):
        store.read(path)
    truncated = copy.deepcopy(rec)
    truncated["metrics"]["outcomes"]["clean"]["data"] = truncated["metrics"]["outcomes"]["clean"]["data"][:8]
    with pytest.raises(RecordError, match="outcomes"):
        validate(truncated)
    # a record from before outcomes stays readable
    old = copy.deepcopy(rec)
    for key in ("outcomes", "predictions", "worst_by_threat", "worst_case_threat"):
        old["metrics"].pop(key)
    assert validate(old)


# --- the board --------------------------------------------------------------------------------------

def _board_records(rng, n=1000):
    """ST, a better SAM row, and a constant classifier whose 'robustness' tops the headline."""
    labels = np.arange(n) % 2
    index = np.arange(n)

    def metrics(clean, attacked, predicted):
        out = outcomes.Outcomes("correct", n, index, clean, predicted, [("PGD-10 linf 2/255", "norm-bounded",
                                                                 np.ones(n, dtype=bool), attacked)],
                         np.bincount(labels, minlength=2))
        return {"metric": "accuracy", "n": n, "clean": 100 * clean.mean(), "attacks": [
                    {"name": "pgd", "label": "PGD-10 linf 2/255", "params": {"norm": "linf", "eps": 2 / 255},
                     "value": 100 * attacked.mean(), "n": n, "attacked": int(clean.sum()), "threat": "norm-bounded"}],
                "worst_case": 100 * attacked.mean(), "worst_case_n": n, "worst_case_threat": "norm-bounded",
                "outcomes": out.to_json(), "predictions": {"histogram": np.bincount(predicted, minlength=2).tolist(),
                                                           "unit": "examples"}}

    clean = rng.random(n) < 0.85
    st_adv = clean & (rng.random(n) < 0.3)
    sam_adv = st_adv | (clean & (rng.random(n) < 0.2))
    st_pred = np.where(clean, labels, 1 - labels)
    const = np.zeros(n, dtype=np.int64)
    const_clean = labels == 0
    recs = [_record(metrics(clean, st_adv, st_pred), "st"),
            _record(metrics(clean, sam_adv, st_pred), "sam", label="SAM"),
            _record(metrics(const_clean, const_clean, const), "at", label="AT (constant)")]
    for r in recs:
        r["evaluation"]["attacks"] = [{"name": "pgd", "norm": "linf", "eps": 2 / 255, "steps": 10, "step_size": None,
                                       "random_start": True, "restarts": 1}]
    return recs


def test_board_ranks_by_headline_flags_the_constant_classifier_last_and_marks_paired_differences(tmp_path):
    recs = _board_records(np.random.default_rng(0))
    task = TASKS.get("digits")
    rows = build_rows(recs, task)
    assert [r.label for r in rows] == ["SAM", "ST", "AT (constant)"]  # the constant model is ranked last
    assert rows[2].collapsed and "100.0%" in rows[2].collapsed
    md = render(task, recs)
    main = md.split("**Protocol.**")[0]
    assert "| AT (constant) (collapsed) |" in main and "**Collapsed models**" in md
    sam_line = next(line for line in main.splitlines() if line.startswith("| SAM |"))
    assert "**+" in sam_line  # SAM's paired difference on the headline excludes 0 (bold)
    assert "p (McNemar)" in main and "| ST |" in main and "(baseline)" in main
    assert "### Paired differences to ST (same examples)" in md and "Wilson" in md
    assert md == render(task, list(reversed(copy.deepcopy(recs))))  # deterministic
    assert plot(task, recs, tmp_path / "a.png") and plot_budgets(task, recs, tmp_path / "b.png")
    assert plot(task, list(reversed(recs)), tmp_path / "a2.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "a2.png").read_bytes()


def test_headline_is_the_task_s_attack_spec_else_the_worst_case():
    assert _spec_matches("pgd:norm=linf,eps=2/255,steps=10",
                         {"name": "pgd", "norm": "linf", "eps": 2 / 255, "steps": 10, "step_size": None,
                          "random_start": True, "restarts": 1})
    assert not _spec_matches("pgd:norm=linf,eps=2/255", {"name": "pgd", "norm": "linf", "eps": 1 / 255, "steps": 10,
                                                         "step_size": None, "random_start": True, "restarts": 1})
    assert not _spec_matches("pgd:norm=linf,eps=2/255,n=500",
                             {"name": "pgd", "norm": "linf", "eps": 2 / 255, "steps": 10, "step_size": None,
                              "random_start": True, "restarts": 1})
    recs = _board_records(np.random.default_rng(0))
    assert build_rows(recs, TASKS.get("digits"))[0].headline == [WORST]  # digits' headline attack is absent
    assert build_rows(recs, TASKS.get("cifar10_cpu"))[0].headline == ["PGD-10 linf 2/255"]


def test_plot_axes_stay_inside_zero_to_hundred():
    assert _limits([99.5]) == (97.5, 100.0)
    assert _limits([0.5, 1.0]) == (0.0, 3.0)


def test_board_reports_the_gap_between_pgd_and_a_stronger_attack_on_the_same_examples():
    """PGD on 1,000 examples, APGD-CE+T on a nested 400 of them: the board compares the two on those
    400 only, and the gap (examples PGD left correct that APGD broke) is the one built in."""
    rng = np.random.default_rng(3)
    n, labels = 1000, np.arange(1000) % 2
    clean = rng.random(n) < 0.9
    pgd = clean & (rng.random(n) < 0.5)
    cover = np.zeros(n, dtype=bool)
    cover[rng.choice(n, 400, replace=False)] = True
    apgd = pgd.copy()
    broken = np.flatnonzero(pgd & cover)[:40]  # APGD breaks 40 of the examples PGD left correct
    apgd[broken] = False
    apgd[~cover] = False  # outside its cover an attack's outcome is not read
    attacks = [("PGD-10 linf 2/255", "norm-bounded", np.ones(n, dtype=bool), pgd),
               ("APGD-CE+T linf 2/255", "norm-bounded", cover, apgd)]
    out = outcomes.Outcomes("correct", n, np.arange(n), clean, np.where(clean, labels, 1 - labels), attacks,
                     np.bincount(labels, minlength=2))
    entries = [{"name": "pgd", "label": "PGD-10 linf 2/255", "params": {"norm": "linf", "eps": 2 / 255},
                "value": 100 * pgd.mean(), "n": n, "attacked": int(clean.sum()), "threat": "norm-bounded"},
               {"name": "apgd", "label": "APGD-CE+T linf 2/255", "params": {"norm": "linf", "eps": 2 / 255},
                "value": 100 * apgd[cover].mean(), "n": 400, "attacked": int((clean & cover).sum()),
                "threat": "norm-bounded"}]
    metrics = {"metric": "accuracy", "n": n, "clean": 100 * clean.mean(), "attacks": entries,
               "worst_case": None, "worst_case_n": 0, "outcomes": out.to_json()}
    md = render(TASKS.get("digits"), [_record(metrics)])
    line = next(ln for ln in md.splitlines() if ln.startswith("| ST | PGD-10 linf 2/255 | APGD-CE+T"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == "400" and cells[-1] == "40"
    assert float(cells[4]) == pytest.approx(100 * pgd[cover].mean(), abs=0.05)
    assert float(cells[5]) == pytest.approx(100 * apgd[cover].mean(), abs=0.05)
    assert cells[6].startswith("**+10.0**")  # 40 of 400: 10 points, interval excludes 0
    assert "### Is PGD enough?" in md
    # no stronger attack at PGD's budget: no such section
    assert "Is PGD enough?" not in render(TASKS.get("digits"), _board_records(np.random.default_rng(0)))
