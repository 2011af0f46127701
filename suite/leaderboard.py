"""Leaderboards as a pure function of run records.

`render(task, records)` -> markdown, deterministic (same records, same bytes); `plot(...)` writes the
plots beside it: clean against the headline metric, and robustness against the attack budget.

- Rows are configurations (everything but the seed), aggregated over seeds.
- Runs evaluated differently (another attack suite, another evaluation subset, other analyses) are
  never ranked together: each evaluation protocol gets its own table with its own protocol line,
  the protocol with the most runs first.
- The headline: the column(s) a task names (`Task.headline`: the paper's budget for the task), else
  the worst case. One sort key: the headline, then clean, both descending; collapsed rows last.
- The worst case is taken within the norm-bounded threat family only (suite.evaluate); a spatial,
  pixel or text-edit attack is a column of its own.
- Statistics (suite.stats): a 95% interval on every cell; each row's paired difference to ST on the
  same examples, from the records' per-example outcomes (suite.outcomes); collapsed models flagged.
- A main table that fits a screen (method, clean, headline, its difference to ST, worst case, one
  sharpness column, cost, seeds); the other budgets, attacks and analyses in a details table; every
  paired difference in a third.
- Training cost: each row's measured time per step relative to ST trained with the same settings
  (same model, recipe and training subset) on the same device (the processor and thread count a run
  records), so ST itself reads 1.00x; "–" where no ST run was timed on that device.
- The paper's numbers, where a task carries them, are a separate table marked as reported.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from suite import outcomes
from suite import stats
from suite.config import Task
from suite.records import canonical

BASELINE = "st"
WORST = "worst case"            # the column of the norm-bounded attacks' per-example worst case
HEADLINE_WORST = "worst_case"   # a Task.headline entry that names that column
_WORST_HEAD = "worst case (norm-bounded)"


def _eval_key(rec: dict) -> str:
    """The evaluation protocol of a run: attacks (with their n), subset settings, analyses."""
    m = rec.get("metrics") or {}
    sub = m.get("subset", {})
    evaluation = {k: v for k, v in rec["evaluation"].items() if v not in ([], {}, None, "")}  # absent == empty
    return canonical({"evaluation": evaluation, "subset": [sub.get("strategy"), sub.get("n"), sub.get("seed"),
                                                                   sub.get("indices_sha256")]})


def _train_key(rec: dict) -> str:
    return canonical({"model": rec.get("model"), "train": rec["train"], "task_version": rec["task"]["version"]})


def _config_key(rec: dict) -> str:
    """Everything that identifies a configuration except the seed."""
    return canonical({"method": rec["method"]["name"], "params": rec["method"]["params"], "train": _train_key(rec),
                      "evaluation": _eval_key(rec)})


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _cell(values: list[float], digits: int = 1) -> str:
    m, s = _mean_std(values)
    if m != m:  # nan
        return "–"
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def _cell_g(values: list[float]) -> str:
    """Analysis values span orders of magnitude: 3 significant digits."""
    m, s = _mean_std(values)
    if m != m:
        return "–"
    return f"{m:.3g}" if s is None else f"{m:.3g} ± {s:.2g}"


def _time_per_step(rec: dict) -> float | None:
    c = rec.get("cost", {})
    if c.get("train_time_s") and c.get("steps"):
        return c["train_time_s"] / c["steps"]
    return None


def _threat(entry: dict) -> str:
    """An attack's threat family: recorded since per-family worst cases; older records name the attack."""
    if entry.get("threat"):
        return entry["threat"]
    from suite.plugins import load_builtins
    from suite.registry import ATTACKS
    load_builtins()
    return ATTACKS.get(entry["name"]).threat if entry.get("name") in ATTACKS else outcomes.NORM_BOUNDED


def _record_worst(rec: dict) -> tuple[float | None, int]:
    """The norm-bounded worst case of a record and its n. Records made before per-family worst cases
    took it over every attack: that is the norm-bounded one only when every attack was norm-bounded."""
    m = rec["metrics"]
    attacks = m.get("attacks", [])
    if m.get("worst_case_threat") == outcomes.NORM_BOUNDED or (attacks and all(_threat(a) == outcomes.NORM_BOUNDED
                                                                          for a in attacks)):
        return m.get("worst_case"), m.get("worst_case_n", m["n"])
    return None, 0


@dataclass
class Interval:
    mean: float
    std: float | None
    low: float | None
    high: float | None

    def text(self, digits: int = 1) -> str:
        if self.mean != self.mean:
            return "–"
        s = f"{self.mean:.{digits}f}" + ("" if self.std is None else f" ± {self.std:.{digits}f}")
        if self.low is not None and self.high is not None:
            s += f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return s


class Row:
    def __init__(self, records: list[dict]):
        self.records = sorted(records, key=lambda r: (r["seed"], r["run_id"]))
        first = self.records[0]
        self.method = first["method"]
        self.label = first["method"].get("label") or first["method"]["name"]
        self.metric = first["metrics"].get("metric", "accuracy")
        self.clean = [r["metrics"]["clean"] for r in self.records]
        worst = [_record_worst(r) for r in self.records]
        self.worst = [w for w, _ in worst]
        self.attacks: dict[str, list[float]] = defaultdict(list)
        self.attack_n: dict[str, set] = defaultdict(set)
        self.attacked: dict[str, list[int]] = defaultdict(list)
        self.threats: dict[str, str] = {}
        self.stats: dict[str, list[dict]] = defaultdict(list)
        self.secondary: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.per_class: dict[str, list[list]] = defaultdict(list)  # column -> per seed, per class (None: absent)
        self.analysis: dict[str, list[float]] = defaultdict(list)
        self.family_worst: dict[str, list[float]] = defaultdict(list)
        # per column ("clean", attack labels, WORST): value and number of examples, per seed
        self.values: dict[str, list] = {"clean": list(self.clean), WORST: list(self.worst)}
        self.ns: dict[str, list[int]] = {"clean": [r["metrics"]["n"] for r in self.records], WORST: [n for _, n in worst]}
        for r in self.records:
            m = r["metrics"]
            for key, val in (m.get("clean_metrics") or {}).items():
                if isinstance(val, (int, float)):
                    self.secondary["clean"][key].append(val)
            for key, val in (m.get("worst_case_metrics") or {}).items():
                if isinstance(val, (int, float)) and _record_worst(r)[0] is not None:
                    self.secondary["worst case"][key].append(val)
            for a in m.get("attacks", []):
                self.attacks[a["label"]].append(a["value"])
                self.values.setdefault(a["label"], []).append(a["value"])
                self.ns.setdefault(a["label"], []).append(a["n"])
                self.attack_n[a["label"]].add(a["n"])
                self.attacked[a["label"]].append(a.get("attacked", a["n"]))
                self.threats[a["label"]] = _threat(a)
                if a.get("stats"):
                    self.stats[a["label"]].append(a["stats"])
                for key, val in (a.get("metrics") or {}).items():
                    if isinstance(val, (int, float)):
                        self.secondary[a["label"]][key].append(val)
            for col, metrics in [("clean", m.get("clean_metrics"))] + [(a["label"], a.get("metrics"))
                                                                    for a in m.get("attacks", [])]:
                if isinstance((metrics or {}).get("per_class_iou"), list):
                    self.per_class[col].append(metrics["per_class_iou"])
            for fam in m.get("worst_by_threat", []):
                if fam["threat"] != outcomes.NORM_BOUNDED and fam.get("attacks", 1) > 1:
                    self.family_worst[fam["threat"]].append(fam["value"])
            for a in m.get("analysis", []):
                self.analysis[a["label"]].append(a["value"])
        self.outcomes = [outcomes.Outcomes.from_json(r["metrics"]["outcomes"]) if r["metrics"].get("outcomes") else None
                         for r in self.records]
        self.corruptions = [r["metrics"]["corruption_mean"] for r in self.records
                            if r["metrics"].get("corruption_mean") is not None]
        self.per_corruption: dict[str, list[float]] = defaultdict(list)
        for r in self.records:
            for item in (r["metrics"].get("corruptions") or {}).get("items", []):
                self.per_corruption[item["label"]].append(item["value"])
        self.passes = first.get("cost", {}).get("passes_per_step")
        # time per step on each device (a device names the processor and threads, so a ratio compares
        # runs timed on the same hardware; a row's seeds may have run on different machines)
        self.step_times: dict[str, list[float]] = defaultdict(list)
        for r in self.records:
            if t := _time_per_step(r):
                self.step_times[r.get("cost", {}).get("device", "?")].append(t)
        self.train_key = _train_key(first)
        self.collapsed: str | None = None
        self.headline: list[str] = [WORST]

    @property
    def has_outcomes(self) -> bool:
        return all(o is not None for o in self.outcomes)

    def interval(self, col: str) -> Interval:
        """Mean over seeds and its 95% interval: Wilson for one seed (a percentile bootstrap over the
        examples for a metric that is not a proportion), the t interval of the mean for several."""
        vals = [v for v in self.values.get(col, []) if v is not None]
        if not vals:
            return Interval(float("nan"), None, None, None)
        if len(vals) > 1:  # a percentage: the t interval is cut at 0 and 100
            m, s, lo, hi = stats.mean_interval(vals)
            return Interval(m, s, max(lo, 0.0), min(hi, 100.0))
        v, n = vals[0], self.ns[col][0]
        if self.metric == "accuracy" and n:
            lo, hi = stats.wilson(round(v * n / 100.0), n)
            return Interval(v, None, lo, hi)
        arrays = self.column_outcomes(col)
        if arrays is not None:
            lo, hi = stats.bootstrap_interval(self.outcomes[0].kind, arrays)
            return Interval(v, None, lo, hi)
        return Interval(v, None, None, None)

    def column_outcomes(self, col: str) -> np.ndarray | None:
        """(seeds, examples covered, ...) outcomes of one column, or None without per-example outcomes."""
        if not self.has_outcomes:
            return None
        parts = [o.column(col) for o in self.outcomes]
        if any(p is None for p in parts):
            return None
        covers = [c for c, _ in parts]
        if any(not np.array_equal(covers[0], c) for c in covers[1:]):
            return None
        return np.stack([arr[c] for c, arr in parts])

    def sort_key(self):
        h, _ = _mean_std(self.values.get(self.headline[0], []))
        c, _ = _mean_std(self.clean)
        return (self.collapsed is not None, -(h if h == h else -1.0), -(c if c == c else -1.0), self.label)


def _disambiguate(rows: list[Row]) -> None:
    """Rows with the same label differ in some training setting or model: name it."""
    by_label = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    for same in by_label.values():
        if len(same) < 2:
            continue
        firsts = [r.records[0] for r in same]
        keys = sorted({k for rec in firsts for k in rec["train"]})
        differing = [k for k in keys if len({canonical(rec["train"].get(k)) for rec in firsts}) > 1]
        models = {rec.get("model") for rec in firsts}
        for row, rec in zip(same, firsts):
            extra = [f"{k}={rec['train'].get(k)}" for k in differing]
            if len(models) > 1:
                extra.append(f"model={rec.get('model_name') or Path(str(rec.get('model'))).name}")
            row.label = f"{row.label} ({', '.join(extra)})" if extra else row.label


def _collapse(row: Row, num_classes: int) -> str | None:
    """Why a row is a collapsed model, or None (suite.stats.collapsed): from each seed's histogram of
    clean predictions, and for accuracy, its clean accuracy against chance (the best constant
    prediction's accuracy where the record has the label histogram, else 1 / classes)."""
    hists = [np.asarray(r["metrics"].get("predictions", {}).get("histogram", []), dtype=np.int64)
             for r in row.records]
    kind = "correct" if row.metric == "accuracy" else "class_counts"
    correct, chance = [], []
    for r, out in zip(row.records, row.outcomes):
        n = r["metrics"]["n"]
        correct.append((round(r["metrics"]["clean"] * n / 100.0), n))
        labels = out.labels if out is not None else None
        chance.append(float(labels.max() / labels.sum()) if labels is not None and labels.sum()
                      else 1.0 / max(num_classes, 1))
    return stats.collapsed(kind, hists, correct, chance)


def build_rows(records: list[dict], task: Task | None = None) -> list[Row]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "complete":
            groups[_config_key(r)].append(r)
    rows = [Row(g) for g in groups.values()]
    _disambiguate(rows)
    headline = headline_columns(task, rows)
    for row in rows:
        row.headline = headline
        row.collapsed = _collapse(row, task.num_classes if task is not None else 2)
    return sorted(rows, key=Row.sort_key)


def _spec_matches(text: str, resolved: dict) -> bool:
    """Does an attack spec (task syntax, e.g. 'pgd:norm=linf,eps=2/255') name this recorded attack?"""
    from suite.attacks.base import AttackSpec
    from suite.params import resolve_params
    from suite.registry import ATTACKS

    spec = AttackSpec.parse(text)
    if spec.name != resolved.get("name") or spec.n != resolved.get("n", 0) or spec.name not in ATTACKS:
        return False
    want = resolve_params(f"attack {spec.name}", ATTACKS.get(spec.name).params, dict(spec.params))
    have = {k: v for k, v in resolved.items() if k not in ("name", "n")}
    if set(want) != set(have):
        return False
    return all(math.isclose(want[k], have[k], rel_tol=1e-9) if isinstance(want[k], float) and
               isinstance(have[k], (int, float)) else want[k] == have[k] for k in want)


def headline_columns(task: Task | None, rows: list[Row]) -> list[str]:
    """The columns a board ranks by: the task's headline attacks found in these records (or the
    norm-bounded worst case), else the worst case, else clean."""
    cols: list[str] = []
    for h in (task.headline if task is not None else ()):
        if h == HEADLINE_WORST:
            found = WORST if any(w is not None for row in rows for w in row.worst) else None
        else:
            found = next((ma["label"] for row in rows for ev, ma in zip(row.records[0]["evaluation"].get("attacks", []),
                                                                         row.records[0]["metrics"].get("attacks", []))
                          if _spec_matches(h, ev)), None)
        if found and found not in cols:
            cols.append(found)
    if not cols:
        cols = [WORST] if any(w is not None for row in rows for w in row.worst) else ["clean"]
    return cols


def protocol_groups(records: list[dict]) -> list[list[dict]]:
    """Complete records split by evaluation protocol; the protocol with the most runs first."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "complete":
            groups[_eval_key(r)].append(r)
    return sorted(groups.values(), key=lambda g: (-len(g), min(r["run_id"] for r in g)))


def _baselines(rows: list[Row]) -> dict[tuple[str, str], float]:
    """ST time per step for each training setting on each device."""
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row.method["name"] == BASELINE:
            for device, ts in row.step_times.items():
                times[(row.train_key, device)].append(statistics.fmean(ts))
    return {k: statistics.fmean(v) for k, v in times.items()}


def _cost_ratio(row: Row, baselines: dict[tuple[str, str], float]) -> float | None:
    """The row's time per step relative to ST's on the same device, averaged over the row's runs; None when
    a run has no ST run timed on its device (a ratio across machines would measure the machines)."""
    if not row.step_times:
        return None
    bases = {d: baselines.get((row.train_key, d)) for d in row.step_times}
    if not all(bases.values()):
        return None
    return statistics.fmean(t / bases[d] for d, ts in row.step_times.items() for t in ts)


def _fmt_stat(stats_: list[dict], key: str) -> str:
    vals = []
    for s in stats_:
        if key == "success_rate":
            if s.get("attacked"):
                vals.append(100.0 * s.get("succeeded", 0) / s["attacked"])
        elif s.get(f"{key}_count"):
            vals.append(s[f"{key}_sum"] / s[f"{key}_count"])
    return _cell(vals)


# --- paired differences to ST ---------------------------------------------------------------------------

def _baseline_row(rows: list[Row], row: Row) -> Row | None:
    """The ST row a row is compared with: trained with the same settings where there is one."""
    st = [r for r in rows if r.method["name"] == BASELINE]
    same = [r for r in st if r.train_key == row.train_key]
    return (same or st or [None])[0]


def _paired(rows: list[Row], row: Row, col: str, cache: dict) -> stats.Difference | None:
    """Row minus its ST row on `col`, on the same examples, or None (no outcomes, other examples)."""
    key = (id(row), col)
    if key not in cache:
        base = _baseline_row(rows, row)
        cache[key] = None
        if base is not None and base is not row and row.outcomes[0] is not None and base.outcomes[0] is not None:
            mine, theirs = row.column_outcomes(col), base.column_outcomes(col)
            same_examples = all(np.array_equal(o.index, base.outcomes[0].index) for o in row.outcomes + base.outcomes)
            covers = [o.column(col)[0] for o in row.outcomes[:1] + base.outcomes[:1]]
            if mine is not None and theirs is not None and same_examples and np.array_equal(*covers):
                cache[key] = stats.paired_difference(row.outcomes[0].kind, mine, theirs)
    return cache[key]


def _diff_text(d: stats.Difference | None, with_p: bool = False) -> str:
    if d is None:
        return "–"
    s = f"{d.value:+.1f} [{d.low:+.1f}, {d.high:+.1f}]"
    if d.significant:
        s = f"**{d.value:+.1f}** [{d.low:+.1f}, {d.high:+.1f}]"
    if with_p and d.p_mcnemar is not None:
        s += f" p={_p(d.p_mcnemar)}"
    return s


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _head(col: str, metric: str) -> str:
    return {"clean": f"clean {metric}", WORST: _WORST_HEAD}.get(col, col)


def _label(row: Row) -> str:
    return row.label + (" (collapsed)" if row.collapsed else "")


# --- tables ------------------------------------------------------------------------------------------

def _analysis_labels(rows: list[Row]) -> list[str]:
    """Analyses in the order the records list them; the first is the main table's sharpness column."""
    order: dict[str, int] = {}
    for row in rows:
        for a in row.records[0]["metrics"].get("analysis", []):
            order.setdefault(a["label"], len(order))
    return sorted(order, key=order.get)


def _main_table(rows: list[Row], baselines: dict[tuple[str, str], float], metric: str, cache: dict) -> list[str]:
    headline = rows[0].headline
    shown = [c for c in headline if c != "clean"]
    has_worst = WORST not in headline and any(w is not None for row in rows for w in row.worst)
    sharp = _analysis_labels(rows)[:1]
    diffs = {row.label: [_paired(rows, row, c, cache) for c in headline] for row in rows}
    with_p = any(d is not None and d.p_mcnemar is not None for ds in diffs.values() for d in ds)
    head = ["method", f"clean {metric}"] + [_head(c, metric) for c in shown]
    head += [f"Δ {_head(c, metric)} vs ST" for c in headline]
    head += ["p (McNemar)"] * with_p * len(headline) + ([_WORST_HEAD] if has_worst else []) + sharp
    head += ["train cost vs ST", "seeds"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        ratio = _cost_ratio(row, baselines)
        cost = "–" if ratio is None else f"{ratio:.2f}x"
        cells = [_label(row), row.interval("clean").text()] + [row.interval(c).text() for c in shown]
        cells += ["(baseline)" if row.method["name"] == BASELINE else _diff_text(d) for d in diffs[row.label]]
        if with_p:
            cells += ["–" if d is None or d.p_mcnemar is None else _p(d.p_mcnemar) for d in diffs[row.label]]
        cells += [row.interval(WORST).text()] if has_worst else []
        cells += [_cell_g(row.analysis.get(lbl, [])) for lbl in sharp]
        cells += [cost, str(len(row.records))]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _details_table(rows: list[Row], metric: str) -> list[str]:
    """What the main table leaves out: the other attacks, other threat families' worst cases,
    corruptions, the other analyses, passes per step."""
    headline = rows[0].headline
    attack_labels = sorted({lbl for row in rows for lbl in row.attacks if lbl not in headline}, key=_attack_order(rows))
    families = sorted({f for row in rows for f in row.family_worst})
    analyses = _analysis_labels(rows)[1:]
    has_corr = any(row.corruptions for row in rows)
    head = ["method"] + [f"{lbl} ({row_threat})" if row_threat != outcomes.NORM_BOUNDED else lbl
                         for lbl, row_threat in ((lbl, _threat_of(rows, lbl)) for lbl in attack_labels)]
    head += [f"worst case ({f})" for f in families] + (["corruption mean"] if has_corr else []) + analyses
    head += ["passes/step"]
    out = ["### Details", "", "| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        cells = [_label(row)] + [row.interval(lbl).text() for lbl in attack_labels]
        cells += [_cell(row.family_worst.get(f, [])) for f in families]
        cells += [_cell(row.corruptions)] if has_corr else []
        cells += [_cell_g(row.analysis.get(lbl, [])) for lbl in analyses]
        cells += ["–" if row.passes is None else f"{row.passes:.3g}"]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def _threat_of(rows: list[Row], label: str) -> str:
    return next((row.threats[label] for row in rows if label in row.threats), outcomes.NORM_BOUNDED)


def _paired_table(rows: list[Row], metric: str, cache: dict) -> list[str]:
    """Every column's paired difference to ST on the same examples, for the rows that have outcomes."""
    cols = ["clean"] + sorted({lbl for row in rows for lbl in row.attacks}, key=_attack_order(rows))
    if any(w is not None for row in rows for w in row.worst):
        cols.append(WORST)
    body = []
    for row in rows:
        if row.method["name"] == BASELINE:
            continue
        ds = [_paired(rows, row, c, cache) for c in cols]
        if any(d is not None for d in ds):
            body.append("| " + " | ".join([_label(row)] + [_diff_text(d, with_p=True) for d in ds]) + " |")
    if not body:
        return []
    head = ["method"] + [_head(c, metric) for c in cols]
    return (["### Paired differences to ST (same examples)", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"] + body +
            ["", "Row minus ST, in points, with the 95% paired bootstrap interval; **bold**: the interval excludes "
                 "0; p: exact McNemar test (one seed each, accuracy)." , ""])


# attacks that check PGD at its own budget (the same norm and eps): AutoAttack and its APGD-CE+T part
STRONGER = ("apgd", "autoattack")


def _check_pairs(row: Row) -> list[tuple[str, str]]:
    """(PGD label, stronger attack label) pairs of one row at the same norm and budget."""
    entries = row.records[0]["metrics"].get("attacks", [])
    pgd = [a for a in entries if a["name"] == "pgd"]
    pairs = []
    for strong in (a for a in entries if a["name"] in STRONGER):
        for a in pgd:
            if (a["params"].get("norm") == strong["params"].get("norm")
                    and math.isclose(a["params"].get("eps", -1), strong["params"].get("eps", -2), rel_tol=1e-9)):
                pairs.append((a["label"], strong["label"]))
    return pairs


def _stronger_gap(row: Row, pgd: str, strong: str):
    """PGD's and the stronger attack's accuracy on the stronger attack's examples, their paired
    difference, and how many examples PGD left robust that the stronger attack broke (over seeds)."""
    if not row.has_outcomes or row.outcomes[0].kind != "correct":
        return None
    mine, theirs = [], []
    for o in row.outcomes:
        (c_pgd, a_pgd), (c_strong, a_strong) = o.column(pgd), o.column(strong)
        if not c_pgd[c_strong].all():
            return None
        mine.append(a_pgd[c_strong])
        theirs.append(a_strong[c_strong])
    if len({len(m) for m in mine}) != 1:
        return None
    mine, theirs = np.stack(mine), np.stack(theirs)
    missed = int((mine & ~theirs).sum())
    return 100.0 * mine.mean(), 100.0 * theirs.mean(), stats.paired_difference("correct", mine, theirs), missed


def _stronger_table(rows: list[Row]) -> list[str]:
    """Is PGD enough? PGD against a stronger attack at the same budget, on the same examples."""
    body = []
    for row in rows:
        for pgd, strong in _check_pairs(row):
            gap = _stronger_gap(row, pgd, strong)
            if gap is None:
                continue
            acc_pgd, acc_strong, d, missed = gap
            body.append(f"| {_label(row)} | {pgd} | {strong} | {d.n} | {acc_pgd:.1f} | {acc_strong:.1f} | "
                        f"{_diff_text(d)} | {missed} |")
    if not body:
        return []
    head = ["method", "PGD", "stronger attack", "examples", "PGD acc.", "stronger acc.", "PGD minus stronger",
            "PGD missed"]
    return (["### Is PGD enough? (a stronger attack at the same budget, on the same examples)", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
            + body + ["", "Accuracy in % on the stronger attack's examples (a nested part of the evaluated ones), "
                          "PGD's outcome on those same examples; the difference in points with its 95% paired "
                          "bootstrap interval (**bold**: it excludes 0, so PGD overstates robustness there); "
                          "PGD missed: examples PGD left correct that the stronger attack broke (summed over "
                          "seeds).", ""])


def _collapsed_note(rows: list[Row]) -> list[str]:
    flagged = [row for row in rows if row.collapsed]
    if not flagged:
        return []
    return ["**Collapsed models** (ranked last; their robustness is that of a near-constant output, not a "
            "robust model): " + "; ".join(f"{row.label}: {row.collapsed}" for row in flagged) + ".", ""]


def _notes(rows: list[Row]) -> list[str]:
    """What the runs themselves recorded about their model (e.g. an encoder trained from scratch because
    its pretrained weights could not be loaded), once per distinct note, with the rows it applies to."""
    seen: dict[str, list[str]] = {}
    for row in rows:
        for note in dict.fromkeys(n for r in row.records for n in r.get("notes", [])):
            seen.setdefault(note, []).append(row.label)
    if not seen:
        return []
    every = len(rows)
    return [f"Recorded by the runs ({'all rows' if len(labels) == every else ', '.join(labels)}): {note}."
            for note, labels in seen.items()] + [""]


def _missing_outcomes_note(rows: list[Row]) -> list[str]:
    old = [row.label for row in rows if not row.has_outcomes]
    if not old:
        return []
    return [f"No paired test for {', '.join(old)}: recorded before per-example outcomes (re-evaluate from the "
            "checkpoint with `suite eval`, or run again).", ""]


def _secondary_table(rows: list[Row], metric: str) -> list[str]:
    """Other scalar metrics (segmentation: pixel accuracy, mean class accuracy) per attack."""
    keys = sorted({k for row in rows for d in row.secondary.values() for k in d if k != metric})
    if not keys:
        return []
    cols = ["clean"] + sorted({c for row in rows for c in row.secondary if c not in ("clean", "worst case")},
                              key=_attack_order(rows)) + ["worst case"]
    out = []
    for key in keys:
        label = key.replace("_", " ")
        out += [f"### {label}", "", "| method | " + " | ".join(cols) + " |",
                "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
        for row in rows:
            out.append("| " + " | ".join([row.label] + [_cell(row.secondary.get(c, {}).get(key, [])) for c in cols])
                       + " |")
        out.append("")
    return out


def _per_class_table(rows: list[Row], names: tuple) -> list[str]:
    """Segmentation: IoU of each class, clean and under each attack (mean over seeds; – where the class is
    neither in the ground truth nor in the predictions of the evaluated images)."""
    if not any(row.per_class for row in rows):
        return []
    width = max(len(v) for row in rows for per_seed in row.per_class.values() for v in per_seed)
    names = tuple(names) if len(names) == width else tuple(f"class {i}" for i in range(width))
    cols = ["clean"] + sorted({c for row in rows for c in row.per_class if c != "clean"}, key=_attack_order(rows))
    out = ["### per-class IoU", "", "| method | evaluated on | " + " | ".join(names) + " |",
           "|" + "|".join(["---", "---"] + ["---:"] * len(names)) + "|"]
    for row in rows:
        for col in cols:
            per_seed = row.per_class.get(col)
            if not per_seed:
                continue
            cells = [_cell([v[i] for v in per_seed if i < len(v) and v[i] is not None]) for i in range(width)]
            out.append(f"| {row.label} | {col} | " + " | ".join(cells) + " |")
    return out + [""]


def _corruption_table(rows: list[Row]) -> list[str]:
    labels: list[str] = []
    for row in rows:
        for r in row.records:
            for item in (r["metrics"].get("corruptions") or {}).get("items", []):
                if item["label"] not in labels:
                    labels.append(item["label"])
    if not labels:
        return []
    first = next(r["metrics"]["corruptions"] for row in rows for r in row.records if r["metrics"].get("corruptions"))
    sub = first["subset"]
    out = [f"### Corruptions ({first['dataset']}, corruption:severity)", "",
           "| method | " + " | ".join(labels) + " | mean |", "|" + "|".join(["---"] + ["---:"] * (len(labels) + 1)) + "|"]
    for row in rows:
        if row.per_corruption:
            out.append("| " + " | ".join([row.label] + [_cell(row.per_corruption.get(lbl, [])) for lbl in labels]
                                         + [_cell(row.corruptions)]) + " |")
    out += ["", f"Clean accuracy on {sub['n']} of the {sub['of']} corrupted test images per corruption "
                f"({sub['strategy']} subset, seed {sub['seed']}), the same images for every row.", ""]
    return out


def _attack_order(rows: list[Row]):
    """Columns in the order the attacks appear in the records' evaluation suite."""
    order: dict[str, int] = {}
    for row in rows:
        for a in row.records[0]["metrics"].get("attacks", []):
            order.setdefault(a["label"], len(order))
    return lambda lbl: (order.get(lbl, 10**6), lbl)


def _reported_order(task: Task):
    order: dict[str, int] = {}
    for r in task.reported:
        for k in r.metrics:
            order.setdefault(k, len(order))
    return lambda k: order[k]


def _join(values) -> str:
    return "/".join(str(v) for v in sorted(values, key=str))


def _recipe(train: dict) -> str:
    s = f"{train['optimizer']} lr {train['lr']:g}, {train['schedule']} schedule"
    if train.get("warmup_epochs"):
        s += f", {train['warmup_epochs']:g}-epoch warm-up"
    return s


def _attack_details(rows: list[Row]) -> list[str]:
    with_stats = [(row, lbl) for row in rows for lbl in sorted(row.stats)]
    if not with_stats:
        return []
    keys = sorted({k[: -len("_sum")] for row, lbl in with_stats for s in row.stats[lbl] for k in s
                   if k.endswith("_sum")})
    head = ["method", "attack", "accuracy under attack", "success rate"] + [f"avg {k.replace('_', ' ')}" for k in keys]
    head += ["examples evaluated", "examples attacked"]
    lines = ["### Attack details", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for row, lbl in with_stats:
        st = row.stats[lbl]
        cells = [row.label, lbl, _cell(row.attacks[lbl]), _fmt_stat(st, "success_rate")]
        cells += [_fmt_stat(st, k) for k in keys]
        cells += [_join(row.attack_n[lbl]), _join(set(row.attacked[lbl]))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Examples attacked = the clean-correct examples among those evaluated (per seed where they "
              "differ); success rate = succeeded / attacked, as TextAttack defines it.", ""]
    return lines


def render(task: Task, records: list[dict]) -> str:
    records = [r for r in records if r["task"]["name"] == task.name]
    failed = sum(r["status"] == "failed" for r in records)
    groups = protocol_groups(records)
    all_rows = build_rows(records, task)
    baselines = _baselines(all_rows)

    out = [f"# Leaderboard: {task.name}", "", task.description, ""]
    models = sorted({_model_name(r) for r in records if r["status"] == "complete" and r.get("model")})
    if models and task.default_model and task.default_model not in models:
        out += [f"Model of these rows: {', '.join(models)} (the task's default, {task.default_model}, has no rows "
                "here).", ""]
    if not groups:
        out += ["No complete runs recorded yet. Run `python -m suite run --task "
                f"{task.name} --method st` (or a sweep), then `python -m suite leaderboard`.", ""]
    for gi, group in enumerate(groups):
        rows = build_rows(group, task)
        metric = rows[0].metric
        cache: dict = {}
        if len(groups) > 1:
            out += [f"## Evaluation protocol {chr(ord('A') + gi)}" + (" (main)" if gi == 0 else ""), ""]
        out += _main_table(rows, baselines, metric, cache)
        out += ["", _protocol(rows, metric, failed if gi == 0 else 0), ""]
        out += _collapsed_note(rows) + _missing_outcomes_note(rows) + _notes(rows)
        out += _details_table(rows, metric)
        out += _paired_table(rows, metric, cache)
        out += _stronger_table(rows)
        out += _secondary_table(rows, metric)
        out += _per_class_table(rows, task.class_names)
        out += _corruption_table(rows)
        out += _attack_details(rows)
    if groups:
        out += [f"![clean vs headline]({task.name}.png)", ""]
        if _budget_curves(build_rows(groups[0], task)):
            out += [f"![robustness against budget]({task.name}_budget.png)", ""]
    if task.reported:
        cols = sorted({k for r in task.reported for k in r.metrics}, key=_reported_order(task))
        out += ["## Reported by the paper (not reproduced here)", "",
                "| method (reported) | " + " | ".join(cols) + " |",
                "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
        for r in task.reported:
            vals = [f"{r.metrics[c]:.1f}" if c in r.metrics else "–" for c in cols]
            out.append(f"| {r.label} (reported) | " + " | ".join(vals) + " |")
        srcs = sorted({r.source for r in task.reported if r.source})
        if srcs:
            out += ["", "Source: " + "; ".join(srcs) + "."]
        out.append("")
    if task.report is not None:
        section = task.report(records)
        if section:
            out += [section.rstrip(), ""]
    return "\n".join(out).rstrip() + "\n"


def _model_name(rec: dict) -> str:
    """A record's model for people: local weights by their name and content hash (the run id holds only
    the hash), an older record's local directory by its last two path parts (not the machine's absolute
    path), a hub id or architecture as it is."""
    model = rec.get("model")
    if rec.get("model_name"):
        return f"{rec['model_name']} ({model})"
    p = Path(str(model))
    return "/".join(p.parts[-2:]) if p.is_absolute() else str(model)


STATISTICS = ("statistics: 95% intervals in brackets, the Wilson score interval for one seed (a percentile "
              "bootstrap over the examples for mIoU) and the t interval of the mean over seeds (shown as mean ± "
              f"std); Δ vs ST = the paired difference on the same examples, with a percentile bootstrap interval "
              f"({stats.RESAMPLES} resamples of the examples, and of the seeds where a row has several; bold when "
              "it excludes 0) and, for one seed each, the exact McNemar test; collapsed = one class predicted "
              f"for >= {stats.COLLAPSE_SHARE:.0%} of the examples or clean accuracy not above chance (one-sided "
              "exact binomial test, 5%), ranked last")


def _protocol(rows: list[Row], metric: str, failed: int) -> str:
    recs = [r for row in rows for r in row.records]
    first = recs[0]["metrics"]
    sub = first.get("subset", {})
    n = first["n"]
    if sub.get("strategy") in (None, "all"):
        chosen = f"the whole test split ({n} examples)"
    else:
        chosen = (f"{n} of the {sub['of']} test examples ({sub['strategy']} subset, seed {sub['seed']}, "
                  f"indices sha256 {sub['indices_sha256']}; the same examples for every row)")
    # an attack's part is drawn with the evaluation's strategy; on a whole split, the configured one
    part = sub.get("strategy")
    if part in (None, "all"):
        part = (recs[0].get("evaluation") or {}).get("subset") or "stratified"
    attack_parts = []
    for a in first.get("attacks", []):
        attack_parts.append(a["label"] + (f" on {a['n']} of them (a nested {part} part)" if a["n"] != n else ""))
    _, worst_n = _record_worst(recs[0])
    skip = ("each attack runs on the clean-correct examples it covers" if metric == "accuracy"
            else "each attack runs on every example it covers")
    worst = (f"worst case = per example the worst of clean and every norm-bounded attack, over the {worst_n} "
             "examples all of them saw; other threat models are columns of their own" if worst_n else
             "no norm-bounded worst case")
    trained = [r for r in recs if r["train"]]
    said = metric if any(c.isupper() for c in metric) else metric.capitalize()  # "Accuracy", "mIoU"
    headline = ", ".join(_head(c, metric) for c in rows[0].headline)
    parts = [
        f"**Protocol.** {said} in % on {chosen}; headline (the sort key, then clean): {headline}; attacks: "
        f"{'; '.join(attack_parts) if attack_parts else 'none'} ({skip}; {worst})",
    ]
    if first.get("analysis"):
        parts.append("analyses: " + "; ".join(f"{a['label']} ({_fmt_params(a['params'])})" for a in first["analysis"]))
    if trained:
        epochs = _join({r["train"]["epochs"] for r in trained})
        bs = _join({r["train"]["batch_size"] for r in trained})
        opts = sorted({_recipe(r["train"]) for r in trained})
        sizes = sorted({r.get("cost", {}).get("train_examples") for r in trained if r.get("cost", {}).get("train_examples")})
        # a segmentation run's square training crop, where it was set away from the task's own (crop=N)
        crops = {r["train"].get("crop") or "the task's" for r in trained}
        crop = f", crop {_join(crops)}" if crops != {"the task's"} else ""
        parts.append(f"training: epochs {epochs}, batch {bs}{crop}, {'; '.join(opts)}"
                     + (f", {_join(sizes)} training examples" if sizes else ""))
    versions = sorted({r["task"]["version"] for r in recs})
    models = sorted({_model_name(r) for r in recs if r.get("model")})
    parts.append(f"task version {', '.join(versions)}" + (f", model {', '.join(models)}" if models else ""))
    data = sorted({r["provenance"].get("data_fingerprint") for r in recs if r["provenance"].get("data_fingerprint")})
    if data:
        parts.append(f"data {', '.join(data)}")
    commits = sorted({(r["provenance"].get("git_commit") or "?")[:10] + ("+dirty" if r["provenance"].get("git_dirty")
                                                                          else "") for r in recs})
    parts.append(f"suite commit {', '.join(commits)}")
    devices = sorted({r.get("cost", {}).get("device", "?") for r in recs})
    parts.append(f"hardware: {'; '.join(devices)}")
    parts.append(STATISTICS)
    parts.append("cost = measured training time per step relative to ST with the same training settings on the "
                 "same hardware (as recorded; – where ST was not timed there), on a shared machine (other jobs ran "
                 "beside these runs, so ratios are indicative); passes/step = declared forward-backward passes per "
                 "step")
    if failed:
        parts.append(f"{failed} failed run(s) recorded, not shown")
    return "; ".join(parts) + "."


def _fmt_params(params: dict) -> str:
    """Spec syntax, not Python literals: booleans as true/false; a parameter left to its default
    (None: derived from the others) is not listed."""
    from suite.params import fmt_value
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else fmt_value(v)}"
                     for k, v in params.items() if v is not None)


# --- plots -------------------------------------------------------------------------------------------

MARKERS = {"st": "o", "sam": "s", "asam": "D", "esam": "P", "at": "^", "fast_at": "v", "trades": "<",
           "awp": ">", "sam_at": "*", "checkpoint": "X"}


def _budget_curves(rows: list[Row]) -> dict[str, list[tuple[float, str]]]:
    """Per norm, the (budget, column) points of the norm-bounded attack with the most budgets."""
    by_attack: dict[tuple[str, str], dict[float, str]] = defaultdict(dict)
    for row in rows:
        for a in row.records[0]["metrics"].get("attacks", []):
            p = a.get("params") or {}
            if _threat(a) == outcomes.NORM_BOUNDED and isinstance(p.get("eps"), (int, float)) and p.get("norm"):
                by_attack[(p["norm"], a["name"])].setdefault(float(p["eps"]), a["label"])
    curves: dict[str, list[tuple[float, str]]] = {}
    for norm in sorted({norm for norm, _ in by_attack}, key=lambda s: (s != "linf", s)):
        name = max((nm for nrm, nm in by_attack if nrm == norm), key=lambda nm: (len(by_attack[(norm, nm)]), nm == "pgd", nm))
        curves[norm] = sorted(by_attack[(norm, name)].items())
    return curves


def _colors(rows: list[Row]) -> list:
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab20").colors
    return [palette[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20] for i in range(len(rows))]


def _limits(values: list[float]) -> tuple[float, float]:
    """Axis limits around the data, inside [0, 100]: a one-row plot never runs past 100%."""
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return 0.0, 100.0
    lo, hi = min(vals), max(vals)
    pad = max(2.0, 0.08 * (hi - lo))
    return max(0.0, lo - pad), min(100.0, hi + pad)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # no timestamp or version metadata, so the same records give the same bytes
    fig.savefig(path, format="png", metadata={"Software": None})


def plot(task: Task, records: list[dict], path: Path) -> bool:
    """Clean against the headline metric, one point per configuration with its 95% intervals, for the
    main evaluation protocol (collapsed models hollow)."""
    groups = protocol_groups([r for r in records if r["task"]["name"] == task.name])
    if not groups:
        return False
    rows = build_rows(groups[0], task)
    col = rows[0].headline[0]
    if col == "clean" or not any(v is not None for row in rows for v in row.values.get(col, [])):
        return False
    metric = rows[0].metric
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.8), dpi=100)
    xs, ys, bars = [], [], False
    for row, color in zip(rows, _colors(rows)):
        c, h = row.interval("clean"), row.interval(col)
        if h.mean != h.mean:
            continue
        xerr = [[c.mean - c.low], [c.high - c.mean]] if c.low is not None else None
        yerr = [[h.mean - h.low], [h.high - h.mean]] if h.low is not None else None
        bars = bars or xerr is not None or yerr is not None
        ax.errorbar([c.mean], [h.mean], xerr=xerr, yerr=yerr, marker=MARKERS.get(row.method["name"], "x"),
                    color=color, markerfacecolor="none" if row.collapsed else color, label=_label(row),
                    linestyle="none", capsize=2)
        xs += [c.mean, c.low, c.high]
        ys += [h.mean, h.low, h.high]
    ax.set_xlim(*_limits(xs))
    ax.set_ylim(*_limits(ys))
    ax.set_xlabel(f"clean {metric} (%)")
    ax.set_ylabel(f"{_head(col, metric)} (%)")
    said = " (bars: 95% intervals)" if bars else " (these records carry no intervals)"
    ax.set_title(f"{task.name}: clean vs {_head(col, metric)}{said}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_budgets(task: Task, records: list[dict], path: Path) -> bool:
    """Robust metric against the attack budget, one panel per threat model (linf, l2), one line per
    configuration (mean over seeds, band = 95% interval), clean at budget 0."""
    groups = protocol_groups([r for r in records if r["task"]["name"] == task.name])
    if not groups:
        return False
    rows = build_rows(groups[0], task)
    curves = _budget_curves(rows)
    if not curves:
        return False
    metric = rows[0].metric
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from suite.params import fmt_value

    fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves) + 2.6, 4.4), dpi=100, squeeze=False)
    bands = False
    for ax, (norm, points) in zip(axes[0], curves.items()):
        budgets = [0.0] + [eps for eps, _ in points]
        for row, color in zip(rows, _colors(rows)):
            cells = [row.interval("clean")] + [row.interval(lbl) for _, lbl in points]
            if any(c.mean != c.mean for c in cells):
                continue
            ax.plot(budgets, [c.mean for c in cells], marker=MARKERS.get(row.method["name"], "x"), color=color,
                    markerfacecolor="none" if row.collapsed else color, linestyle="--" if row.collapsed else "-",
                    label=_label(row), markersize=4)
            if all(c.low is not None for c in cells):
                bands = True
                ax.fill_between(budgets, [c.low for c in cells], [c.high for c in cells], color=color, alpha=0.15,
                                linewidth=0)
        ax.set_xticks(budgets)
        ax.set_xticklabels(["0"] + [fmt_value(e) for e in budgets[1:]], fontsize=7, rotation=30)
        ax.set_title(points[0][1].rsplit(" ", 1)[0], fontsize=10)  # e.g. "PGD-10 linf"
        ax.set_xlabel(f"budget ({norm})")
        ax.set_ylabel(f"robust {metric} (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    said = "bands: 95% intervals" if bands else "these records carry no intervals"
    fig.suptitle(f"{task.name}: robustness against budget (budget 0 = clean; {said})", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def publish(tasks: list[Task], records: list[dict], out_dir: Path) -> list[Path]:
    written = []
    for task in tasks:
        mine = [r for r in records if r["task"]["name"] == task.name]
        if not mine:
            continue
        md = out_dir / f"{task.name}.md"
        md.write_text(render(task, mine))
        written.append(md)
        for name, draw in ((f"{task.name}.png", plot), (f"{task.name}_budget.png", plot_budgets)):
            if draw(task, mine, out_dir / name):
                written.append(out_dir / name)
    return written
