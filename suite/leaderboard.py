"""Leaderboards as a pure function of run records.

`render(task, records)` -> markdown, deterministic (same records, same bytes); `plot(...)` writes the
clean-vs-robust PNG beside it. One sort key: worst-case robust accuracy, then clean accuracy, both
descending (label as the last tie-break). Seeds of the same configuration are aggregated as
mean +- std. The paper's numbers, where a task carries them, are a separate table marked as
reported, never mixed with ours.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from suite.config import Task
from suite.records import canonical


def _config_key(rec: dict) -> str:
    """Everything that identifies a configuration except the seed."""
    return canonical({"model": rec.get("model"), "method": rec["method"]["name"], "params": rec["method"]["params"],
                      "train": rec["train"], "evaluation": rec["evaluation"], "task_version": rec["task"]["version"]})


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _cell(values: list[float]) -> str:
    m, s = _mean_std(values)
    if m != m:  # nan
        return "–"
    return f"{m:.1f}" if s is None else f"{m:.1f} ± {s:.1f}"


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
        self.stats: dict[str, list[dict]] = defaultdict(list)
        for r in self.records:
            for a in r["metrics"].get("attacks", []):
                self.attacks[a["label"]].append(a["accuracy"])
                if a.get("stats"):
                    self.stats[a["label"]].append(a["stats"])
        self.corruptions = [r["metrics"]["corruption_mean"] for r in self.records
                            if r["metrics"].get("corruption_mean") is not None]
        self.passes = first.get("cost", {}).get("passes_per_step")
        steps = [t for t in map(_time_per_step, self.records) if t]
        self.step_time = statistics.fmean(steps) if steps else None

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
            if len({canonical(r["evaluation"]) for r in firsts}) > 1:
                extra.append(f"eval={rec['run_id'][:6]}")
            row.label = f"{row.label} ({', '.join(extra)})" if extra else row.label


def build_rows(records: list[dict]) -> list[Row]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "complete":
            groups[_config_key(r)].append(r)
    rows = [Row(g) for g in groups.values()]
    _disambiguate(rows)
    return sorted(rows, key=Row.sort_key)


def _fmt_stat(stats: list[dict], key: str) -> str:
    vals = []
    for s in stats:
        if key == "success_rate":
            if s.get("attacked"):
                vals.append(100.0 * s.get("succeeded", 0) / s["attacked"])
        elif s.get(f"{key}_count"):
            vals.append(s[f"{key}_sum"] / s[f"{key}_count"])
    return _cell(vals)


def render(task: Task, records: list[dict]) -> str:
    records = [r for r in records if r["task"]["name"] == task.name]
    rows = build_rows(records)
    failed = sum(r["status"] == "failed" for r in records)
    attack_labels = sorted({lbl for row in rows for lbl in row.attacks}, key=_attack_order(rows))
    has_corr = any(row.corruptions for row in rows)
    st_times = [row.step_time for row in rows if row.method["name"] == "st" and row.step_time]
    st_time = statistics.fmean(st_times) if st_times else None
    metric = rows[0].records[0]["metrics"].get("metric", "accuracy") if rows else "accuracy"

    out = [f"# Leaderboard: {task.name}", "", task.description, ""]
    if not rows:
        out += ["No complete runs recorded yet. Run `python -m suite run --task "
                f"{task.name} --method st` (or a sweep), then `python -m suite leaderboard`.", ""]
    else:
        head = ["method", f"clean {metric}"] + attack_labels + ["worst case"]
        head += ["corruption mean"] if has_corr else []
        head += ["train cost vs ST", "passes/step", "seeds"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for row in rows:
            cost = f"{row.step_time / st_time:.2f}x" if (st_time and row.step_time) else "–"
            cells = [row.label, _cell(row.clean)] + [_cell(row.attacks.get(lbl, [])) for lbl in attack_labels]
            cells += [_cell(row.worst)]
            cells += [_cell(row.corruptions)] if has_corr else []
            passes = "–" if row.passes is None else f"{row.passes:.3g}"
            cells += [cost, passes, str(len(row.records))]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", _protocol(rows, attack_labels, failed), ""]
        details = _attack_details(rows)
        if details:
            out += details
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


def _protocol(rows: list[Row], attack_labels: list[str], failed: int) -> str:
    recs = [r for row in rows for r in row.records]
    ns = sorted({r["metrics"]["n"] for r in recs})
    epochs = sorted({r["train"]["epochs"] for r in recs})
    bs = sorted({r["train"]["batch_size"] for r in recs})
    opts = sorted({f"{r['train']['optimizer']} lr {r['train']['lr']:g}, {r['train']['schedule']} schedule" for r in recs})
    devices = sorted({r.get("cost", {}).get("device", "?") for r in recs})
    versions = sorted({r["task"]["version"] for r in recs})
    # a local model directory is named by its last two path parts, not the machine's absolute path
    models = sorted({"/".join(Path(str(r["model"])).parts[-2:]) if Path(str(r["model"])).is_absolute()
                     else str(r["model"]) for r in recs if r.get("model")})
    parts = [
        f"**Protocol.** Accuracy in % on the first {'/'.join(map(str, ns))} test examples; "
        f"attacks: {', '.join(attack_labels) if attack_labels else 'none'} (each run on every clean-correct "
        "example; worst case = robust to all of them, per example)",
        f"training: epochs {'/'.join(map(str, epochs))}, batch {'/'.join(map(str, bs))}, {'; '.join(opts)}",
        f"task version {', '.join(versions)}" + (f", model {', '.join(models)}" if models else ""),
        f"hardware: {'; '.join(devices)}",
        "cost = measured training time per step relative to ST on the same task; passes/step = declared "
        "forward-backward passes per step; mean ± std over seeds",
    ]
    if failed:
        parts.append(f"{failed} failed run(s) recorded, not shown")
    return "; ".join(parts) + "."


def _attack_details(rows: list[Row]) -> list[str]:
    with_stats = [(row, lbl) for row in rows for lbl in sorted(row.stats)]
    if not with_stats:
        return []
    keys = sorted({k[: -len("_sum")] for row, lbl in with_stats for s in row.stats[lbl] for k in s
                   if k.endswith("_sum")})
    head = ["method", "attack", "accuracy under attack", "success rate"] + [f"avg {k.replace('_', ' ')}" for k in keys]
    head += ["examples"]
    lines = ["### Attack details", "", "| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for row, lbl in with_stats:
        st = row.stats[lbl]
        n = sorted({r["metrics"]["n"] for r in row.records})
        cells = [row.label, lbl, _cell(row.attacks[lbl]), _fmt_stat(st, "success_rate")]
        cells += [_fmt_stat(st, k) for k in keys] + ["/".join(map(str, n))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def plot(task: Task, records: list[dict], path: Path) -> bool:
    """Clean vs worst-case robust accuracy, one point per configuration (mean +- std over seeds)."""
    rows = [row for row in build_rows([r for r in records if r["task"]["name"] == task.name])
            if any(w is not None for w in row.worst)]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.8), dpi=100)
    colors = plt.get_cmap("tab20").colors
    markers = {"st": "o", "sam": "s", "asam": "D", "esam": "P", "at": "^", "fast_at": "v"}
    for i, row in enumerate(rows):
        c, cs = _mean_std(row.clean)
        w, ws = _mean_std(row.worst)
        ax.errorbar([c], [w], xerr=[cs or 0.0], yerr=[ws or 0.0], marker=markers.get(row.method["name"], "x"),
                    color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], label=row.label, linestyle="none", capsize=2)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("worst-case robust accuracy (%)")
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


