"""Leaderboards as a pure function of run records.

`render(task, records)` -> markdown, deterministic (same records, same bytes); `plot(...)` writes the
clean-vs-robust PNG beside it.

- Rows are configurations (everything but the seed), aggregated as mean +- std over seeds.
- Runs evaluated differently (another attack suite, another evaluation subset, other analyses) are
  never ranked together: each evaluation protocol gets its own table with its own protocol line,
  the protocol with the most runs first.
- One sort key per table: worst-case robust metric, then clean metric, both descending (label last).
- Training cost: each row's measured time per step relative to ST trained with the same settings
  (same model, recipe and training subset), so ST itself reads 1.00x.
- The paper's numbers, where a task carries them, are a separate table marked as reported.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from suite.config import Task
from suite.records import canonical

BASELINE = "st"


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


class Row:
    def __init__(self, records: list[dict]):
        self.records = sorted(records, key=lambda r: (r["seed"], r["run_id"]))
        first = self.records[0]
        self.method = first["method"]
        self.label = first["method"].get("label") or first["method"]["name"]
        self.clean = [r["metrics"]["clean"] for r in self.records]
        self.worst = [r["metrics"].get("worst_case") for r in self.records]
        self.attacks: dict[str, list[float]] = defaultdict(list)
        self.attack_n: dict[str, set] = defaultdict(set)
        self.attacked: dict[str, list[int]] = defaultdict(list)
        self.stats: dict[str, list[dict]] = defaultdict(list)
        self.secondary: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.analysis: dict[str, list[float]] = defaultdict(list)
        for r in self.records:
            m = r["metrics"]
            for key, val in (m.get("clean_metrics") or {}).items():
                if isinstance(val, (int, float)):
                    self.secondary["clean"][key].append(val)
            for key, val in (m.get("worst_case_metrics") or {}).items():
                if isinstance(val, (int, float)):
                    self.secondary["worst case"][key].append(val)
            for a in m.get("attacks", []):
                self.attacks[a["label"]].append(a["value"])
                self.attack_n[a["label"]].add(a["n"])
                self.attacked[a["label"]].append(a.get("attacked", a["n"]))
                if a.get("stats"):
                    self.stats[a["label"]].append(a["stats"])
                for key, val in (a.get("metrics") or {}).items():
                    if isinstance(val, (int, float)):
                        self.secondary[a["label"]][key].append(val)
            for a in m.get("analysis", []):
                self.analysis[a["label"]].append(a["value"])
        self.corruptions = [r["metrics"]["corruption_mean"] for r in self.records
                            if r["metrics"].get("corruption_mean") is not None]
        self.per_corruption: dict[str, list[float]] = defaultdict(list)
        for r in self.records:
            for item in (r["metrics"].get("corruptions") or {}).get("items", []):
                self.per_corruption[item["label"]].append(item["value"])
        self.passes = first.get("cost", {}).get("passes_per_step")
        steps = [t for t in map(_time_per_step, self.records) if t]
        self.step_time = statistics.fmean(steps) if steps else None
        self.train_key = _train_key(first)

    def sort_key(self):
        w, _ = _mean_std(self.worst)
        c, _ = _mean_std(self.clean)
        return (-(w if w == w else -1.0), -(c if c == c else -1.0), self.label)


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
                extra.append(f"model={Path(str(rec.get('model'))).name}")
            row.label = f"{row.label} ({', '.join(extra)})" if extra else row.label


def build_rows(records: list[dict]) -> list[Row]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "complete":
            groups[_config_key(r)].append(r)
    rows = [Row(g) for g in groups.values()]
    _disambiguate(rows)
    return sorted(rows, key=Row.sort_key)


def protocol_groups(records: list[dict]) -> list[list[dict]]:
    """Complete records split by evaluation protocol; the protocol with the most runs first."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "complete":
            groups[_eval_key(r)].append(r)
    return sorted(groups.values(), key=lambda g: (-len(g), min(r["run_id"] for r in g)))


def _baselines(rows: list[Row]) -> dict[str, float]:
    """ST time per step for each training setting."""
    times: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.method["name"] == BASELINE and row.step_time:
            times[row.train_key].append(row.step_time)
    return {k: statistics.fmean(v) for k, v in times.items()}


def _fmt_stat(stats: list[dict], key: str) -> str:
    vals = []
    for s in stats:
        if key == "success_rate":
            if s.get("attacked"):
                vals.append(100.0 * s.get("succeeded", 0) / s["attacked"])
        elif s.get(f"{key}_count"):
            vals.append(s[f"{key}_sum"] / s[f"{key}_count"])
    return _cell(vals)


def _table(rows: list[Row], baselines: dict[str, float], metric: str) -> list[str]:
    attack_labels = sorted({lbl for row in rows for lbl in row.attacks}, key=_attack_order(rows))
    analysis_labels = sorted({lbl for row in rows for lbl in row.analysis})
    has_corr = any(row.corruptions for row in rows)
    head = ["method", f"clean {metric}"] + attack_labels + ["worst case"]
    head += ["corruption mean"] if has_corr else []
    head += analysis_labels
    head += ["train cost vs ST", "passes/step", "seeds"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        base = baselines.get(row.train_key)
        cost = f"{row.step_time / base:.2f}x" if (base and row.step_time) else "–"
        cells = [row.label, _cell(row.clean)] + [_cell(row.attacks.get(lbl, [])) for lbl in attack_labels]
        cells += [_cell(row.worst)]
        cells += [_cell(row.corruptions)] if has_corr else []
        cells += [_cell_g(row.analysis.get(lbl, [])) for lbl in analysis_labels]
        passes = "–" if row.passes is None else f"{row.passes:.3g}"
        cells += [cost, passes, str(len(row.records))]
        out.append("| " + " | ".join(cells) + " |")
    return out


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


def render(task: Task, records: list[dict]) -> str:
    records = [r for r in records if r["task"]["name"] == task.name]
    failed = sum(r["status"] == "failed" for r in records)
    groups = protocol_groups(records)
    all_rows = build_rows(records)
    baselines = _baselines(all_rows)

    out = [f"# Leaderboard: {task.name}", "", task.description, ""]
    if not groups:
        out += ["No complete runs recorded yet. Run `python -m suite run --task "
                f"{task.name} --method st` (or a sweep), then `python -m suite leaderboard`.", ""]
    for gi, group in enumerate(groups):
        rows = build_rows(group)
        metric = rows[0].records[0]["metrics"].get("metric", "accuracy")
        if len(groups) > 1:
            out += [f"## Evaluation protocol {chr(ord('A') + gi)}" + (" (main)" if gi == 0 else ""), ""]
        out += _table(rows, baselines, metric)
        out += ["", _protocol(rows, metric, failed if gi == 0 else 0), ""]
        out += _secondary_table(rows, metric)
        out += _corruption_table(rows)
        out += _attack_details(rows)
    if groups:
        out += [f"![clean vs robust]({task.name}.png)", ""]
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
    worst_n = first.get("worst_case_n", n)
    skip = ("each attack runs on the clean-correct examples it covers" if metric == "accuracy"
            else "each attack runs on every example it covers")
    trained = [r for r in recs if r["train"]]
    said = metric if any(c.isupper() for c in metric) else metric.capitalize()  # "Accuracy", "mIoU"
    parts = [
        f"**Protocol.** {said} in % on {chosen}; attacks: "
        f"{'; '.join(attack_parts) if attack_parts else 'none'} ({skip}; worst case = per example the worst of "
        f"clean and every attack, over the {worst_n} examples every attack saw)",
    ]
    if first.get("analysis"):
        parts.append("analyses: " + "; ".join(f"{a['label']} ({_fmt_params(a['params'])})" for a in first["analysis"]))
    if trained:
        epochs = _join({r["train"]["epochs"] for r in trained})
        bs = _join({r["train"]["batch_size"] for r in trained})
        opts = sorted({_recipe(r["train"]) for r in trained})
        sizes = sorted({r.get("cost", {}).get("train_examples") for r in trained if r.get("cost", {}).get("train_examples")})
        parts.append(f"training: epochs {epochs}, batch {bs}, {'; '.join(opts)}"
                     + (f", {_join(sizes)} training examples" if sizes else ""))
    versions = sorted({r["task"]["version"] for r in recs})
    # a local model directory is named by its last two path parts, not the machine's absolute path
    models = sorted({"/".join(Path(str(r["model"])).parts[-2:]) if Path(str(r["model"])).is_absolute()
                     else str(r["model"]) for r in recs if r.get("model")})
    parts.append(f"task version {', '.join(versions)}" + (f", model {', '.join(models)}" if models else ""))
    data = sorted({r["provenance"].get("data_fingerprint") for r in recs if r["provenance"].get("data_fingerprint")})
    if data:
        parts.append(f"data {', '.join(data)}")
    commits = sorted({(r["provenance"].get("git_commit") or "?")[:10] + ("+dirty" if r["provenance"].get("git_dirty")
                                                                          else "") for r in recs})
    parts.append(f"suite commit {', '.join(commits)}")
    devices = sorted({r.get("cost", {}).get("device", "?") for r in recs})
    parts.append(f"hardware: {'; '.join(devices)}")
    parts.append("cost = measured training time per step relative to ST with the same training settings, on a "
                 "shared machine (other jobs ran beside these runs, so ratios are indicative); passes/step = "
                 "declared forward-backward passes per step; mean ± std over seeds")
    if failed:
        parts.append(f"{failed} failed run(s) recorded, not shown")
    return "; ".join(parts) + "."


def _recipe(train: dict) -> str:
    s = f"{train['optimizer']} lr {train['lr']:g}, {train['schedule']} schedule"
    if train.get("warmup_epochs"):
        s += f", {train['warmup_epochs']:g}-epoch warm-up"
    return s


def _fmt_params(params: dict) -> str:
    from suite.params import fmt_value
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items())


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


def plot(task: Task, records: list[dict], path: Path) -> bool:
    """Clean vs worst-case robust metric, one point per configuration (mean +- std over seeds), for
    the main evaluation protocol."""
    groups = protocol_groups([r for r in records if r["task"]["name"] == task.name])
    if not groups:
        return False
    rows = [row for row in build_rows(groups[0]) if any(w is not None for w in row.worst)]
    if not rows:
        return False
    metric = rows[0].records[0]["metrics"].get("metric", "accuracy")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.8), dpi=100)
    colors = plt.get_cmap("tab20").colors
    markers = {"st": "o", "sam": "s", "asam": "D", "esam": "P", "at": "^", "fast_at": "v", "trades": "<",
               "awp": ">", "sam_at": "*", "checkpoint": "X"}
    for i, row in enumerate(rows):
        c, cs = _mean_std(row.clean)
        w, ws = _mean_std(row.worst)
        ax.errorbar([c], [w], xerr=[cs or 0.0], yerr=[ws or 0.0], marker=markers.get(row.method["name"], "x"),
                    color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], label=row.label, linestyle="none",
                    capsize=2)
    ax.set_xlabel(f"clean {metric} (%)")
    ax.set_ylabel(f"worst-case robust {metric} (%)")
    ax.set_title(f"{task.name}: clean vs robust")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # no timestamp or version metadata, so the same records give the same bytes
    fig.savefig(path, format="png", metadata={"Software": None})
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
        png = out_dir / f"{task.name}.png"
        if plot(task, mine, png):
            written.append(png)
    return written
