"""Evaluation: the clean metric, then each attack of the suite, combined per example.

Like AutoAttack, robustness is tracked per example: an example counts as robust under the suite
only if it is classified correctly and no attack succeeds on it (the worst case). Each attack is
run on every clean-correct example so that its own accuracy can be reported too. The per-example
flags are saved after every batch, so an interrupted evaluation resumes where it stopped.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from suite.attacks.base import AttackSpec
from suite.modalities.base import Adapter


def eval_subset(dataset, n: int):
    """The first n examples of the test split (the paper evaluates on the first 1000 test images)."""
    return dataset if not n or n >= len(dataset) else Subset(dataset, range(n))


def _batches(dataset, batch_size, collate):
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
    progress: bool = False,
) -> dict[str, Any]:
    model.to(device).eval()
    built = [spec.build(adapter) for spec in attacks]
    n = len(dataset)
    state = _load_state(state_path, n, [repr(a) for a in attacks])
    t0 = time.perf_counter()

    # clean pass
    if state["clean"] is None:
        flags = []
        with torch.no_grad():
            for batch in _batches(dataset, batch_size, collate):
                batch = adapter.to_device(batch, device)
                flags.append(adapter.correct(adapter.forward(model, batch), batch).cpu())
        state["clean"] = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
        _save_state(state_path, state)

    # attacks, each on the clean-correct examples, batch by batch (resumable at batch granularity)
    for i, attack in enumerate(built):
        done, robust = state["done"][i], state["robust"][i]
        extra_acc: dict[str, float] = state["extra"][i]
        batches = _batches(dataset, batch_size, collate)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"attack {attack.label()}", leave=False, dynamic_ncols=True)
        for b, batch in enumerate(batches):
            lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
            if done[lo:hi].all():
                continue
            # random starts: seeded per (attack, batch), so a resumed evaluation draws the same
            # numbers for the batches it still has to run as an uninterrupted one would
            torch.manual_seed(seed + 7919 * (i + 1) + 1_000_003 * b)
            batch = adapter.to_device(batch, device)
            correct = state["clean"][lo:hi]
            idx = torch.nonzero(correct).flatten()
            r = torch.zeros(hi - lo, dtype=torch.bool)
            if len(idx):
                sub = adapter.subset(batch, idx.to(device))
                res = attack.run(model, sub)
                r[idx] = ~res.success.cpu()
                for k, v in (res.extra or {}).items():
                    extra_acc[k] = extra_acc.get(k, 0.0) + float(v)
            robust[lo:hi] = r
            done[lo:hi] = True
            _save_state(state_path, state)

    clean = state["clean"]
    worst = clean.clone()
    per_attack = []
    for attack, spec, robust, extra in zip(built, attacks, state["robust"], state["extra"]):
        worst &= robust
        entry = {"name": spec.name, "label": attack.label(), "params": dict(attack.p),
                 "accuracy": _pct(robust), "n": n}
        if extra:
            entry["stats"] = {k: v for k, v in sorted(extra.items())}
        per_attack.append(entry)
    metrics = {
        "metric": adapter.metric,
        "n": n,
        "clean": _pct(clean),
        "attacks": per_attack,
        "worst_case": _pct(worst) if built else None,
        "eval_time_s": time.perf_counter() - t0,  # this session's time (a resumed evaluation counts only its own part)
    }
    return metrics


def _pct(flags: torch.Tensor) -> float:
    return 100.0 * flags.float().mean().item() if len(flags) else float("nan")


def _load_state(path: Path | None, n: int, specs: list[str]) -> dict:
    k = len(specs)
    fresh = {"n": n, "specs": specs, "clean": None, "done": [torch.zeros(n, dtype=torch.bool) for _ in range(k)],
             "robust": [torch.zeros(n, dtype=torch.bool) for _ in range(k)], "extra": [{} for _ in range(k)]}
    if path is None or not path.exists():
        return fresh
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return fresh  # a half-written state is recomputed, never trusted
    if state.get("n") != n or state.get("specs") != specs:
        return fresh
    return state


def _save_state(path: Path | None, state: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
