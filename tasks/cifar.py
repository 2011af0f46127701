"""CIFAR-10 / CIFAR-100 image classification: the paper's main tasks, plus a CPU-sized CIFAR-10 task.

Tasks
- `cifar10_prn18`, `cifar100_prn18`: PreActResNet-18, the paper's recipe (Tables 2 and 1).
- `cifar10_wrn28`: WRN-28-10, same recipe (the ICML version's larger model).
- `cifar10_vit`: a DeiT-tiny-sized ViT from timm with 4x4 patches on 32x32 (`--model vit_tiny_patch2`
  for 2x2 patches; see suite/models/vit.py for the cost of each), trained from scratch.
- `cifar10_cpu`: a small residual network that trains on the full training split on one CPU core in
  about 15 minutes (see "The CPU task" below).

Data (`--data-dir`, see suite/data/images.py). The first copy found is used:
1. the official python version, `<data-dir>/cifar-10-batches-py/` (`cifar-100-python/` for
   CIFAR-100), or those files in `<data-dir>` itself: lossless, the copy the paper used;
2. an image folder `<data-dir>/cifar10_jpeg/{train,test}/<class>/*` (also `cifar10/`, or
   `<data-dir>` itself); class folders must be the standard class names, mapped to the standard label
   order (airplane .. truck; CIFAR-100's fine labels). A JPEG copy is lossy: its numbers are not
   comparable with numbers on the official pixels;
3. with SUITE_DOWNLOAD=1, the official archive is downloaded into `<data-dir>` (MD5-checked).
The record's data fingerprint names the copy (`cifar-10-batches-py:<hash>` or
`cifar10_jpeg:<hash>`), and so do the leaderboards.

Recipe (PAPER.md): 100 epochs, batch 128, SGD lr 0.1, momentum 0.9, weight decay 5e-4, lr x0.1 at 75%
and 90% of training, random crop (4-pixel zero padding) and horizontal flip. SAM rho 0.1 by default
(the sweeps use 0.1/0.2/0.4). AT with the authors' settings: linf eps 1/2/4/8 (/255) with steps
0.5/1/1/2 (/255) and 5/5/10/10 iterations; l2 eps 16..128/255 with step eps/2 and 5 iterations.
Evaluation: PGD-10 (step eps/4, random start) at the paper's budgets linf 1/255, 2/255, l2 16/255,
32/255, plus linf 4/255 and 8/255, on 1000 test images (the paper's number; a class-stratified seeded
subset, the same for every method).

The CPU task (`cifar10_cpu`). Model: suite/models/small_resnet.py, a ResNet-9-style network at 1/4 of
Page's DAWNBench width (stem 16, stages 32 / 64 / 128 channels, residual blocks after the first and
last stage): 412,944 parameters, 24.0 M multiply-adds per 32x32 image (about 0.14 GFLOP per training
example, forward and backward). Recipe, chosen by measurement: 8 epochs, batch 256, SGD with
Nesterov momentum 0.9, lr 0.2 with a linear warm-up over 1.5 epochs then linear decay to 0, weight
decay 5e-4, crop + flip; no label smoothing. Measured with OMP_NUM_THREADS=1 on this project's
2-core Xeon (AVX-512), on the cifar10_jpeg copy, while other jobs shared the machine:
886 s of CPU time for the 8 epochs (~110 s per epoch on a core of its own, ~470 images/s), 1,201 s
of wall time at 290-410 images/s as it was shared; clean accuracy 84.7% on all 10,000 test images.
Evaluation: clean and the PGD-10 columns on the whole 10,000-image test split; AutoAttack linf 8/255
and the APGD-CE+T check at linf 1/255 and 2/255 on a nested class-balanced 500, StAdv and Pixle on 200. Trade-offs measured the same way: 6 epochs took 654 s
of CPU time for 83.1%; bf16 autocast (`--set amp=bf16`) took 461 s for the 8 epochs (1.9x faster,
this CPU has AMX / AVX512-BF16) for 84.3%; it stays off by default because bf16 is much slower on
CPUs without those units. channels-last memory format made fp32 steps ~1.4x faster; batch 128 vs
256 vs 512 made no clear difference. Width 24 / 48 / 96 / 192 cost 2.2x per epoch, width 32 / 64 /
128 / 256 3.3x, so the 15-minute budget holds only this width for enough epochs.
"""
from __future__ import annotations

import sys

from suite.config import DataBundle, ReportedRow, Task, TaskOptions, TrainConfig
from suite.errors import UserError
from suite.registry import TASKS

PAPER_RECIPE = TrainConfig(epochs=100, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                           schedule="step", milestones=(0.75, 0.9), lr_gamma=0.1, eval_examples=1000)

# the paper's four budgets first (the columns of Tables 1 and 2), then two larger linf ones
EVALUATION = (
    "pgd:norm=linf,eps=1/255,steps=10",
    "pgd:norm=linf,eps=2/255,steps=10",
    "pgd:norm=l2,eps=16/255,steps=10",
    "pgd:norm=l2,eps=32/255,steps=10",
    "pgd:norm=linf,eps=4/255,steps=10",
    "pgd:norm=linf,eps=8/255,steps=10",
)

# The rest of the image attack suite: AutoAttack (standard) at linf 8/255 and at the paper's budgets,
# StAdv and the sparse pixel attack, each on a nested class-balanced part of the evaluated images
# (they cost far more than PGD-10).
AUTOATTACK = tuple(f"autoattack:norm={norm},eps={eps},n=500" for norm, eps in
                   (("linf", "8/255"), ("linf", "1/255"), ("linf", "2/255"), ("l2", "16/255"), ("l2", "32/255")))
FULL_EVALUATION = EVALUATION + AUTOATTACK + ("stadv:n=200", "pixle:n=200")
# What the boards rank by: the paper's budget, under AutoAttack where the suite runs it at that budget
# (the PreActResNet-18, WRN and ViT tasks), else under PGD-10 (the CPU task).
HEADLINE_AA = ("autoattack:norm=linf,eps=2/255,n=500",)
HEADLINE_PGD = "pgd:norm=linf,eps=2/255,steps=10"
ANALYSES = ("sharpness:rho=0.05", "asharpness:rho=0.5", "hessian")

# The authors' AT training settings (PAPER.md, "Settings known from the authors' code"):
# eps (in 1/255) -> (step in 1/255, iterations)
AT_LINF = {1: (0.5, 5), 2: (1, 5), 4: (1, 10), 8: (2, 10)}
AT_L2 = (16, 32, 64, 128)  # step eps / 2, 5 iterations


def at_linf(k: int) -> tuple[str, dict]:
    step, steps = AT_LINF[k]
    return ("at", {"norm": "linf", "eps": k / 255, "step_size": step / 255, "steps": steps})


def at_l2(k: int) -> tuple[str, dict]:
    return ("at", {"norm": "l2", "eps": k / 255, "step_size": k / 2 / 255, "steps": 5})


# Table 2 / Table 1 rows, in the paper's order
PAPER_ROWS = (("st", {}), ("sam", {"rho": 0.1}), ("sam", {"rho": 0.2}), ("sam", {"rho": 0.4}),
              *(at_linf(k) for k in AT_LINF), *(at_l2(k) for k in AT_L2))

METHOD_DEFAULTS = {
    "sam": {"rho": 0.1},
    "at": dict(at_linf(8)[1]),
    "fast_at": {"norm": "linf", "eps": 8 / 255},
}

# Column labels are the suite's own attack labels for the same budgets (suite.attacks.gradient.PGD.label),
# row labels the suite's method labels, so the reported table lines up with ours.
COLUMNS = ("clean", "PGD-10 linf 1/255", "PGD-10 linf 2/255", "PGD-10 l2 16/255", "PGD-10 l2 32/255")
ROW_LABELS = ("ST", "SAM rho=0.1", "SAM rho=0.2", "SAM rho=0.4",
              "AT linf 1/255 (PGD-5)", "AT linf 2/255 (PGD-5)", "AT linf 4/255 (PGD-10)", "AT linf 8/255 (PGD-10)",
              "AT l2 16/255 (PGD-5)", "AT l2 32/255 (PGD-5)", "AT l2 64/255 (PGD-5)", "AT l2 128/255 (PGD-5)")
TABLE2_CIFAR10 = (
    (94.6, 39.6, 8.9, 76.1, 51.7), (95.6, 45.1, 9.4, 81.0, 56.3), (95.5, 48.9, 10.2, 82.9, 58.8),
    (94.7, 56.1, 15.6, 84.0, 64.4), (93.7, 86.4, 75.5, 90.5, 86.4), (92.8, 87.4, 79.6, 90.3, 86.9),
    (90.9, 86.4, 81.3, 88.3, 85.7), (84.2, 81.5, 78.4, 82.5, 80.8), (94.5, 82.2, 61.7, 90.3, 84.5),
    (93.7, 84.9, 70.9, 91.0, 86.7), (92.7, 85.6, 75.2, 90.7, 87.5), (90.2, 85.7, 78.4, 89.6, 87.1),
)
TABLE1_CIFAR100 = (
    (76.9, 13.6, 1.7, 44.5, 21.2), (78.0, 19.6, 3.0, 51.5, 27.2), (78.5, 23.1, 4.2, 54.2, 31.3),
    (78.7, 28.3, 6.5, 57.0, 36.2), (73.1, 60.4, 46.6, 67.4, 61.5), (70.1, 60.3, 50.6, 65.7, 60.6),
    (66.2, 59.3, 52.0, 62.8, 58.9), (60.4, 55.1, 50.4, 57.0, 54.3), (74.8, 52.8, 31.4, 66.3, 57.7),
    (73.2, 57.4, 40.6, 67.1, 61.0), (70.7, 58.1, 45.9, 66.1, 60.7), (67.4, 58.2, 48.7, 63.9, 60.4),
)
SOURCE = ("Wei, Zhu, Zhang, Sharpness-Aware Minimization Alone can Improve Adversarial Robustness "
          "(arXiv 2305.05392), {table}; PreActResNet-18, official CIFAR files, mean of 3 runs")


def reported(table, name: str) -> tuple[ReportedRow, ...]:
    return tuple(ReportedRow(label, dict(zip(COLUMNS, values)), source=SOURCE.format(table=name))
                 for label, values in zip(ROW_LABELS, table))


# --- data ---------------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)  # progress, not an error: stderr holds only the one error line


def cifar_data(kind: str, options: TaskOptions) -> DataBundle:
    from suite.data.augment import CropFlip
    from suite.data.images import as_tensor_dataset, load_cifar

    if options.data_dir is None:
        raise UserError(f"{kind} needs a data directory: pass --data-dir (or set SUITE_DATA_DIR)")
    s = load_cifar(options.data_dir, kind, log=_log)
    return DataBundle(
        train=as_tensor_dataset(*s.splits["train"]),
        test=as_tensor_dataset(*s.splits["test"]),
        train_transform=CropFlip(padding=4),
        fingerprint=s.fingerprint,
        # the official test batch is in a random class order (the paper takes its first 1000);
        # an image folder lists the classes one after another
        test_order="shuffled" if s.copy == "cifar-10-batches-py" or s.copy == "cifar-100-python" else "by_class",
    )


def build_cifar10(options: TaskOptions) -> DataBundle:
    return cifar_data("cifar10", options)


def build_cifar100(options: TaskOptions) -> DataBundle:
    return cifar_data("cifar100", options)


# --- models -------------------------------------------------------------------------------------------

def _fixed_model(options: TaskOptions, task: str) -> None:
    if options.model is not None:
        raise UserError(f"task {task} has a fixed architecture; --model is not an option here")


def prn18_cifar10(options: TaskOptions):
    from suite.models.layers import CIFAR10_MEAN, CIFAR10_STD
    from suite.models.preact_resnet import preact_resnet18

    _fixed_model(options, "cifar10_prn18")
    return preact_resnet18(10, CIFAR10_MEAN, CIFAR10_STD)


def prn18_cifar100(options: TaskOptions):
    from suite.models.layers import CIFAR100_MEAN, CIFAR100_STD
    from suite.models.preact_resnet import preact_resnet18

    _fixed_model(options, "cifar100_prn18")
    return preact_resnet18(100, CIFAR100_MEAN, CIFAR100_STD)


def wrn28_cifar10(options: TaskOptions):
    from suite.models.layers import CIFAR10_MEAN, CIFAR10_STD
    from suite.models.wide_resnet import wrn_28_10

    _fixed_model(options, "cifar10_wrn28")
    return wrn_28_10(10, dropout=0.0, mean=CIFAR10_MEAN, std=CIFAR10_STD)


VIT_MODELS = {"vit_tiny_patch4": 4, "vit_tiny_patch2": 2}


def vit_cifar10(options: TaskOptions):
    from suite.models.vit import vit_tiny

    name = options.model or "vit_tiny_patch4"
    if name not in VIT_MODELS:
        raise UserError(f"cifar10_vit: unknown --model {name!r}; choose {' or '.join(VIT_MODELS)}")
    return vit_tiny(10, patch_size=VIT_MODELS[name])


def small_cifar10(options: TaskOptions):
    from suite.models.small_resnet import small_resnet

    _fixed_model(options, "cifar10_cpu")
    return small_resnet(10)


# --- tasks --------------------------------------------------------------------------------------------

DATA_NOTE = ("data: <data-dir>/cifar-10-batches-py (official) or an image folder such as cifar10_jpeg "
             "(lossy; the record names the copy)")

TASKS.register("cifar10_prn18", Task(
    name="cifar10_prn18", modality="image", version="1", num_classes=10,
    description=f"CIFAR-10, PreActResNet-18, the paper's recipe and Table 2; {DATA_NOTE}",
    build_data=build_cifar10, build_model=prn18_cifar10,
    recipe=PAPER_RECIPE, method_defaults=METHOD_DEFAULTS, evaluation=FULL_EVALUATION, headline=HEADLINE_AA, analyses=ANALYSES,
    corruption_data="CIFAR-10-C", reported=reported(TABLE2_CIFAR10, "Table 2 (CIFAR-10)"),
    sweeps={"paper_table2": PAPER_ROWS},
    needs_data_dir=True,
))

TASKS.register("cifar100_prn18", Task(
    name="cifar100_prn18", modality="image", version="1", num_classes=100,
    description=("CIFAR-100 (fine labels), PreActResNet-18, the paper's recipe and Table 1; data: "
                 "<data-dir>/cifar-100-python (official) or an image folder of the 100 classes"),
    build_data=build_cifar100, build_model=prn18_cifar100,
    recipe=PAPER_RECIPE, method_defaults=METHOD_DEFAULTS, evaluation=FULL_EVALUATION, headline=HEADLINE_AA, analyses=ANALYSES,
    corruption_data="CIFAR-100-C", reported=reported(TABLE1_CIFAR100, "Table 1 (CIFAR-100)"),
    sweeps={"paper_table1": PAPER_ROWS},
    needs_data_dir=True,
))

TASKS.register("cifar10_wrn28", Task(
    name="cifar10_wrn28", modality="image", version="1", num_classes=10,
    description=f"CIFAR-10, WRN-28-10 (36.5M parameters), the paper's recipe; {DATA_NOTE}",
    build_data=build_cifar10, build_model=wrn28_cifar10,
    recipe=PAPER_RECIPE, method_defaults=METHOD_DEFAULTS, evaluation=FULL_EVALUATION, headline=HEADLINE_AA, analyses=ANALYSES,
    corruption_data="CIFAR-10-C",
    needs_data_dir=True,
))

# The paper gives no ViT recipe. This is the usual from-scratch one for small ViTs (DeiT-style):
# AdamW lr 1e-3, weight decay 0.05, 5 warm-up epochs then cosine decay; batch and epochs as the paper's
# image recipe, and its crop + flip augmentation (no RandAugment / mixup, which DeiT adds, so a ViT
# trained here from scratch ends well below a CNN's clean accuracy).
VIT_RECIPE = TrainConfig(epochs=100, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.05,
                         schedule="cosine", warmup_epochs=5, eval_examples=1000)

TASKS.register("cifar10_vit", Task(
    name="cifar10_vit", modality="image", version="1", num_classes=10,
    description=(f"CIFAR-10, ViT (DeiT-tiny dims, 4x4 patches; --model vit_tiny_patch2 for 2x2) from "
                 f"scratch, AdamW + cosine; {DATA_NOTE}"),
    build_data=build_cifar10, build_model=vit_cifar10, default_model="vit_tiny_patch4",
    recipe=VIT_RECIPE, method_defaults=METHOD_DEFAULTS, evaluation=FULL_EVALUATION, headline=HEADLINE_AA, analyses=ANALYSES,
    corruption_data="CIFAR-10-C",
    needs_data_dir=True,
))

# --- the CPU-sized task -------------------------------------------------------------------------------

# Measured on one core (OMP_NUM_THREADS=1) of this project's 2-core Xeon (AVX-512), shared with other
# jobs; see the task description and suite/models/small_resnet.py.
# evaluated on the whole 10,000-image test split (PGD-10 costs ~2 minutes per budget per model on a core)
CPU_RECIPE = TrainConfig(epochs=8, batch_size=256, optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True,
                         weight_decay=5e-4, schedule="linear", warmup_epochs=1.5, eval_examples=0,
                         eval_batch_size=500)
# Is PGD-10 enough at the paper's two linf budgets? AutoAttack's APGD-CE then APGD-T on 500 of the images
# (nested in the evaluated ones), compared per example with PGD-10 on the same images.
APGD_CHECK = ("apgd:norm=linf,eps=1/255,n=500", "apgd:norm=linf,eps=2/255,n=500")

TASKS.register("cifar10_cpu", Task(
    name="cifar10_cpu", modality="image", version="1", num_classes=10,
    description=("CIFAR-10, a small ResNet-9-style network trained on the full training split in about "
                 f"15 minutes on one CPU core; {DATA_NOTE}"),
    build_data=build_cifar10, build_model=small_cifar10,
    recipe=CPU_RECIPE,
    method_defaults={
        "sam": {"rho": 0.1},
        "at": {"norm": "linf", "eps": 2 / 255, "step_size": 1 / 255, "steps": 3},
        "fast_at": {"norm": "linf", "eps": 8 / 255},
    },
    # on a CPU AutoAttack at the small budgets costs hours per model (the points APGD-CE leaves
    # robust go through APGD-T, FAB-T and Square); linf 8/255 is the standard one. Add the others with
    # --attacks where time allows.
    evaluation=EVALUATION + AUTOATTACK[:1] + APGD_CHECK + ("stadv:n=200", "pixle:n=200"),
    headline=(HEADLINE_PGD,),
    analyses=ANALYSES,
    corruption_data="CIFAR-10-C",
    sweeps={"cifar10_cpu_main": (
        ("st", {}), ("sam", {"rho": 0.1}), ("sam", {"rho": 0.2}),
        ("at", {"norm": "linf", "eps": 2 / 255, "step_size": 1 / 255, "steps": 3}),
        ("at", {"norm": "linf", "eps": 8 / 255, "step_size": 2.5 * 8 / 3 / 255, "steps": 3}),
        ("fast_at", {"norm": "linf", "eps": 8 / 255}),
    )},
    needs_data_dir=True,
))
