"""Training cost of every method relative to ST, measured in one run on the same model and batches.

    python benchmarks/method_cost.py --task digits --steps 30 --batch-size 128

Prints, per method: measured seconds per step, the ratio to ST, and the declared forward-backward
passes per step. The paper's claim to check: SAM costs about 2x ST, PGD-10 AT about 10x (11 passes).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from suite.config import TaskOptions
from suite.plugins import load_builtins
from suite.registry import METHODS, MODALITIES, TASKS
from suite.train import build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="digits")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    ap.add_argument("--methods", nargs="+", default=["st", "sam", "asam", "esam", "fast_at", "at"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    load_builtins()
    task = TASKS.get(args.task)
    device = torch.device(args.device)
    data = task.build_data(TaskOptions())
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        collate_fn=data.collate, generator=torch.Generator().manual_seed(0))
    adapter = MODALITIES.get(task.modality)(task)
    batches = []
    for b in loader:
        batches.append(adapter.to_device(b, device))
        if len(batches) == 8:
            break

    def per_step(name: str) -> float:
        torch.manual_seed(0)
        model = task.build_model(TaskOptions()).to(device).train()
        method = METHODS.get(name)(**task.method_defaults.get(name, {}))
        opt = build_optimizer(task.recipe, model)
        for i in range(args.warmup):
            method.train_step(model, batches[i % len(batches)], opt, adapter)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(args.steps):
            method.train_step(model, batches[i % len(batches)], opt, adapter)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for _ in range(args.repeats):  # interleave so drift in machine load hits every method alike
        for m in args.methods:
            times[m].append(per_step(m))
    st = statistics.median(times["st"]) if "st" in times else None
    print(f"task {args.task}, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats on {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':10s} {'s/step':>10s} {'vs ST':>8s} {'declared passes':>16s}")
    for m in args.methods:
        t = statistics.median(times[m])
        cost = METHODS.get(m)(**task.method_defaults.get(m, {})).cost()
        ratio = f"{t / st:.2f}x" if st else "–"
        print(f"{m:10s} {t:10.4f} {ratio:>8s} {cost:16.2f}")


if __name__ == "__main__":
    from suite.errors import run_script

    run_script(main)
