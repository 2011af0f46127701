"""Batches of a dataset, for the training loop and for evaluation.

In-memory datasets (a TensorDataset) are cut into batches by indexing: no DataLoader, no per-example
__getitem__ and collate, which would cost more than a small model's step. Anything else goes through
a DataLoader.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from suite.config import TrainConfig

DEVICE_DATA_MAX_BYTES = 2 << 30  # in-memory training sets up to this size are moved to the GPU once


def in_memory(dataset) -> bool:
    """A TensorDataset: batches are cut from its tensors by index, without a per-example DataLoader."""
    from torch.utils.data import TensorDataset
    return isinstance(dataset, TensorDataset)


def tensors_on(dataset, device: torch.device) -> tuple:
    """An in-memory dataset's tensors, moved to a GPU once when they are small enough (so batches
    are cut on the device and never copied from host memory step by step)."""
    tensors = dataset.tensors
    if device.type != "cuda":
        return tensors
    size = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    if size > min(DEVICE_DATA_MAX_BYTES, free // 4):
        return tensors
    return tuple(t.to(device) for t in tensors)


def train_batches(dataset, cfg: TrainConfig, generator: torch.Generator, collate, pin: bool, tensors=None):
    """The epoch's shuffled batches. For in-memory tensors the batches are the ones a DataLoader with
    RandomSampler(generator) would give (the same torch.randperm), cut by indexing: no per-example
    __getitem__ and collate, which would cost more than a small model's step (and workers would only
    add inter-process copies). `tensors` are the dataset's tensors where they already live on the
    device."""
    if in_memory(dataset) and collate is None:
        perm = torch.randperm(len(dataset), generator=generator)
        tensors = dataset.tensors if tensors is None else tensors
        perm = perm.to(tensors[0].device)
        return [tuple(t[perm[i:i + cfg.batch_size]] for t in tensors)
                for i in range(0, len(dataset), cfg.batch_size)]
    workers = cfg.num_workers
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                      collate_fn=collate, num_workers=workers, pin_memory=pin, drop_last=False,
                      prefetch_factor=4 if workers else None)


def eval_batches(dataset, batch_size: int, collate=None):
    """Batches in order. In-memory tensors are sliced directly; anything else goes through a DataLoader."""
    if in_memory(dataset) and collate is None:
        tensors = dataset.tensors
        return [tuple(t[i:i + batch_size] for t in tensors) for i in range(0, len(dataset), batch_size)]
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def batches_of(dataset, batch_size: int, collate, wanted: list[int]):
    """(b, batch) for the batch numbers in `wanted` (increasing), loading only those."""
    if in_memory(dataset) and collate is None:
        tensors = dataset.tensors
        return [(b, tuple(t[b * batch_size:(b + 1) * batch_size] for t in tensors)) for b in wanted]
    n = len(dataset)
    sampler = [list(range(b * batch_size, min(n, (b + 1) * batch_size))) for b in wanted]
    return zip(wanted, DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))
