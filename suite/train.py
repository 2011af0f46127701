"""The training loop, top to bottom: one loop for every task and method.

The method owns the step (suite.methods); this loop owns everything around it: seeding, batching,
the LR schedule (per iteration, driving the base optimizer), mixed precision, the speed switches,
several processes under torchrun (suite.distributed), a checkpoint at the end of every epoch and
automatic resume from it, and a progress bar.

Determinism: every epoch's shuffling and augmentation come from a generator seeded with
(seed, epoch), and the checkpoint carries the global RNG states the methods draw from (AT random
starts, ESAM's masks), one per rank. So a run interrupted after epoch k and resumed reproduces the
weights of the uninterrupted run exactly on CPU.

Nothing around the step costs more than it must: in-memory datasets are cut into batches by
indexing (no DataLoader, no per-example collate), and on a GPU they are moved to the device once;
losses are summed on the device and read once per epoch (or when the progress bar redraws), so the
loop never waits for the GPU between steps.

Speed switches (TrainConfig fields, all off by default, none changes CPU fp32 results unless set):
- amp: "auto" (bf16 autocast on CUDA where supported, off on CPU), "off", "bf16" (CPU too),
  "fp16" (autocast with a torch.amp.GradScaler the method uses; see suite.methods.base);
- channels_last: convolution weights (and so activations) in NHWC memory format;
- compile: torch.compile the model for training (attacks run on the compiled module too);
- sync_bn: SyncBatchNorm across ranks (CUDA only, as PyTorch implements it);
- sam_ascent: under several processes, SAM's first-pass gradient is the global batch's ("global")
  or each rank's own ("per_replica", m-sharpness with m = the per-rank batch).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from suite import distributed as D
from suite.config import DataBundle, TrainConfig
from suite.errors import UserError, one_line
from suite.files import atomic_write
from suite.methods.base import Method
from suite.modalities.base import Adapter

POSTFIX_EVERY_S = 1.0      # the progress bar's loss is read (a device sync on GPU) at most this often
CHECK_FINITE_EVERY = 50    # on GPU, steps between checks that the loss is finite (each check syncs)
DEVICE_DATA_MAX_BYTES = 2 << 30  # in-memory training sets up to this size are moved to the GPU once


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank r's random stream: rank 0 keeps the run's seed (its draws are a single
    process's), the others get streams of their own."""
    return seed if rank == 0 else seed + 1_000_003 * rank


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
    which keeps SAM's two passes simple); bf16 on CPU or fp16 only when asked."""
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if mode == "off":
        return contextlib.nullcontext(), "off"
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("amp=bf16: this GPU does not support bfloat16; use amp=fp16 or amp=off")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), mode


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    train_time_s: float = 0.0
    steps: int = 0
    amp: str = "off"
    resumed_from_epoch: int = 0
    world_size: int = 1


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


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupt never leaves half a file, and a full
    disk is one line naming the folder (suite.files)."""
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, *, resuming: bool = False, mmap: bool = False) -> dict:
    """`mmap`: map the tensors rather than read them where the file allows it (a cheap look)."""
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # noqa: BLE001, S110  (read it plainly: that names what is wrong with it, if any)
            pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file is bad input, reported in one line
        first = one_line(e)
        hint = (f"; delete it (rm {path}) or pass --force to train this run from scratch" if resuming else "")
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {first}{hint}") from None


def read_resume_checkpoint(checkpoint: Path, run_id: str, data_fingerprint: str = "", *,
                           mmap: bool = False) -> dict:
    """A training checkpoint this run may resume from: readable, of this run, and made from the same
    data (a checkpoint that predates data fingerprints is taken as it is); else one line saying why.
    `mmap`: map the tensors instead of reading them (a cheap check before anything runs)."""
    state = load_checkpoint(checkpoint, resuming=True, mmap=mmap)
    if not isinstance(state, dict) or "epoch" not in state:
        raise UserError(f"checkpoint {checkpoint} is not a suite training checkpoint; delete it "
                        f"(rm {checkpoint}) or pass --force to train this run from scratch")
    if state.get("run_id") != run_id:
        raise UserError(f"checkpoint {checkpoint} belongs to run {state.get('run_id')!r}, not "
                        f"{run_id!r}; move it away or pass another --work-dir")
    theirs = state.get("data_fingerprint")
    if theirs and data_fingerprint and theirs != data_fingerprint:
        raise UserError(f"checkpoint {checkpoint} was trained on other data (data fingerprint {theirs}, "
                        f"this data {data_fingerprint}), so it is not resumed; pass --force to train "
                        "this run from scratch on this data, or another --work-dir")
    return state


def _resume_state(checkpoint: Path | None, run_id: str, data_fingerprint: str = "") -> dict | None:
    """The checkpoint to resume from, read and checked by rank 0 and handed to every rank (so a
    node without the file system of rank 0 resumes too); None to start from scratch."""
    state, error = None, None
    if D.is_main() and checkpoint is not None and checkpoint.exists():
        try:
            state = read_resume_checkpoint(checkpoint, run_id, data_fingerprint)
        except UserError as e:
            state, error = None, str(e)
    state, error = D.broadcast_object((state, error))
    if error is not None:
        raise UserError(error)
    return state


def in_memory(dataset) -> bool:
    """A TensorDataset: batches are cut from its tensors by index, without a per-example DataLoader."""
    from torch.utils.data import TensorDataset
    return isinstance(dataset, TensorDataset)


def _tensors_on(dataset, device: torch.device) -> tuple:
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


def check_sync_bn(device: torch.device) -> None:
    """sync_bn=true is refused off CUDA (also with one process), before anything runs."""
    if device.type != "cuda":
        raise UserError(f"sync_bn=true needs CUDA (PyTorch's SyncBatchNorm synchronises on GPUs only) and this "
                        f"run is on {device.type}; drop --set sync_bn=true (each process then normalises with "
                        "its own share of the batch)")


def _prepare_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """Memory format and BatchNorm kind, in place, before the optimizer sees the parameters."""
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # conv outputs follow their weights' format
    if cfg.sync_bn:
        check_sync_bn(device)
    if cfg.sync_bn and D.active():
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:
            raise UserError("sync_bn=true: the model is a single BatchNorm layer; nothing to synchronise")
    return model


def _attach(method: Method, scaler, cfg: TrainConfig) -> None:
    """What the trainer hands the method besides the step's arguments (see suite.methods.base)."""
    if scaler is not None and not getattr(method, "supports_fp16", False):
        raise UserError(f"method {method.name} does not support amp=fp16 (it has no gradient scaling); "
                        "use amp=bf16 or amp=off")
    method.scaler = scaler
    method.ascent_sync = cfg.sam_ascent == "global"


def _value(v, device: torch.device):
    """A step statistic as a float on CPU, or a detached float64 tensor left on the GPU (no sync)."""
    if isinstance(v, torch.Tensor):
        v = v.detach()
        return float(v) if v.device.type == "cpu" else v.double()
    return float(v)


def _diverged(epoch: int, value) -> UserError:
    return UserError(f"training diverged at epoch {epoch + 1}: loss is {value}; "
                     "lower the learning rate (--set lr=...) or the method's budget")


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
    """Train `model` in place. Under torchrun every rank calls this with the same arguments; rank 0
    writes the checkpoint, and every rank ends with the same weights."""
    cfg.validate()  # the speed switches (sam_ascent among them) are checked with the rest
    world, rank = D.world_size(), D.rank()
    seed_everything(seed)
    model = _prepare_model(model, cfg, device)
    if cfg.sync_bn and not D.active() and log is not None:
        log("note: sync_bn=true with one process: there is nothing to synchronise, so BatchNorm stays as it is "
            "(SyncBatchNorm takes effect under torchrun)")
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total, steps_per_epoch))
    amp_ctx, amp_mode = autocast_for(cfg, device)
    scaler = torch.amp.GradScaler(device.type) if amp_mode == "fp16" else None
    _attach(method, scaler, cfg)
    result = TrainResult(amp=amp_mode, world_size=world)

    step_model = torch.compile(model) if cfg.compile else model
    if world > 1:
        step_model = D.wrap(step_model, device)  # broadcasts rank 0's initial weights

    start_epoch = 0
    state = _resume_state(checkpoint, run_id, data.fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == world:
            _set_rng_state(ranks[rank])
        elif rank == 0:
            _set_rng_state(state["rng"])
        else:  # resumed with another number of processes: a fresh stream per (rank, epoch)
            seed_everything(rank_seed(seed * 100_003 + state["epoch"], rank))
        result.history = state["history"]
        result.train_time_s = state["train_time_s"]
        start_epoch = result.resumed_from_epoch = state["epoch"]
        if log is not None and D.is_main():
            log(f"resuming from {checkpoint}: epoch {start_epoch} of {cfg.epochs} done "
                f"({result.train_time_s:.0f} s of training so far)")
    elif rank > 0:
        seed_everything(rank_seed(seed, rank))

    pin = device.type == "cuda"
    tensors = _tensors_on(data.train, device) if in_memory(data.train) and data.collate is None else None
    # A trailing batch of one example is skipped (its scheduler step kept) when the model normalises
    # with BatchNorm: training-mode BatchNorm cannot normalise one value per channel, which is what a
    # pooled branch (DeepLabv3's ASPP image pooling) sees, and one example's statistics would be noise.
    skip_single = len(data.train) > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                              for m in model.modules())
    show = progress and D.is_main()
    for epoch in range(start_epoch, cfg.epochs):
        step_model.train()
        method.epoch = epoch
        # Shuffling (and worker seeds) from a generator seeded by (seed, epoch): resumable, and the
        # same global batches on every rank.
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = train_batches(data.train, cfg, gen, data.collate, pin=pin, tensors=tensors)
        aug_gen = torch.Generator(device=device).manual_seed(seed * 100_019 + epoch)
        bar = _progress(loader, show, f"epoch {epoch + 1}/{cfg.epochs} {method.name}")
        t0 = time.perf_counter()
        seen, loss_sum, acc_sum, shown = 0, 0.0, 0.0, t0
        for i, batch in enumerate(bar):
            batch = adapter.to_device(batch, device)
            if skip_single and adapter.batch_size(batch) == 1:
                scheduler.step()
                continue
            if data.train_transform is not None:
                batch = data.train_transform(batch, aug_gen)
            if world > 1:  # augment the global batch (same draws everywhere), keep this rank's share
                n_global = adapter.batch_size(batch)
                index = D.shard_index(n_global, device)
                if index is None:
                    scheduler.step()  # too few examples to give every rank one: skipped everywhere
                    continue
                batch = adapter.subset(batch, index)
                D.CTX.share = len(index) / n_global
            with amp_ctx:
                stats = method.train_step(step_model, batch, optimizer, adapter)
            scheduler.step()
            n = adapter.batch_size(batch)
            seen += n
            loss = _value(stats["loss"], device)
            loss_sum = loss_sum + loss * n
            acc_sum = acc_sum + _value(stats.get("acc", float("nan")), device) * n
            if isinstance(loss, float):
                if not math.isfinite(loss):
                    raise _diverged(epoch, loss)
            elif (i + 1) % CHECK_FINITE_EVERY == 0 and not math.isfinite(float(loss_sum)):
                raise _diverged(epoch, float(loss_sum))
            if show and time.perf_counter() - shown >= POSTFIX_EVERY_S:
                shown = time.perf_counter()
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", ex_per_s=f"{seen / (shown - t0):.0f}",
                                refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        totals = [float(loss_sum), float(acc_sum), float(seen)]
        if world > 1:  # the epoch's statistics over the global batches; one BatchNorm state for all
            totals = D.all_reduce_sum(torch.tensor(totals, dtype=torch.float64, device=_comm(device))).tolist()
            D.average_buffers(model)
        if not math.isfinite(totals[0]):
            raise _diverged(epoch, totals[0])
        result.train_time_s += dt
        entry = {"epoch": epoch + 1, "loss": totals[0] / totals[2], "train_acc": totals[1] / totals[2],
                 "lr": optimizer.param_groups[0]["lr"], "time_s": dt}
        result.history.append(entry)
        if checkpoint is not None:
            rngs = D.gather_objects(_rng_state())
            if D.is_main():
                atomic_save({
                    "run_id": run_id, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rngs[0], "rng_ranks": rngs, "world_size": world,
                    "history": result.history, "train_time_s": result.train_time_s,
                    "data_fingerprint": data.fingerprint,
                }, checkpoint)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry)
    result.steps = steps_per_epoch * cfg.epochs
    return result


def _comm(device: torch.device) -> torch.device:
    """Where collectives take their tensors: the GPU under NCCL, the CPU under gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


def _progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm.auto import tqdm
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)
