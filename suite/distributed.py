"""Several processes, one run: PyTorch's own distributed stack (torchrun, DistributedDataParallel).

    torchrun --nproc_per_node 4 -m suite run --task cifar10_prn18 --method sam --data-dir DATA
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_endpoint HOST:29500 -m suite run ...

torchrun starts one process per GPU (or per CPU slot) and sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; `setup()` reads them, initialises the default process group (NCCL on CUDA,
gloo on CPU) and gives each process its device (cuda:LOCAL_RANK). Without torchrun (WORLD_SIZE
unset or 1) every function here is a no-op and the suite runs as one process.

What the ranks share, and why the result equals one process with the same global batch:
- Training batches: every rank cuts the *same* global batch of `batch_size` examples (the shuffling
  and the augmentation draws are seeded per (seed, epoch), identically on every rank) and keeps its
  contiguous share (`shard_index`); shares differ in size by at most one example. The trainer wraps
  the model in DistributedDataParallel (`wrap`) with a communication hook that weights each rank's
  mean gradient by its share of the batch (the `share` of the state object given to `wrap`: the
  trainer's step context, which it updates before every step), so the all-reduced gradient is the
  mean over the global batch exactly, even for a last batch that does not split evenly.
- BatchNorm: each rank normalises with its own share's statistics, which is *not* what one process
  with the global batch does; running statistics are averaged over ranks at the end of every epoch.
  `--set sync_bn=true` converts BatchNorm to SyncBatchNorm (global batch statistics), which
  PyTorch implements for GPUs only.
- Random numbers: rank 0 draws from the same stream as a single process; the other ranks from
  streams of their own (AT random starts differ per example, as they should). Draws that must agree
  across ranks (ESAM's choice of perturbed tensors) are taken on rank 0 and broadcast (`same`).
- Evaluation: batches are dealt out to ranks round-robin and the per-example statistics are merged
  (`gather_objects`); attacks are seeded per (attack, batch), so the numbers are those of one process.
- Files: records, checkpoints and evaluation state are written by rank 0 only; a checkpoint is read
  by rank 0 and broadcast, so resuming works without a shared file system between nodes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Context:
    """This process's place in the job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


CTX = Context()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: torch.device) -> torch.device:
    """Join the job torchrun started (WORLD_SIZE > 1) and return this process's device; otherwise
    return `device` unchanged. Safe to call more than once."""
    import torch.distributed as dist

    world = env_world_size()
    if world <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)  # one GPU per process, whatever --device said
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        import atexit
        atexit.register(_shutdown)
    CTX.rank, CTX.world_size, CTX.local_rank = dist.get_rank(), dist.get_world_size(), local
    return device


def init_for_test(rank: int, world_size: int, init_file: str) -> None:
    """Join a gloo group through a file (tests spawn processes without torchrun)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    CTX.rank, CTX.world_size, CTX.local_rank = rank, world_size, rank


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    CTX.rank, CTX.world_size, CTX.local_rank = 0, 1, 0


def shutdown() -> None:
    _shutdown()


def active() -> bool:
    return CTX.world_size > 1


def rank() -> int:
    return CTX.rank


def world_size() -> int:
    return CTX.world_size


def is_main() -> bool:
    return CTX.rank == 0


def barrier() -> None:
    if active():
        import torch.distributed as dist
        dist.barrier()


# --- objects -------------------------------------------------------------------------------------

def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (pickled; for decisions, records and checkpoints)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj if CTX.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def gather_objects(obj: Any) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out = [None] * CTX.world_size
    dist.all_gather_object(out, obj)
    return out


def _comm_device():
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def same(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's value of `t` on every rank (in place), for random draws that must agree."""
    if active():
        import torch.distributed as dist

        dev = _comm_device()
        if dev is not None and t.device != dev:
            moved = t.to(dev)
            dist.broadcast(moved, src=0)
            t.copy_(moved)
        else:
            dist.broadcast(t, src=0)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# --- batches -------------------------------------------------------------------------------------

def shard_index(n: int, device=None) -> torch.Tensor | None:
    """This rank's contiguous share of a global batch of n examples (sizes differ by at most one),
    or None when n < world size (a batch too small to give every rank an example)."""
    if n < CTX.world_size:
        return None
    lo = CTX.rank * n // CTX.world_size
    hi = (CTX.rank + 1) * n // CTX.world_size
    return torch.arange(lo, hi, device=device)


# --- models and gradients ------------------------------------------------------------------------

def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise). Passes that
    need no parameter gradients (attacks, ranking forwards) run on it, outside DDP's reducer."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_ddp(model: torch.nn.Module) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def _weighted_mean_hook(state, bucket):
    """All-reduce that weights this rank's mean gradient by its share of the global batch
    (`state.share`), so the result is the global batch's mean gradient (DDP's default divides by the
    world size, which is the same only when every share has the same size)."""
    import torch.distributed as dist

    buf = bucket.buffer()
    buf.mul_(state.share)
    fut = dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap(model: torch.nn.Module, device: torch.device, state: Any) -> torch.nn.Module:
    """DistributedDataParallel around `model` (its parameters are broadcast from rank 0 here).

    `state` is an object with a `share` attribute, this rank's share of the current global batch,
    which the gradient hook reads at every backward: the trainer passes its step context
    (suite.methods.base.StepContext) and updates `share` before every step.

    Buffers are not synchronised at every forward (one collective per forward pass, and SAM runs
    two): BatchNorm running statistics stay per rank and `average_buffers` averages them once per
    epoch instead."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # `forward_sync_buffers` replaced `broadcast_buffers` in recent PyTorch (buffers are still
    # synchronised once, at construction, which is what we want)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    ddp = DistributedDataParallel(model, device_ids=ids, **sync)
    ddp.register_comm_hook(state, _weighted_mean_hook)
    return ddp


def all_reduce_grads_(params, share: float) -> None:
    """Weighted all-reduce of the .grad of `params` (the same list on every rank), each rank's
    weighted by its `share` of the global batch (the step context's): by hand, for passes run on the
    unwrapped model (ESAM's first pass computes the gradient of some tensors only, which DDP's
    reducer cannot do). One flat buffer, one collective."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).mul_(share)
    all_reduce_sum(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, so every rank
    evaluates and checkpoints the same model."""
    if not active():
        return
    bufs = [b for b in unwrap(model).buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.detach().reshape(-1).float() for b in bufs])
    all_reduce_sum(flat).div_(CTX.world_size)
    offset = 0
    for b in bufs:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()
