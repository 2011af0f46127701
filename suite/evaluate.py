"""Evaluation: the clean metric, then each attack of the suite, combined per example.

Which examples. The evaluated set is a seeded subset of the test split (`suite.subsets`:
class-stratified by default, the whole split when `n_examples` is 0), the same for every method of
a task. An attack may run on fewer (`deepwordbug:n=300`): its examples are a nested stratified part
of the evaluated set, again the same for every method.

Per example. Like AutoAttack, results are kept per example: the adapter turns a model output into
per-example statistics (classification: "correct"; segmentation: a confusion matrix per image) and
scores them (correct = 1; pixel accuracy). An attack's statistics for an example come from the
adversarial input it returns (or, for attacks that edit words, from its success flag). The *worst
case* over the suite is, per example, the lowest-scoring of the clean result and every attack's,
taken over the examples that every attack saw (the smallest attack subset); its metric is the
adapter's summary of those statistics (accuracy; mIoU of the summed confusion matrices).

Classification attacks run only on clean-correct examples (the others are wrong already and keep
their clean statistics); segmentation attacks run on every image.

The per-example statistics are saved after every batch, so an interrupted evaluation resumes where
it stopped and gives the same numbers (attack randomness is seeded per attack and batch).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from suite import subsets
from suite.attacks.base import AttackSpec
from suite.modalities.base import Adapter


def eval_batches(dataset, batch_size: int, collate=None):
    """Batches in order. In-memory tensors are sliced directly; anything else goes through a DataLoader."""
    from suite.train import in_memory

    if in_memory(dataset) and collate is None:
        tensors = dataset.tensors
        return [tuple(t[i:i + batch_size] for t in tensors) for i in range(0, len(dataset), batch_size)]
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def evaluate(
    model: torch.nn.Module,
    adapter: Adapter,
    dataset,
    attacks: Sequence[AttackSpec],
    *,
    batch_size: int,
    device: torch.device,
    collate=None,
    state_path: Path | None = None,
    seed: int = 0,
    n_examples: int = 0,
    subset_strategy: str = "stratified",
    subset_seed: int = 0,
    checks: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    model.to(device).eval()
    built = [spec.build(adapter) for spec in attacks]
    total = len(dataset)
    n_eval = n_examples if n_examples and n_examples < total else total
    sizes = [n_eval] + [min(spec.n, n_eval) if spec.n else n_eval for spec in attacks]
    chosen = subsets.nested(dataset, sizes, subset_strategy, subset_seed)
    eval_idx, attack_idx = chosen[0], chosen[1:]
    view = subsets.subset(dataset, eval_idx)
    n = len(eval_idx)
    # which evaluated examples each attack covers (nested subsets: positions inside eval_idx)
    covers = []
    for idx in attack_idx:
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.as_tensor(np.searchsorted(eval_idx, idx), dtype=torch.long)] = True
        covers.append(m)
    key = {"n": n, "indices": subsets.indices_hash(eval_idx), "specs": [repr(a) for a in attacks]}
    state = _load_state(state_path, key, len(attacks))
    t0 = time.perf_counter()

    # clean pass
    if state["clean"] is None:
        parts = []
        with torch.no_grad():
            for batch in eval_batches(view, batch_size, collate):
                batch = adapter.to_device(batch, device)
                parts.append(adapter.example_stats(adapter.forward(model, batch), batch).cpu())
        state["clean"] = torch.cat(parts)
        _save_state(state_path, state)
    clean = state["clean"]
    clean_score = adapter.example_score(clean)

    if checks and built:
        try:
            from suite.attacks.sanity import check_model
        except ImportError:  # TEMPORARY until the sanity module lands
            check_model = lambda *a: None  # noqa: E731
        first = next(iter(eval_batches(view, min(batch_size, 64), collate)))
        check_model(model, adapter, adapter.to_device(first, device), device)

    # attacks, batch by batch (resumable at batch granularity)
    for i, attack in enumerate(built):
        done, stats, extra_acc = state["done"][i], state["stats"][i], state["extra"][i]
        if stats is None:
            stats = state["stats"][i] = clean.clone()
        todo = covers[i] & ~done
        if not todo.any():
            continue
        batches = eval_batches(view, batch_size, collate)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"attack {attack.label()}", leave=False, dynamic_ncols=True)
        for b, batch in enumerate(batches):
            lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
            want = covers[i][lo:hi] & ~done[lo:hi]
            if not want.any():
                continue
            if adapter.attack_only_correct:
                # classification: a misclassified example is not attacked; it keeps its clean statistics
                want = want & (clean_score[lo:hi] > 0)
            # random starts: seeded per (attack, batch), so a resumed evaluation draws the same
            # numbers for the batches it still has to run as an uninterrupted one would
            torch.manual_seed(seed + 7919 * (i + 1) + 1_000_003 * b)
            idx = torch.nonzero(want).flatten()
            if len(idx):
                batch = adapter.to_device(batch, device)
                sub = adapter.subset(batch, idx.to(device))
                res = attack.run(model, sub)
                stats[lo + idx] = _attacked_stats(model, adapter, sub, res, clean[lo + idx])
                for k, v in (res.extra or {}).items():
                    extra_acc[k] = extra_acc.get(k, 0.0) + float(v)
                state["attacked"][i] += len(idx)
            done[lo:hi] |= covers[i][lo:hi]
            _save_state(state_path, state)

    metric = adapter.metric
    clean_summary = adapter.summarize(clean)
    per_attack = []
    worst = covers[0].clone() if built else None
    worst_stats, worst_score = clean.clone(), clean_score.clone()
    for i, (attack, spec) in enumerate(zip(built, attacks)):
        stats, cov = state["stats"][i], covers[i]
        summary = adapter.summarize(stats[cov])
        entry = {"name": spec.name, "label": attack.label(), "params": dict(attack.p), "value": summary[metric],
                 "n": int(cov.sum()), "attacked": int(state["attacked"][i]),
                 "subset": subsets.indices_hash(attack_idx[i])}
        if set(summary) != {metric}:
            entry["metrics"] = summary
        if state["extra"][i]:
            entry["stats"] = {k: v for k, v in sorted(state["extra"][i].items())}
        per_attack.append(entry)
        worst &= cov
        score = adapter.example_score(stats)
        lower = score < worst_score
        worst_stats[lower] = stats[lower]
        worst_score = torch.minimum(worst_score, score)
    metrics = {
        "metric": metric,
        "n": n,
        "subset": subsets.describe(subset_strategy, subset_seed, eval_idx, total),
        "clean": clean_summary[metric],
        "attacks": per_attack,
        "worst_case": None,
        "worst_case_n": 0,
        "eval_time_s": time.perf_counter() - t0,  # this session's time (a resumed evaluation counts only its own part)
    }
    if set(clean_summary) != {metric}:
        metrics["clean_metrics"] = clean_summary
    if built:
        worst_summary = adapter.summarize(worst_stats[worst])
        metrics["worst_case"] = worst_summary[metric]
        metrics["worst_case_n"] = int(worst.sum())
        if set(worst_summary) != {metric}:
            metrics["worst_case_metrics"] = worst_summary
    return metrics


def _attacked_stats(model, adapter, batch, res, clean_stats):
    """Per-example statistics under attack: from the adversarial input, else from the success flags."""
    if res.adversarial is not None:
        with torch.no_grad():
            out = adapter.forward_surface(model, batch, res.adversarial)
        return adapter.example_stats(out, batch).cpu()
    if res.success is None:
        raise RuntimeError("an attack returned neither adversarial inputs nor success flags")
    if not adapter.attack_only_correct:
        raise RuntimeError(f"attacks on modality {adapter.name!r} must return adversarial inputs")
    # classification, examples that were correct: correct under attack unless the attack succeeded
    return clean_stats & ~res.success.cpu().to(torch.bool)


def _load_state(path: Path | None, key: dict, k: int) -> dict:
    fresh = {"key": key, "clean": None, "done": [torch.zeros(key["n"], dtype=torch.bool) for _ in range(k)],
             "stats": [None] * k, "attacked": [0] * k, "extra": [{} for _ in range(k)]}
    if path is None or not path.exists():
        return fresh
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return fresh  # a half-written or foreign state is recomputed, never trusted
    if not isinstance(state, dict) or state.get("key") != key:
        return fresh
    return state


def _save_state(path: Path | None, state: dict) -> None:
    if path is None:
        return
    from suite.train import atomic_save
    atomic_save(state, path)
