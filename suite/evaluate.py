"""Evaluation: the clean metric, then each attack of the suite, combined per example.

Which examples. The evaluated set is a seeded subset of the test split (`suite.subsets`:
class-stratified by default, the whole split when `n_examples` is 0), the same for every method of
a task. An attack may run on fewer (`deepwordbug:n=300`): its examples are a nested stratified part
of the evaluated set, again the same for every method.

Per example. Like AutoAttack, results are kept per example: the adapter turns a model output into
per-example statistics (classification: "correct"; segmentation: a confusion matrix per image) and
scores them (correct = 1; pixel accuracy). An attack's statistics for an example come from the
adversarial input it returns (or, for attacks that edit words, from its success flag). The *worst
case* is taken within one threat family (`Attack.threat`: the norm-bounded attacks together; a
spatial, pixel or text-edit attack is a family of its own): per example, the lowest-scoring of the
clean result and every attack's of that family, over the examples all of them saw; its metric is the
adapter's summary of those statistics (accuracy; mIoU of the summed confusion matrices). The record's
`worst_case` is the norm-bounded family's; `worst_by_threat` lists every family's.

Records keep every example's outcome (`metrics["outcomes"]`, suite.outcomes: clean and per attack,
the predicted class) and the histogram of clean predictions, so boards can compare two rows on the
same examples and flag a near-constant model.

Classification attacks run only on clean-correct examples (the others are wrong already and keep
their clean statistics); segmentation attacks run on every image.

The per-example statistics are saved after every batch, so an interrupted evaluation resumes where
it stopped and gives the same numbers (attack randomness is seeded per attack and batch).

Several processes (torchrun): batch b is evaluated by rank b mod W; after each round of W batches the
ranks exchange their per-example statistics, so every rank holds the whole state, and rank 0 saves
it (in the same format as one process: a state saved under any number of processes resumes under
any other). Since each batch's attack is seeded by (attack, batch), the numbers are exactly those of
one process.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from suite import distributed as D
from suite import outcomes, subsets
from suite.attacks.base import AttackSpec
from suite.modalities.base import Adapter


def eval_batches(dataset, batch_size: int, collate=None):
    """Batches in order. In-memory tensors are sliced directly; anything else goes through a DataLoader."""
    from suite.train import in_memory

    if in_memory(dataset) and collate is None:
        tensors = dataset.tensors
        return [tuple(t[i:i + batch_size] for t in tensors) for i in range(0, len(dataset), batch_size)]
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _batches_of(dataset, batch_size: int, collate, wanted: list[int]):
    """(b, batch) for the batch numbers in `wanted` (increasing), loading only those."""
    from suite.train import in_memory

    if in_memory(dataset) and collate is None:
        tensors = dataset.tensors
        return [(b, tuple(t[b * batch_size:(b + 1) * batch_size] for t in tensors)) for b in wanted]
    n = len(dataset)
    sampler = [list(range(b * batch_size, min(n, (b + 1) * batch_size))) for b in wanted]
    return zip(wanted, DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))


def _merged(mine: dict) -> dict:
    """{batch: result} of every rank (each batch is computed by exactly one rank)."""
    from suite import distributed as D

    out = {}
    for part in D.gather_objects(mine):
        out.update(part)
    return out


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
    data_fingerprint: str = "",
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
    key = {"n": n, "indices": subsets.indices_hash(eval_idx), "specs": [repr(a) for a in attacks],
           "outcomes": outcomes.FORMAT}
    world, rank = D.world_size(), D.rank()
    state = D.broadcast_object(_load_state(state_path, key, len(attacks), data_fingerprint) if D.is_main() else None)
    t0 = time.perf_counter()
    n_batches = -(-n // batch_size)

    # clean pass (batch b on rank b mod world)
    if state["clean"] is None:
        parts = {}
        with torch.no_grad():
            for b, batch in _batches_of(view, batch_size, collate, list(range(rank, n_batches, world))):
                batch = adapter.to_device(batch, device)
                out = adapter.forward(model, batch)
                pred = adapter.predictions(out)
                parts[b] = (adapter.example_stats(out, batch).cpu(), None if pred is None else pred.cpu())
        parts = _merged(parts) if world > 1 else parts
        order = sorted(parts)
        state["clean"] = torch.cat([parts[b][0] for b in order]) if parts else torch.zeros(0, dtype=torch.bool)
        state["predicted"] = (torch.cat([parts[b][1] for b in order])
                              if parts and parts[order[0]][1] is not None else None)
        _save_state(state_path, state)
    clean = state["clean"]
    clean_score = adapter.example_score(clean)

    if checks and built:
        from suite.attacks.sanity import check_model
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
        # the batches that still have examples to attack; each round gives one to every rank
        pending = [b for b in range(n_batches) if todo[b * batch_size:(b + 1) * batch_size].any()]
        rounds = [pending[j:j + world] for j in range(0, len(pending), world)]
        if progress and D.is_main():
            from tqdm.auto import tqdm
            rounds = tqdm(rounds, desc=f"attack {attack.label()}", leave=False, dynamic_ncols=True)
        for group in rounds:
            results = {}
            for b, batch in _batches_of(view, batch_size, collate, group[rank:rank + 1]):
                results[b] = _attack_batch(model, adapter, attack, batch, b, i, seed, device, covers[i], done,
                                           clean, clean_score, batch_size, n)
            if world > 1:
                results = _merged(results)
            for b in sorted(results):  # in batch order, as one process adds them up
                lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
                res = results[b]
                if res is not None:
                    idx, attacked, extra = res
                    stats[lo + idx] = attacked
                    for k, v in extra.items():
                        extra_acc[k] = extra_acc.get(k, 0.0) + v
                    state["attacked"][i] += len(idx)
                done[lo:hi] |= covers[i][lo:hi]
            _save_state(state_path, state)

    metric = adapter.metric
    clean_summary = adapter.summarize(clean)
    per_attack = []
    for i, (attack, spec) in enumerate(zip(built, attacks)):
        summary = adapter.summarize(state["stats"][i][covers[i]])
        entry = {"name": spec.name, "label": attack.label(), "params": dict(attack.p), "value": summary[metric],
                 "n": int(covers[i].sum()), "attacked": int(state["attacked"][i]),
                 "subset": subsets.indices_hash(attack_idx[i]), "threat": attack.threat}
        if set(summary) != {metric}:
            entry["metrics"] = summary
        if state["extra"][i]:
            entry["stats"] = {k: v for k, v in sorted(state["extra"][i].items())}
        per_attack.append(entry)
    metrics = {
        "metric": metric,
        "n": n,
        "subset": subsets.describe(subset_strategy, subset_seed, eval_idx, total),
        "clean": clean_summary[metric],
        "attacks": per_attack,
        "worst_case": None,
        "worst_case_n": 0,
        "worst_case_threat": outcomes.NORM_BOUNDED,
        "eval_time_s": time.perf_counter() - t0,  # this session's time (a resumed evaluation counts only its own part)
    }
    if set(clean_summary) != {metric}:
        metrics["clean_metrics"] = clean_summary
    # the worst case per example within each threat family, never across families
    families = list(dict.fromkeys(a.threat for a in built))
    metrics["worst_by_threat"] = [_worst_case(adapter, clean, state, covers,
                                              [i for i, a in enumerate(built) if a.threat == fam], fam)
                                  for fam in families]
    for fam in metrics["worst_by_threat"]:
        if fam["threat"] == outcomes.NORM_BOUNDED:
            metrics["worst_case"], metrics["worst_case_n"] = fam["value"], fam["n"]
            if "metrics" in fam:
                metrics["worst_case_metrics"] = fam["metrics"]
    out = _outcomes(adapter, dataset, eval_idx, total, state, covers, built)
    metrics["outcomes"] = out.to_json()
    # the histogram of clean predictions (examples; pixels for segmentation), so a near-constant model
    # can be told from a robust one
    metrics["predictions"] = {"histogram": [int(v) for v in out.prediction_histogram()],
                              "unit": "examples" if out.kind == "correct" else "pixels"}
    return metrics


def evaluate_corruptions(model, adapter, folder, items, *, dataset_name: str, batch_size: int, device,
                         n_examples: int = 0, subset_strategy: str = "stratified", subset_seed: int = 0) -> dict:
    """The clean metric under each corruption (CIFAR-10-C style files), on a subset of the corrupted
    test images chosen from their own labels the same way as the evaluation subset (so every method
    sees the same images), and the mean over the corruptions."""
    from suite.data import corruptions as C

    labels = C.block_labels(folder, dataset_name)
    proxy = torch.utils.data.TensorDataset(torch.zeros(len(labels), 0), torch.from_numpy(labels))
    idx = subsets.select(proxy, n_examples, subset_strategy, subset_seed)
    model.to(device).eval()
    rows = []
    for name, severity in items:
        ds = C.load_corruption(folder, name, severity, idx, dataset=dataset_name)
        parts = []
        with torch.no_grad():
            for batch in eval_batches(ds, batch_size):
                batch = adapter.to_device(batch, device)
                parts.append(adapter.example_stats(adapter.forward(model, batch), batch).cpu())
        value = adapter.summarize(torch.cat(parts))[adapter.metric]
        rows.append({"name": name, "severity": severity, "label": f"{name}:{severity}", "value": value,
                     "n": len(idx)})
    return {"dataset": dataset_name, "subset": subsets.describe(subset_strategy, subset_seed, idx, len(labels)),
            "items": rows, "mean": sum(r["value"] for r in rows) / len(rows)}


def _worst_case(adapter, clean, state, covers, members: list[int], threat: str) -> dict:
    """Per example, the lowest-scoring of the clean statistics and those of every attack in `members`,
    over the examples all of them covered; summarized with the adapter's metrics."""
    cover = covers[members[0]].clone()
    worst_stats, worst_score = clean.clone(), adapter.example_score(clean)
    for i in members:
        cover &= covers[i]
        score = adapter.example_score(state["stats"][i])
        lower = score < worst_score
        worst_stats[lower] = state["stats"][i][lower]
        worst_score = torch.minimum(worst_score, score)
    summary = adapter.summarize(worst_stats[cover])
    out = {"threat": threat, "value": summary[adapter.metric], "n": int(cover.sum()), "attacks": len(members)}
    if set(summary) != {adapter.metric}:
        out["metrics"] = summary
    return out


def _outcomes(adapter, dataset, eval_idx, total, state, covers, built) -> outcomes.Outcomes:
    """Every evaluated example's outcome, clean and per attack, for paired comparisons (suite.outcomes)."""
    clean = adapter.outcome_array(state["clean"])
    predicted = state.get("predicted")
    labels = subsets.dataset_labels(dataset)
    hist = None
    if labels is not None and adapter.outcome_kind == "correct":
        classes = getattr(adapter.task, "num_classes", 0) or 0
        hist = np.bincount(np.asarray(labels)[eval_idx].astype(np.int64), minlength=classes)
    rows = [(a.label(), a.threat, covers[i].numpy().astype(bool), adapter.outcome_array(state["stats"][i]))
            for i, a in enumerate(built)]
    return outcomes.Outcomes(adapter.outcome_kind, total, np.asarray(eval_idx), clean,
                             None if predicted is None else predicted.numpy().astype(np.int64), rows,
                             hist)


def _attack_batch(model, adapter, attack, batch, b, i, seed, device, cover, done, clean, clean_score,
                  batch_size, n):
    """Attack i on batch b: (positions in the batch, their statistics under attack, extra numbers),
    or None when no example of the batch is attacked."""
    lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
    want = cover[lo:hi] & ~done[lo:hi]
    if adapter.attack_only_correct:
        # classification: a misclassified example is not attacked; it keeps its clean statistics
        want = want & (clean_score[lo:hi] > 0)
    # random starts: seeded per (attack, batch), so a resumed (or sharded) evaluation draws the same
    # numbers for the batches it still has to run as an uninterrupted one would
    torch.manual_seed(seed + 7919 * (i + 1) + 1_000_003 * b)
    idx = torch.nonzero(want).flatten()
    if not len(idx):
        return None
    batch = adapter.to_device(batch, device)
    sub = adapter.subset(batch, idx.to(device))
    res = attack.run(model, sub)
    attacked = _attacked_stats(model, adapter, sub, res, clean[lo + idx])
    return idx, attacked, {k: float(v) for k, v in (res.extra or {}).items()}


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


def _load_state(path: Path | None, key: dict, k: int, data_fingerprint: str = "") -> dict:
    """The saved state of this evaluation, or a fresh one. A state of other data (its data fingerprint
    differs; the runner refuses such a state in one line before anything runs) is never resumed."""
    fresh = {"key": key, "clean": None, "predicted": None, "done": [torch.zeros(key["n"], dtype=torch.bool) for _ in range(k)],
             "stats": [None] * k, "attacked": [0] * k, "extra": [{} for _ in range(k)],
             "data_fingerprint": data_fingerprint}
    if path is None or not path.exists():
        return fresh
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return fresh  # a half-written or foreign state is recomputed, never trusted
    if not isinstance(state, dict) or state.get("key") != key:
        return fresh
    if data_fingerprint and state.setdefault("data_fingerprint", data_fingerprint) != data_fingerprint:
        return fresh
    return state


def _save_state(path: Path | None, state: dict) -> None:
    from suite import distributed as D

    if path is None or not D.is_main():  # every rank holds the merged state; rank 0 writes it
        return
    from suite.train import atomic_save
    atomic_save(state, path)
