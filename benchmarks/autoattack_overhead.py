"""Throughput of AutoAttack (standard version) through the suite vs calling pyautoattack directly.

    OMP_NUM_THREADS=1 python benchmarks/autoattack_overhead.py --task digits --train-steps 300 --n 64
    python benchmarks/autoattack_overhead.py --task cifar10_prn18 --checkpoint runs/<id>/model.pt --n 500
    python benchmarks/autoattack_overhead.py --builder my_module:build --n 256   # build() -> (model, x, y)
    # a trained ResNet-18 (the size of PreActResNet-18): the checkpoint in the pyautoattack wheel
    CKPT=$(python -c "from suite.models.resnet_aa import checkpoint_path; print(checkpoint_path())")
    python benchmarks/autoattack_overhead.py --include examples/autoattack_resnet18.py \
        --task cifar10_aa_resnet18 --checkpoint $CKPT --data-dir ../shared/data --n 32 --repeats 1

Both paths get the same model, the same clean-correct inputs (what evaluation hands an attack), the
same batch size and seed. Prints images/s for: the package called directly
(`AutoAttack(...).run_standard_evaluation`), the suite's `autoattack` attack run batch by batch,
and `suite.evaluate` with that attack (adds the clean pass, the sanity checks and per-batch state);
then the ratios, and whether the robust flags are identical (they must be when --n <= --batch-size:
one package batch; with several batches the package regroups the still-robust points across
batches, so flags agree only statistically). Repeats are interleaved; the median is reported.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from suite.attacks.base import AttackSpec
from suite.config import TaskOptions
from suite.errors import UserError
from suite.params import parse_number
from suite.plugins import load_builtins
from suite.registry import MODALITIES, TASKS


def task_model(args, device):
    """(model, x, y, adapter) from a registered task: its model (trained briefly or loaded) and test split."""
    from suite.data.batches import eval_batches

    task = TASKS.get(args.task)
    opts = TaskOptions(data_dir=args.data_dir)
    data = task.build_data(opts)
    adapter = MODALITIES.get(task.modality)(task)
    torch.manual_seed(0)
    model = task.build_model(opts).to(device)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    elif args.train_steps:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [adapter.to_device(b, device) for b in eval_batches(data.train, 128, data.collate)]
        for step in range(args.train_steps):
            b = batches[step % len(batches)]
            opt.zero_grad()
            adapter.loss(adapter.forward(model, b), b).backward()
            opt.step()
    model.eval()
    xs, ys = [], []
    for b in eval_batches(data.test, 512, data.collate):
        x, y = adapter.to_device(b, device)
        xs.append(x)
        ys.append(y)
    return model, torch.cat(xs), torch.cat(ys), adapter


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="digits")
    ap.add_argument("--include", action="append", default=[], metavar="PATH",
                    help="load task files from a .py file or a folder first (repeatable), as `suite run` does")
    ap.add_argument("--builder", help="module:function returning (model, x, y), x in [0, 1] NCHW; overrides --task")
    ap.add_argument("--checkpoint", help="a state dict (or a dict with 'model') for the task's model")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-steps", type=int, default=300, help="without --checkpoint: Adam steps on the train split")
    ap.add_argument("--n", type=int, default=64, help="clean-correct test images to attack")
    ap.add_argument("--batch-size", type=int, default=None, help="default: --n (one batch)")
    ap.add_argument("--norm", default="linf", choices=("linf", "l2"))
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def measure(args: argparse.Namespace) -> dict:
    """Time the three paths (interleaved repeats, medians) and compare their robust flags; see the
    module docstring. benchmarks/gpu_check.py calls `compare` with a model it trained."""
    from suite.plugins import include

    load_builtins()
    for path in args.include:
        include(path)
    device = torch.device(args.device)
    if args.builder:
        mod, _, fn = args.builder.partition(":")
        model, x, y = getattr(importlib.import_module(mod), fn)()
        model, x, y = model.to(device).eval(), x.to(device), y.to(device)
        adapter = MODALITIES.get("image")()
    else:
        model, x, y, adapter = task_model(args, device)
    return compare(model, x, y, adapter, n=args.n, batch_size=args.batch_size, norm=args.norm, eps=args.eps,
                   repeats=args.repeats, device=device)


def compare(model, x, y, adapter, *, n: int, batch_size: int | None, norm: str, eps: str, repeats: int,
            device: torch.device) -> dict:
    """The three paths on the first `n` clean-correct of (x, y), for a model already built."""
    import pyautoattack

    from suite.evaluate import evaluate

    with torch.no_grad():
        correct = torch.cat([model(x[i:i + 512]).argmax(1) == y[i:i + 512] for i in range(0, len(y), 512)])
    x, y = x[correct][:n], y[correct][:n]
    n, bs = len(y), batch_size or len(y)
    if n == 0:
        raise UserError("AutoAttack: the model classifies none of the test images correctly; nothing to attack")
    eps_text, eps = eps, parse_number(eps)
    spec = AttackSpec.of("autoattack", norm=norm, eps=eps_text)
    attack = spec.build(adapter)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def direct():
        aa = pyautoattack.AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                                     version="standard", device=device, seed=0)
        aa.verbose = False
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=bs)
        return y_adv == y

    def suite_attack():
        return torch.cat([~attack.run(model, (x[i:i + bs], y[i:i + bs])).success for i in range(0, n, bs)])

    def suite_evaluate():
        ds = torch.utils.data.TensorDataset(x.cpu(), y.cpu())
        m = evaluate(model, adapter, ds, [spec], batch_size=bs, device=device)
        return m["attacks"][0]["value"]

    times = {"direct": [], "suite": [], "evaluate": []}
    cpu = {k: [] for k in times}  # process CPU time: steadier than wall time on a shared machine
    flags = {}
    for _ in range(repeats):  # interleaved, so drift in machine load hits every path alike
        for name, fn in (("direct", direct), ("suite", suite_attack), ("evaluate", suite_evaluate)):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            flags[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "norm": norm, "eps": eps_text, "n": n, "batch_size": bs, "device": str(device),
        "threads": torch.get_num_threads(), "repeats": repeats,
        "seconds_wall": med, "seconds_cpu": mcpu,
        "robust_percent": {"direct": 100 * flags["direct"].float().mean().item(),
                           "suite": 100 * flags["suite"].float().mean().item(), "evaluate": flags["evaluate"]},
        "identical_flags": bool(torch.equal(flags["direct"].cpu(), flags["suite"].cpu())),
    }


def report(r: dict) -> None:
    n, med, mcpu = r["n"], r["seconds_wall"], r["seconds_cpu"]
    print(f"AutoAttack standard {r['norm']} {r['eps']} on {n} clean-correct images, batch {r['batch_size']}, "
          f"{r['device']}, {r['threads']} threads, median of {r['repeats']}")
    robust = r["robust_percent"]
    print(f"  {'path':20s} {'images/s (wall)':>16s} {'images/s (cpu)':>15s} {'robust':>8s}")
    for name, title in (("direct", "pyautoattack direct"), ("suite", "suite attack"), ("evaluate", "suite.evaluate")):
        print(f"  {title:20s} {n / med[name]:16.3f} {n / mcpu[name]:15.3f} {robust[name]:7.1f}%")
    print(f"  time ratio to direct (wall / cpu): suite {med['suite'] / med['direct']:.3f} / "
          f"{mcpu['suite'] / mcpu['direct']:.3f}, evaluate {med['evaluate'] / med['direct']:.3f} / "
          f"{mcpu['evaluate'] / mcpu['direct']:.3f}")
    print(f"  identical robust flags (direct vs suite attack): {'yes' if r['identical_flags'] else 'no'}")


def main() -> None:
    report(measure(build_parser().parse_args()))


if __name__ == "__main__":
    from suite.errors import run_script

    run_script(main)  # a wrong --task, --include or --data-dir: one line and exit 2, as in the CLI
