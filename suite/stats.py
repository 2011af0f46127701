"""The statistics a leaderboard states: intervals on every cell, paired differences to ST, collapse tests.

scipy does the statistics (`binomtest` for Wilson intervals, McNemar's exact test and the test against
chance; `bootstrap` for paired intervals; the t distribution for a mean over seeds); this module only
says which to apply to which numbers.

- One seed, accuracy: the Wilson score interval of k correct out of n.
- One seed, mIoU: a percentile bootstrap over images (mIoU is not a proportion).
- Several seeds: mean, standard deviation over seeds, and the t interval of the mean.
- A row against ST on the same examples: the difference of the metric, with a percentile bootstrap
  interval that resamples the examples jointly for both rows (paired) and, where a row has several
  seeds, its seeds as well (crossed: examples and seeds resampled independently). With one seed each
  and accuracy, McNemar's exact test on the discordant pairs.
All intervals are 95%; the bootstrap draws a fixed number of resamples from a fixed seed, so the same
records always render to the same board.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
COLLAPSE_SHARE = 0.9  # one predicted class for at least this share of the examples: collapsed


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion, in percent."""
    from scipy.stats import binomtest

    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return 100.0 * float(ci.low), 100.0 * float(ci.high)


def mean_interval(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, std, low, high): the t interval of the mean over seeds (two or more values)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    m, s = float(v.mean()), float(v.std(ddof=1))
    if s == 0.0:
        return m, 0.0, m, m
    lo, hi = t.interval(LEVEL, df=len(v) - 1, loc=m, scale=s / np.sqrt(len(v)))
    return m, s, float(lo), float(hi)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of two paired bool outcome vectors (the binomial test of the
    discordant pairs against 1/2)."""
    from scipy.stats import binomtest

    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def above_chance(k: int, n: int, chance: float) -> bool:
    """Is k of n correct above `chance` at 95% confidence (one-sided exact binomial test)?"""
    from scipy.stats import binomtest

    if n <= 0:
        return False
    return binomtest(int(k), int(n), chance, alternative="greater").pvalue < 1 - LEVEL


@dataclass
class Difference:
    value: float        # row - baseline, percent points (mean over seeds)
    low: float
    high: float
    p_mcnemar: float | None  # one seed each, accuracy only
    n: int              # examples compared

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def _per_seed_metric(kind: str, seeds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The metric of each seed's outcomes under example weights: (B resamples, S seeds).

    seeds: (S, n) bools or (S, n, K, 3) counts; weights: (B, n) how often each example was drawn."""
    if kind == "correct":
        return 100.0 * (weights @ seeds.T.astype(np.float64)) / weights.sum(axis=1, keepdims=True)
    out = np.empty((len(weights), len(seeds)))
    for s, counts in enumerate(seeds):
        summed = (weights @ counts.reshape(len(counts), -1).astype(np.float64)).reshape(len(weights), -1, 3)
        tp, truth, pred = summed[..., 0], summed[..., 1], summed[..., 2]
        union = truth + pred - tp
        present = union > 0
        iou = np.where(present, tp / np.maximum(union, 1), 0.0)
        out[:, s] = 100.0 * iou.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return out


def _bootstrap(kind: str, rows: list[np.ndarray], sign: list[float]) -> tuple[float, float, float]:
    """Point estimate and percentile interval of sum_r sign_r * mean_seed(metric of row r), resampling
    the (shared) examples and, for a row with two or more seeds, its seeds."""
    from scipy.stats import bootstrap

    n = rows[0].shape[1]
    samples = [np.arange(n)] + [np.arange(len(r)) for r in rows if len(r) > 1]

    def statistic(ex, *seed_draws, axis=-1):
        ex = np.atleast_2d(ex)
        weights = np.stack([np.bincount(row, minlength=n) for row in ex]).astype(np.float64)
        total, draws = np.zeros(len(ex)), iter(seed_draws)
        for r, sg in zip(rows, sign):
            per_seed = _per_seed_metric(kind, r, weights)
            if len(r) > 1:
                pick = np.atleast_2d(next(draws))
                total += sg * np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)
            else:
                total += sg * per_seed[:, 0]
        return total

    point = float(statistic(np.arange(n)[None, :], *[np.arange(len(r))[None, :] for r in rows if len(r) > 1])[0])
    res = bootstrap(samples, statistic, n_resamples=RESAMPLES, vectorized=True, paired=False, batch=250,
                    confidence_level=LEVEL, method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    # every resample equal (identical outcomes): the interval is the point itself
    return point, (point if lo != lo else lo), (point if hi != hi else hi)


def bootstrap_interval(kind: str, seeds: np.ndarray) -> tuple[float, float]:
    """Percentile bootstrap interval of one row's metric over its examples (and seeds)."""
    _, lo, hi = _bootstrap(kind, [seeds], [1.0])
    return lo, hi


def paired_difference(kind: str, row: np.ndarray, base: np.ndarray) -> Difference:
    """Row minus baseline on the same examples; row, base: (seeds, n) bools or (seeds, n, K, 3) counts."""
    value, lo, hi = _bootstrap(kind, [row, base], [1.0, -1.0])
    p = mcnemar_exact(row[0], base[0]) if kind == "correct" and len(row) == 1 and len(base) == 1 else None
    return Difference(value, lo, hi, p, row.shape[1])


def collapsed(kind: str, histograms: list[np.ndarray], correct: list[tuple[int, int]], chance: list[float]
              ) -> str | None:
    """Why a row is collapsed, or None: a seed whose most frequent predicted class covers >= 90% of the
    examples (pixels for segmentation), or whose clean accuracy is not above chance at 95%."""
    for h in histograms:
        if len(h) and h.sum() > 0 and h.max() / h.sum() >= COLLAPSE_SHARE:
            return f"one class predicted for {100.0 * h.max() / h.sum():.1f}% of the examples"
    if kind == "correct":
        for (k, n), c in zip(correct, chance):
            if not above_chance(k, n, c):
                return f"clean accuracy {100.0 * k / n:.1f}% is not above chance ({100.0 * c:.1f}%)"
    return None

