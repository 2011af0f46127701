"""Which examples a run trains on and is evaluated on: seeded, class-stratified, nested subsets.

A test split can be sorted by label (Rotten Tomatoes' test split is 533 positive sentences, then 533
negative ones; an image-folder copy of CIFAR-10 lists its classes one after another), so "the first
N examples" can be a single class. Every subset here is chosen from the labels with a fixed seed:

- `stratified` (the default): every class gets its share of the N examples (within one example of
  exact proportionality) and the examples of a class are a seeded random sample of it.
- `random`: a seeded uniform sample, for splits without one label per example (segmentation).
- `first`: the first N, only where the split is known to be in a shuffled order and a paper fixes
  it (the official CIFAR test batch; the paper evaluates "the first 1000 test images").

Subsets are *nested*: the N examples chosen for N are among the M chosen for any M > N (same split,
strategy and seed). So an expensive attack evaluated on 300 examples sees a part of the 1,066 that
clean accuracy and cheap attacks saw, the same part for every method of a task: rows stay paired.
The order that makes this work is built greedily: each next example comes from the class furthest
below its proportional share, and within a class in a seeded random order; every prefix of it then
holds each class within one example of its exact share (tested).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from suite.errors import UserError

STRATEGIES = ("stratified", "random", "first")


def dataset_labels(dataset: Any) -> np.ndarray | None:
    """One integer label per example, or None when the dataset has none (e.g. segmentation masks).

    Understands TensorDataset (second tensor 1-D), datasets with `labels` or `targets`, and Subset
    of any of these; never iterates over the data.
    """
    from_subset = None
    if hasattr(dataset, "dataset") and hasattr(dataset, "indices"):  # torch.utils.data.Subset
        from_subset = np.asarray(dataset.indices, dtype=np.int64)
        dataset = dataset.dataset
    labels = None
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2 and getattr(tensors[1], "dim", lambda: 0)() == 1:
        labels = tensors[1].cpu().numpy()
    else:
        for attr in ("labels", "targets"):
            val = getattr(dataset, attr, None)
            if val is not None:
                arr = np.asarray(val)
                if arr.ndim == 1 and arr.dtype.kind in "iu":
                    labels = arr
                    break
    if labels is None:
        return None
    labels = labels.astype(np.int64)
    return labels[from_subset] if from_subset is not None else labels


def stratified_order(labels: np.ndarray, seed: int, limit: int | None = None) -> np.ndarray:
    """A permutation of all indices whose every prefix is class-stratified (see the module doc).

    Built one example at a time: the next example comes from the class furthest below its share
    ((n + 1) p_c - count_c largest; ties to the larger class, then the smaller label), and within a
    class in a seeded random order. Only the first `limit` positions are built this way (the rest
    follow in seeded random order), since nobody asks for more.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    classes, counts = np.unique(labels, return_counts=True)
    members = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        members.append(idx[rng.permutation(len(idx))])
    total = len(labels)
    steps = total if limit is None else min(limit, total)
    share = counts / total
    taken = np.zeros(len(classes), dtype=np.int64)
    out = np.empty(total, dtype=np.int64)
    tie = counts * 1e-12  # prefer larger classes on exact ties, deterministically
    for n in range(steps):
        deficit = (n + 1) * share - taken + tie
        deficit[taken >= counts] = -np.inf
        c = int(np.argmax(deficit))
        out[n] = members[c][taken[c]]
        taken[c] += 1
    if steps < total:
        rest = np.concatenate([m[t:] for m, t in zip(members, taken)])
        out[steps:] = rest[rng.permutation(len(rest))]
    return out


def order(dataset: Any, strategy: str, seed: int, limit: int | None = None) -> np.ndarray:
    """The order in which `select` takes examples (its first n are the subset of size n); only the
    first `limit` positions are guaranteed to be that order's."""
    n = len(dataset)
    if strategy == "first":
        return np.arange(n)
    if strategy == "random":
        return np.random.RandomState(seed).permutation(n)
    if strategy == "stratified":
        labels = dataset_labels(dataset)
        if labels is None:
            raise UserError("a stratified subset needs one class label per example, and this dataset has none; "
                            "use --set eval_subset=random (or train_subset=random)")
        return stratified_order(labels, seed, limit=limit)
    raise UserError(f"unknown subset strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def select(dataset: Any, n: int, strategy: str = "stratified", seed: int = 0) -> np.ndarray:
    """Indices (sorted ascending) of the n examples chosen; the whole split when n is 0 or >= len."""
    total = len(dataset)
    if not n or n >= total:
        return np.arange(total)
    return np.sort(order(dataset, strategy, seed, limit=n)[:n])


def nested(dataset: Any, sizes: list[int], strategy: str, seed: int) -> list[np.ndarray]:
    """`select` for several sizes at once, sharing one order (so each smaller set is inside each larger)."""
    total = len(dataset)
    if all(not s or s >= total for s in sizes):
        return [np.arange(total) for _ in sizes]
    o = order(dataset, strategy, seed, limit=max(s for s in sizes if s and s < total))
    return [np.arange(total) if not s or s >= total else np.sort(o[:s]) for s in sizes]


def indices_hash(indices: np.ndarray) -> str:
    """A short hash of an index set, recorded so that paired rows can be checked to be paired."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def describe(strategy: str, seed: int, indices: np.ndarray, total: int) -> dict:
    """What the run record stores about a subset."""
    whole = len(indices) == total
    return {"strategy": "all" if whole else strategy, "seed": seed, "n": int(len(indices)), "of": int(total),
            "indices_sha256": indices_hash(indices)}


def subset(dataset: Any, indices: np.ndarray):
    """A view of `dataset` at `indices`, keeping in-memory tensors in memory (a TensorDataset stays one)."""
    import torch
    from torch.utils.data import Subset, TensorDataset

    if len(indices) == len(dataset) and np.array_equal(indices, np.arange(len(dataset))):
        return dataset
    if isinstance(dataset, TensorDataset):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, [int(i) for i in indices])
