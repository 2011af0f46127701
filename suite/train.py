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

from suite import distributed
from suite.checkpoint import atomic_save, read_resume_checkpoint, rng_state, set_rng_state
from suite.config import DataBundle, TrainConfig, check_sync_bn
from suite.data.batches import in_memory, tensors_on, train_batches
from suite.errors import UserError
from suite.methods.base import Method, StepContext
from suite.modalities.base import Adapter

POSTFIX_EVERY_S = 1.0      # the progress bar's loss is read (a device sync on GPU) at most this often
CHECK_FINITE_EVERY = 50    # on GPU, steps between checks that the loss is finite (each check syncs)
PROGRESS_LINE_EVERY_S = 300.0  # a log's in-epoch progress line (`on_progress`) at most this often
# A checkpoint within an epoch at most this often (one process only): an hour-long text epoch on a CPU
# then loses at most this much to an interruption. Short epochs never write one.
MID_EPOCH_SAVE_EVERY_S = 600.0


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


def _resume_state(checkpoint: Path | None, run_id: str, data_fingerprint: str = "") -> dict | None:
    """The checkpoint to resume from, read and checked by rank 0 and handed to every rank (so a
    node without the file system of rank 0 resumes too); None to start from scratch."""
    state, error = None, None
    if distributed.is_main() and checkpoint is not None and checkpoint.exists():
        try:
            state = read_resume_checkpoint(checkpoint, run_id, data_fingerprint)
        except UserError as e:
            state, error = None, str(e)
    state, error = distributed.broadcast_object((state, error))
    if error is not None:
        raise UserError(error)
    return state


def _prepare_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """Memory format and BatchNorm kind, in place, before the optimizer sees the parameters."""
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # conv outputs follow their weights' format
    if cfg.sync_bn:
        check_sync_bn(device)
    if cfg.sync_bn and distributed.active():
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:
            raise UserError("sync_bn=true: the model is a single BatchNorm layer; nothing to synchronise")
    return model


def step_context(method: Method, scaler, cfg: TrainConfig) -> StepContext:
    """The StepContext the loop hands the method with every step (see suite.methods.base), once the
    method is known to work with it; the loop updates its epoch and share."""
    if scaler is not None and not getattr(method, "supports_fp16", False):
        raise UserError(f"method {method.name} does not support amp=fp16 (it has no gradient scaling); "
                        "use amp=bf16 or amp=off")
    return StepContext(scaler=scaler, ascent_sync=cfg.sam_ascent == "global")


def _value(v, device: torch.device):
    """A step statistic as a float on CPU, or a detached float64 tensor left on the GPU (no sync)."""
    if isinstance(v, torch.Tensor):
        v = v.detach()
        return float(v) if v.device.type == "cpu" else v.double()
    return float(v)


def _diverged(epoch: int, value) -> UserError:
    return UserError(f"training diverged at epoch {epoch + 1}: loss is {value}; "
                     "lower the learning rate (--set lr=...) or the method's budget")


@dataclass
class Loop:
    """What the loop builds once and every epoch uses."""

    model: torch.nn.Module          # the module itself (checkpointed, evaluated)
    step_model: torch.nn.Module     # what the method steps: compiled and/or DDP-wrapped
    method: Method
    adapter: Adapter
    data: DataBundle
    cfg: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    amp_ctx: contextlib.AbstractContextManager
    amp_mode: str
    ctx: StepContext
    steps_per_epoch: int
    tensors: tuple | None = None    # the training tensors where they already live on the device
    skip_single: bool = False       # skip a trailing batch of one example (see `build_loop`)
    mid: dict | None = None         # where a checkpoint written within an epoch left that epoch


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
    on_progress: Callable[[int, int, int, float, float], None] | None = None,
    validate: Callable[[torch.nn.Module, int], dict] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train `model` in place. Under torchrun every rank calls this with the same arguments; rank 0
    writes the checkpoint, and every rank ends with the same weights. `validate(model, epochs_done)`,
    when given, runs after each epoch (in eval mode, without touching the random streams) and the
    numbers it returns (none on epochs it skips) join the epoch's history entry.
    `on_progress(epoch, steps_done, steps, mean_loss, seconds)` is called within an epoch at most every
    PROGRESS_LINE_EVERY_S (a log's sign of life when one epoch takes an hour, as text epochs do on a CPU)."""
    cfg.validate()  # the speed switches (sam_ascent among them) are checked with the rest
    seed_everything(seed)
    loop = build_loop(model, method, adapter, data, cfg, device, log)
    result = TrainResult(amp=loop.amp_mode, world_size=distributed.world_size())
    start_epoch = resume(loop, result, checkpoint, run_id, seed, log)
    show = progress and distributed.is_main()
    for epoch in range(start_epoch, cfg.epochs):
        save_mid = None
        if checkpoint is not None and distributed.world_size() == 1:
            def save_mid(mid, epoch=epoch):
                save_checkpoint(loop, result, checkpoint, run_id, epoch, mid=mid)
        entry = run_epoch(loop, epoch, seed, show, on_progress if distributed.is_main() else None, save_mid)
        if validate is not None:
            entry.update(_validated(validate, loop.model, epoch + 1))
        result.train_time_s += entry["time_s"]
        result.history.append(entry)
        if checkpoint is not None:
            save_checkpoint(loop, result, checkpoint, run_id, epoch + 1)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry)
    result.steps = loop.steps_per_epoch * cfg.epochs
    return result


def build_loop(model, method, adapter, data: DataBundle, cfg: TrainConfig, device, log) -> Loop:
    """The model on the device, the optimizer, the LR schedule, mixed precision, the step context and
    the DDP wrapper (which broadcasts rank 0's initial weights)."""
    model = _prepare_model(model, cfg, device)
    if cfg.sync_bn and not distributed.active() and log is not None:
        log("note: sync_bn=true with one process: there is nothing to synchronise, so BatchNorm stays as it is "
            "(SyncBatchNorm takes effect under torchrun)")
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total, steps_per_epoch))
    amp_ctx, amp_mode = autocast_for(cfg, device)
    scaler = torch.amp.GradScaler(device.type) if amp_mode == "fp16" else None
    ctx = step_context(method, scaler, cfg)
    step_model = torch.compile(model) if cfg.compile else model
    if distributed.world_size() > 1:
        step_model = distributed.wrap(step_model, device, ctx)
    tensors = tensors_on(data.train, device) if in_memory(data.train) and data.collate is None else None
    # A trailing batch of one example is skipped (its scheduler step kept) when the model normalises
    # with BatchNorm: training-mode BatchNorm cannot normalise one value per channel, which is what a
    # pooled branch (DeepLabv3's ASPP image pooling) sees, and one example's statistics would be noise.
    skip_single = len(data.train) > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                              for m in model.modules())
    return Loop(model, step_model, method, adapter, data, cfg, device, optimizer, scheduler, scaler, amp_ctx,
                amp_mode, ctx, steps_per_epoch, tensors, skip_single)


def resume(loop: Loop, result: TrainResult, checkpoint: Path | None, run_id: str, seed: int, log) -> int:
    """Load the checkpoint this run may resume from (weights, optimizer, schedule, scaler, random
    streams, history); returns the epoch to start at (0 without one)."""
    world, rank = distributed.world_size(), distributed.rank()
    state = _resume_state(checkpoint, run_id, loop.data.fingerprint)
    if state is None:
        if rank > 0:
            seed_everything(rank_seed(seed, rank))
        return 0
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    if loop.scaler is not None and state.get("scaler"):
        loop.scaler.load_state_dict(state["scaler"])
    ranks = state.get("rng_ranks")
    if ranks is not None and len(ranks) == world:
        set_rng_state(ranks[rank])
    elif rank == 0:
        set_rng_state(state["rng"])
    else:  # resumed with another number of processes: a fresh stream per (rank, epoch)
        seed_everything(rank_seed(seed * 100_003 + state["epoch"], rank))
    result.history = state["history"]
    result.train_time_s = state["train_time_s"]
    result.resumed_from_epoch = state["epoch"]
    mid = state.get("mid")
    if mid is not None:
        if world > 1:
            raise UserError(f"checkpoint {checkpoint} was written within epoch {state['epoch'] + 1} by one process; "
                            "resume it with one process (or pass --force to train from scratch)")
        loop.mid = {**mid, "rng": state["rng"]}
    if log is not None and distributed.is_main():
        within = f", and {mid['step']} of epoch {state['epoch'] + 1}'s {loop.steps_per_epoch} steps" if mid else ""
        log(f"resuming from {checkpoint}: epoch {state['epoch']} of {loop.cfg.epochs} done{within} "
            f"({result.train_time_s + (mid['time_s'] if mid else 0):.0f} s of training so far)")
    return state["epoch"]


def run_epoch(loop: Loop, epoch: int, seed: int, show: bool,
              on_progress: Callable[[int, int, int, float, float], None] | None = None,
              save_mid: Callable[[dict], None] | None = None) -> dict:
    """One epoch of steps; its history entry (mean loss and accuracy over the global batches, the LR
    at its end, its time). `on_progress`: see `train`. `save_mid(mid)` writes a checkpoint within the
    epoch (at most every MID_EPOCH_SAVE_EVERY_S); `loop.mid`, set by `resume` from such a checkpoint,
    carries the epoch on from the step after it, exactly as if it had not been interrupted."""
    cfg, device, adapter, world = loop.cfg, loop.device, loop.adapter, distributed.world_size()
    loop.step_model.train()
    loop.ctx.epoch = epoch
    # Shuffling (and worker seeds) from a generator seeded by (seed, epoch): resumable, and the same
    # global batches on every rank.
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    loader = train_batches(loop.data.train, cfg, gen, loop.data.collate, pin=device.type == "cuda",
                           tensors=loop.tensors)
    aug_gen = torch.Generator(device=device).manual_seed(seed * 100_019 + epoch)
    bar = _progress(loader, show, f"epoch {epoch + 1}/{cfg.epochs} {loop.method.name}")
    t0 = time.perf_counter()
    seen, loss_sum, acc_sum, shown, said, saved = 0, 0.0, 0.0, t0, t0, t0
    mid, loop.mid = loop.mid, None
    start, before = 0, 0.0  # steps already done in this epoch, and their seconds
    if mid is not None:
        start, before = mid["step"], mid["time_s"]
        seen, loss_sum, acc_sum = mid["seen"], mid["loss_sum"], mid["acc_sum"]
        aug_gen.set_state(mid["aug_gen"])
    for i, batch in enumerate(bar):
        if i < start:  # done before the interruption: the same shuffled batches, loaded and passed over
            continue
        if i == start and mid is not None:
            set_rng_state(mid["rng"])  # as after step `start` (again: loading the skipped batches may draw)
        batch = _step_batch(loop, batch, aug_gen)
        if batch is None:
            loop.scheduler.step()  # a skipped batch keeps its place in the schedule
            continue
        with loop.amp_ctx:
            stats = loop.method.train_step(loop.step_model, batch, loop.optimizer, adapter, loop.ctx)
        loop.scheduler.step()
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
        if save_mid is not None and i + 1 < loop.steps_per_epoch and time.perf_counter() - saved >= MID_EPOCH_SAVE_EVERY_S:
            saved = time.perf_counter()
            save_mid({"step": i + 1, "seen": seen, "loss_sum": float(loss_sum), "acc_sum": float(acc_sum),
                      "aug_gen": aug_gen.get_state(), "time_s": before + saved - t0})
        if on_progress is not None and time.perf_counter() - said >= PROGRESS_LINE_EVERY_S:
            said = time.perf_counter()
            on_progress(epoch + 1, i + 1, loop.steps_per_epoch, float(loss_sum) / seen, before + said - t0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = before + time.perf_counter() - t0
    totals = [float(loss_sum), float(acc_sum), float(seen)]
    if world > 1:  # the epoch's statistics over the global batches; one BatchNorm state for all
        totals = distributed.all_reduce_sum(torch.tensor(totals, dtype=torch.float64, device=_comm(device))).tolist()
        distributed.average_buffers(loop.model)
    if not math.isfinite(totals[0]):
        raise _diverged(epoch, totals[0])
    return {"epoch": epoch + 1, "loss": totals[0] / totals[2], "train_acc": totals[1] / totals[2],
            "lr": loop.optimizer.param_groups[0]["lr"], "time_s": dt}


def _step_batch(loop: Loop, batch, aug_gen):
    """The batch a step trains on: on the device, augmented, and under several processes this rank's
    share of the global batch (the share is set on the step context); None when it is skipped."""
    adapter = loop.adapter
    batch = adapter.to_device(batch, loop.device)
    if loop.skip_single and adapter.batch_size(batch) == 1:
        return None
    if loop.data.train_transform is not None:
        batch = loop.data.train_transform(batch, aug_gen)
    if distributed.world_size() > 1:  # augment the global batch (same draws everywhere), keep this rank's share
        n_global = adapter.batch_size(batch)
        index = distributed.shard_index(n_global, loop.device)
        if index is None:
            return None  # too few examples to give every rank one: skipped everywhere
        batch = adapter.subset(batch, index)
        loop.ctx.share = len(index) / n_global
    return batch


def _validated(validate: Callable[[torch.nn.Module, int], dict], model: torch.nn.Module, epochs_done: int) -> dict:
    """validate(model, epochs_done) in eval mode, leaving the random streams and the mode as they were;
    its time is reported apart from training time."""
    t0 = time.perf_counter()
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            out = dict(validate(model, epochs_done))
        finally:
            model.train(was_training)
    return {**out, "val_time_s": time.perf_counter() - t0} if out else {}


def save_checkpoint(loop: Loop, result: TrainResult, path: Path, run_id: str, epochs_done: int,
                    mid: dict | None = None) -> None:
    """Everything a resumed run needs to reproduce this one; rank 0 writes it. `mid`: written within
    epoch epochs_done + 1, where that epoch stands (see `run_epoch`)."""
    rngs = distributed.gather_objects(rng_state())
    if distributed.is_main():
        atomic_save({
            "run_id": run_id, "epoch": epochs_done, "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(), "scheduler": loop.scheduler.state_dict(),
            "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
            "rng": rngs[0], "rng_ranks": rngs, "world_size": distributed.world_size(),
            "history": result.history, "train_time_s": result.train_time_s,
            "data_fingerprint": loop.data.fingerprint, "mid": mid,
        }, path)


def _comm(device: torch.device) -> torch.device:
    """Where collectives take their tensors: the GPU under NCCL, the CPU under gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


def _progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm.auto import tqdm
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)
