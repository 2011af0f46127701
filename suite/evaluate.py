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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from suite import distributed, outcomes, subsets
from suite.attacks.base import AttackSpec
from suite.checkpoint import load_eval_state, save_eval_state
from suite.data.batches import batches_of, eval_batches
from suite.modalities.base import Adapter


def _merged(mine: dict) -> dict:
    """{batch: result} of every rank (each batch is computed by exactly one rank)."""
    from suite import distributed

    out = {}
    for part in distributed.gather_objects(mine):
        out.update(part)
    return out


@dataclass
class Examples:
    """The evaluated examples: a nested seeded subset of the split, and which of them each attack sees."""

    view: Any                   # the evaluated subset of the dataset, in order
    total: int                  # the split's size
    eval_idx: np.ndarray        # positions of the evaluated examples in the split
    attack_idx: list            # per attack, positions in the split (nested in eval_idx)
    covers: list                # per attack, a bool mask over the evaluated examples
    batch_size: int
    collate: Any = None

    @property
    def n(self) -> int:
        return len(self.eval_idx)

    @property
    def n_batches(self) -> int:
        return -(-self.n // self.batch_size)

    def span(self, b: int) -> tuple[int, int]:
        """Positions (lo, hi) of batch b among the evaluated examples."""
        return b * self.batch_size, min(self.n, (b + 1) * self.batch_size)


@dataclass
class AttackJob:
    """One attack of the suite, as its batches need it."""

    attack: Any                 # the built attack
    position: int               # its place in the suite (seeds its random starts with the batch)
    seed: int                   # the evaluation's seed
    cover: torch.Tensor         # the evaluated examples it runs on
    done: torch.Tensor          # the examples whose result is saved already (resume)
    clean: torch.Tensor         # clean per-example statistics
    clean_score: torch.Tensor   # clean per-example scores (classification: correct = 1)


def choose_examples(dataset, attacks: Sequence[AttackSpec], *, n_examples: int, strategy: str, seed: int,
                    batch_size: int, collate=None) -> Examples:
    """The evaluated subset (whole split when `n_examples` is 0) and each attack's nested part of it."""
    total = len(dataset)
    n_eval = n_examples if n_examples and n_examples < total else total
    sizes = [n_eval] + [min(spec.n, n_eval) if spec.n else n_eval for spec in attacks]
    chosen = subsets.nested(dataset, sizes, strategy, seed)
    eval_idx, attack_idx = chosen[0], chosen[1:]
    covers = []  # which evaluated examples each attack covers (nested subsets: positions inside eval_idx)
    for idx in attack_idx:
        m = torch.zeros(len(eval_idx), dtype=torch.bool)
        m[torch.as_tensor(np.searchsorted(eval_idx, idx), dtype=torch.long)] = True
        covers.append(m)
    return Examples(subsets.subset(dataset, eval_idx), total, eval_idx, attack_idx, covers, batch_size, collate)


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
    built: Sequence | None = None,
) -> dict[str, Any]:
    """Clean and attacked statistics of every evaluated example, resumable (see the module docstring).
    `built`: the attacks already built from `attacks` (a run plan carries them), else built here."""
    model.to(device).eval()
    built = list(built) if built is not None else [spec.build(adapter) for spec in attacks]
    ex = choose_examples(dataset, attacks, n_examples=n_examples, strategy=subset_strategy, seed=subset_seed,
                         batch_size=batch_size, collate=collate)
    key = {"n": ex.n, "indices": subsets.indices_hash(ex.eval_idx), "specs": [repr(a) for a in attacks],
           "outcomes": outcomes.FORMAT}
    state = distributed.broadcast_object(load_eval_state(state_path, key, len(attacks), data_fingerprint) if distributed.is_main() else None)
    t0 = time.perf_counter()
    if state["clean"] is None:
        state["clean"], state["predicted"] = _clean_pass(model, adapter, ex, device)
        save_eval_state(state_path, state)
    if checks and built:
        from suite.attacks.sanity import check_model
        first = next(iter(eval_batches(ex.view, min(batch_size, 64), collate)))
        check_model(model, adapter, adapter.to_device(first, device), device)
    clean = state["clean"]
    clean_score = adapter.example_score(clean)
    for i, attack in enumerate(built):  # batch by batch, resumable at batch granularity
        if state["stats"][i] is None:
            state["stats"][i] = clean.clone()
        job = AttackJob(attack, i, seed, ex.covers[i], state["done"][i], clean, clean_score)
        _run_attack(model, adapter, job, ex, state, device, progress,
                    save=lambda: save_eval_state(state_path, state))
    metrics = _summarize(adapter, attacks, built, ex, state, subsets.describe(subset_strategy, subset_seed,
                                                                              ex.eval_idx, ex.total))
    metrics["eval_time_s"] = time.perf_counter() - t0  # this session's time (a resumed evaluation counts only its own part)
    _add_worst_cases(metrics, adapter, built, ex, state)
    out = _outcomes(adapter, dataset, ex.eval_idx, ex.total, state, ex.covers, built)
    metrics["outcomes"] = out.to_json()
    # the histogram of clean predictions (examples; pixels for segmentation), so a near-constant model
    # can be told from a robust one
    metrics["predictions"] = {"histogram": [int(v) for v in out.prediction_histogram()],
                              "unit": "examples" if out.kind == "correct" else "pixels"}
    return metrics


def _clean_pass(model, adapter, ex: Examples, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clean per-example statistics and predicted classes (batch b on rank b mod world)."""
    world, rank = distributed.world_size(), distributed.rank()
    parts = {}
    with torch.no_grad():
        for b, batch in batches_of(ex.view, ex.batch_size, ex.collate, list(range(rank, ex.n_batches, world))):
            batch = adapter.to_device(batch, device)
            out = adapter.forward(model, batch)
            pred = adapter.predictions(out)
            parts[b] = (adapter.example_stats(out, batch).cpu(), None if pred is None else pred.cpu())
    parts = _merged(parts) if world > 1 else parts
    order = sorted(parts)
    clean = torch.cat([parts[b][0] for b in order]) if parts else torch.zeros(0, dtype=torch.bool)
    predicted = torch.cat([parts[b][1] for b in order]) if parts and parts[order[0]][1] is not None else None
    return clean, predicted


def _run_attack(model, adapter, job: AttackJob, ex: Examples, state: dict, device, progress: bool, save) -> None:
    """The batches of one attack not done yet; each round gives one batch to every rank, and the state
    is saved after each round."""
    i = job.position
    stats, extra_acc = state["stats"][i], state["extra"][i]
    todo = job.cover & ~job.done
    if not todo.any():
        return
    world, rank = distributed.world_size(), distributed.rank()
    pending = [b for b in range(ex.n_batches) if todo[slice(*ex.span(b))].any()]
    rounds = [pending[j:j + world] for j in range(0, len(pending), world)]
    if progress and distributed.is_main():
        from tqdm.auto import tqdm
        rounds = tqdm(rounds, desc=f"attack {job.attack.label()}", leave=False, dynamic_ncols=True)
    for group in rounds:
        results = {}
        for b, batch in batches_of(ex.view, ex.batch_size, ex.collate, group[rank:rank + 1]):
            results[b] = _attack_batch(model, adapter, job, batch, b, ex, device)
        if world > 1:
            results = _merged(results)
        for b in sorted(results):  # in batch order, as one process adds them up
            lo, hi = ex.span(b)
            res = results[b]
            if res is not None:
                idx, attacked, extra = res
                stats[lo + idx] = attacked
                for k, v in extra.items():
                    extra_acc[k] = extra_acc.get(k, 0.0) + v
                state["attacked"][i] += len(idx)
            job.done[lo:hi] |= job.cover[lo:hi]
        save()


def _summarize(adapter, attacks, built, ex: Examples, state: dict, subset: dict) -> dict:
    """The clean metric and each attack's, on the examples it covered."""
    metric = adapter.metric
    clean_summary = adapter.summarize(state["clean"])
    per_attack = []
    for i, (attack, spec) in enumerate(zip(built, attacks)):
        summary = adapter.summarize(state["stats"][i][ex.covers[i]])
        entry = {"name": spec.name, "label": attack.label(), "params": dict(attack.p), "value": summary[metric],
                 "n": int(ex.covers[i].sum()), "attacked": int(state["attacked"][i]),
                 "subset": subsets.indices_hash(ex.attack_idx[i]), "threat": attack.threat}
        if set(summary) != {metric}:
            entry["metrics"] = summary
        if state["extra"][i]:
            entry["stats"] = {k: v for k, v in sorted(state["extra"][i].items())}
        per_attack.append(entry)
    metrics = {
        "metric": metric,
        "n": ex.n,
        "subset": subset,
        "clean": clean_summary[metric],
        "attacks": per_attack,
        "worst_case": None,
        "worst_case_n": 0,
        "worst_case_threat": outcomes.NORM_BOUNDED,
    }
    if set(clean_summary) != {metric}:
        metrics["clean_metrics"] = clean_summary
    return metrics


def _add_worst_cases(metrics: dict, adapter, built, ex: Examples, state: dict) -> None:
    """The worst case per example within each threat family, never across families; the record's
    `worst_case` is the norm-bounded family's."""
    families = list(dict.fromkeys(a.threat for a in built))
    metrics["worst_by_threat"] = [_worst_case(adapter, state["clean"], state, ex.covers,
                                              [i for i, a in enumerate(built) if a.threat == fam], fam)
                                  for fam in families]
    for fam in metrics["worst_by_threat"]:
        if fam["threat"] == outcomes.NORM_BOUNDED:
            metrics["worst_case"], metrics["worst_case_n"] = fam["value"], fam["n"]
            if "metrics" in fam:
                metrics["worst_case_metrics"] = fam["metrics"]


def clean_summary(model, adapter, dataset, *, batch_size: int, device, collate=None) -> dict:
    """The adapter's clean metrics of a model (in eval mode) over a whole dataset, in order."""
    parts = []
    with torch.no_grad():
        for batch in eval_batches(dataset, batch_size, collate):
            batch = adapter.to_device(batch, device)
            parts.append(adapter.example_stats(adapter.forward(model, batch), batch).cpu())
    return adapter.summarize(torch.cat(parts))


def evaluate_corruptions(model, adapter, folder, items, *, dataset_name: str, batch_size: int, device,
                         n_examples: int = 0, subset_strategy: str = "stratified", subset_seed: int = 0) -> dict:
    """The clean metric under each corruption (CIFAR-10-C style files), on a subset of the corrupted
    test images chosen from their own labels the same way as the evaluation subset (so every method
    sees the same images), and the mean over the corruptions."""
    from suite.data import corruptions

    labels = corruptions.block_labels(folder, dataset_name)
    proxy = torch.utils.data.TensorDataset(torch.zeros(len(labels), 0), torch.from_numpy(labels))
    idx = subsets.select(proxy, n_examples, subset_strategy, subset_seed)
    model.to(device).eval()
    rows = []
    for name, severity in items:
        ds = corruptions.load_corruption(folder, name, severity, idx, dataset=dataset_name)
        value = clean_summary(model, adapter, ds, batch_size=batch_size, device=device)[adapter.metric]
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


def _attack_batch(model, adapter, job: AttackJob, batch, b: int, ex: Examples, device):
    """The job's attack on batch b: (positions in the batch, their statistics under attack, extra
    numbers), or None when no example of the batch is attacked."""
    lo, hi = ex.span(b)
    want = job.cover[lo:hi] & ~job.done[lo:hi]
    if adapter.attack_only_correct:
        # classification: a misclassified example is not attacked; it keeps its clean statistics
        want = want & (job.clean_score[lo:hi] > 0)
    # random starts: seeded per (attack, batch), so a resumed (or sharded) evaluation draws the same
    # numbers for the batches it still has to run as an uninterrupted one would
    torch.manual_seed(job.seed + 7919 * (job.position + 1) + 1_000_003 * b)
    idx = torch.nonzero(want).flatten()
    if not len(idx):
        return None
    batch = adapter.to_device(batch, device)
    sub = adapter.subset(batch, idx.to(device))
    res = job.attack.run(model, sub)
    attacked = _attacked_stats(model, adapter, sub, res, job.clean[lo + idx])
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
