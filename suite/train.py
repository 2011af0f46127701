"""The training loop, top to bottom: one loop for every task and method.

The method owns the step (suite.methods); this loop owns everything around it: seeding, batching,
the LR schedule (per iteration, driving the base optimizer), mixed precision, a checkpoint at the
end of every epoch and automatic resume from it, and a progress bar.

Determinism: every epoch's shuffling and augmentation come from a generator seeded with
(seed, epoch), and the checkpoint carries the global RNG states the methods draw from (AT random
starts, ESAM's masks). So a run interrupted after epoch k and resumed reproduces the weights of the
uninterrupted run exactly on CPU.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from suite.config import DataBundle, TrainConfig
from suite.errors import UserError
from suite.methods.base import Method
from suite.modalities.base import Adapter


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of the base LR at iteration `step` (0-based) of `total`."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        # the paper's schedule: x0.1 at 75% and 90% of training (epochs 75 and 90 of 100)
        return cfg.lr_gamma ** sum(step >= round(m * total) for m in cfg.milestones)
    t = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "poly":  # the segmentation recipe (DeepLab): (1 - t)^0.9
        return max(0.0, 1.0 - t) ** cfg.poly_power
    return max(0.0, 1.0 - t)  # linear decay (the text recipe)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def autocast_for(cfg: TrainConfig, device: torch.device):
    """Mixed precision where the device supports it: bf16 autocast on CUDA (no loss scaling needed,
    which keeps SAM's two passes simple); fp16 only when asked; off on CPU unless asked."""
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if mode == "off":
        return contextlib.nullcontext(), "off"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), mode


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    train_time_s: float = 0.0
    steps: int = 0
    amp: str = "off"
    resumed_from_epoch: int = 0


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tmp_path(path: Path) -> Path:
    """A temporary name beside `path`, unique per process and call: two processes writing the same
    file never share a temporary (the rename that follows is atomic, and the last one wins)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupt never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)



def load_checkpoint(path: Path, *, resuming: bool = False) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file is bad input, reported in one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        hint = (f"; delete it (rm {path}) or pass --force to train this run from scratch" if resuming else "")
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {first}{hint}") from None


def in_memory(dataset) -> bool:
    """A TensorDataset: batches are cut from its tensors by index, without a per-example DataLoader."""
    from torch.utils.data import TensorDataset
    return isinstance(dataset, TensorDataset)


def train_batches(dataset, cfg: TrainConfig, generator: torch.Generator, collate, pin: bool):
    """The epoch's shuffled batches. For in-memory tensors the batches are the ones a DataLoader with
    RandomSampler(generator) would give (the same torch.randperm), cut by indexing: no per-example
    __getitem__ and collate, which would cost more than a small model's step."""
    if in_memory(dataset) and collate is None and cfg.num_workers == 0:
        perm = torch.randperm(len(dataset), generator=generator)
        tensors = dataset.tensors
        return [tuple(t[perm[i:i + cfg.batch_size]] for t in tensors)
                for i in range(0, len(dataset), cfg.batch_size)]
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                      collate_fn=collate, num_workers=cfg.num_workers, pin_memory=pin, drop_last=False)


def train(
    model: torch.nn.Module,
    method: Method,
    adapter: Adapter,
    data: DataBundle,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
    run_id: str = "",
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    seed_everything(seed)
    model.to(device)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total, steps_per_epoch))
    amp_ctx, amp_mode = autocast_for(cfg, device)
    result = TrainResult(amp=amp_mode)

    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, resuming=True)
        if not isinstance(state, dict) or "epoch" not in state:
            raise UserError(f"checkpoint {checkpoint} is not a suite training checkpoint; delete it "
                            f"(rm {checkpoint}) or pass --force to train this run from scratch")
        if state.get("run_id") != run_id:
            raise UserError(f"checkpoint {checkpoint} belongs to run {state.get('run_id')!r}, not {run_id!r}; "
                            "move it away or pass another --work-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        result.history = state["history"]
        result.train_time_s = state["train_time_s"]
        start_epoch = result.resumed_from_epoch = state["epoch"]
        if log is not None:
            log(f"resuming from {checkpoint}: epoch {start_epoch} of {cfg.epochs} done "
                f"({result.train_time_s:.0f} s of training so far)")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        # Shuffling (and worker seeds) from a generator seeded by (seed, epoch): resumable.
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = train_batches(data.train, cfg, gen, data.collate, pin=device.type == "cuda")
        aug_gen = torch.Generator(device=device).manual_seed(seed * 100_019 + epoch)
        bar = _progress(loader, progress, f"epoch {epoch + 1}/{cfg.epochs} {method.name}")
        t0 = time.perf_counter()
        seen, loss_sum, acc_sum = 0, 0.0, 0.0
        for batch in bar:
            batch = adapter.to_device(batch, device)
            if data.train_transform is not None:
                batch = data.train_transform(batch, aug_gen)
            with amp_ctx:
                stats = method.train_step(model, batch, optimizer, adapter)
            scheduler.step()
            n = adapter.batch_size(batch)
            seen += n
            loss_sum += stats["loss"] * n
            acc_sum += stats.get("acc", float("nan")) * n
            if not math.isfinite(stats["loss"]):
                raise UserError(f"training diverged at epoch {epoch + 1}: loss is {stats['loss']}; "
                                "lower the learning rate (--set lr=...) or the method's budget")
            if progress:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", ex_per_s=f"{seen / (time.perf_counter() - t0):.0f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        result.train_time_s += dt
        entry = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": acc_sum / seen,
                 "lr": optimizer.param_groups[0]["lr"], "time_s": dt}
        result.history.append(entry)
        if checkpoint is not None:
            atomic_save({
                "run_id": run_id, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state(), "history": result.history, "train_time_s": result.train_time_s,
            }, checkpoint)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry)
    result.steps = steps_per_epoch * cfg.epochs
    return result


def _progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm.auto import tqdm
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
