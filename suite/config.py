"""Frozen run settings and the task contract.

`TrainConfig` is a task's recipe (the paper's hyper-parameters by default); `--set key=value`
overrides any field, validated here with one clear line per mistake. `Task` is the frozen spec a
task file registers: what to train and evaluate. The modality adapter says how.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from suite.errors import UserError
from suite.params import parse_bool, parse_number

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "linear", "poly", "constant")
SUBSETS = ("stratified", "random", "first")
AMP = ("auto", "off", "bf16", "fp16")
SAM_ASCENT = ("global", "per_replica")  # SAM under torchrun: see suite.train
EVAL_SPLITS = ("test", "val")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "step"          # step: x gamma at each milestone (fractions of training)
    milestones: tuple[float, ...] = (0.75, 0.9)
    lr_gamma: float = 0.1
    poly_power: float = 0.9         # poly: lr x (1 - t)^power (the segmentation recipe)
    warmup_epochs: float = 0.0      # linear warm-up from 0, in epochs (fractions allowed)
    amp: str = "auto"               # auto: bf16 autocast on CUDA when supported, off on CPU
    train_examples: int = 0         # 0 = the whole training split; else a subset (quick runs)
    train_subset: str = "stratified"
    eval_batch_size: int = 256
    eval_examples: int = 0          # 0 = the whole test split
    eval_subset: str = "stratified"  # how a part of the test split is chosen (suite.subsets)
    subset_seed: int = 0            # fixed per task, not per run: every method sees the same examples
    num_workers: int = 0
    # Speed switches (suite.train's docstring): none changes CPU fp32 results; a run's identity holds
    # them only when set away from these defaults (suite.runner.LATER_TRAIN_FIELDS).
    channels_last: bool = False     # NHWC memory format for convolutional models
    compile: bool = False           # torch.compile the model for training
    sync_bn: bool = False           # SyncBatchNorm across torchrun processes (CUDA only)
    sam_ascent: str = "global"      # under torchrun: SAM's ascent from the global or per-replica gradient
    # Choosing a recipe without touching the test split (also only in a run's identity when set):
    eval_split: str = "test"        # "val": evaluate on the task's validation split (DataBundle.val)
    val_every: int = 0              # > 0: the clean metric on the validation split every N epochs, in history
    crop: int = 0                   # segmentation: the training crop side (square); 0 = the task's own

    def validate(self) -> "TrainConfig":
        def bad(name, why):
            raise UserError(f"invalid training setting {name}={getattr(self, name)!r}: {why}")

        if self.epochs < 1:
            bad("epochs", "must be >= 1")
        if self.batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.eval_batch_size < 1:
            bad("eval_batch_size", "must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.amp not in AMP:
            bad("amp", f"must be one of {', '.join(AMP)}")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", "must be in [0, 1)")
        if not 0 < self.lr_gamma <= 1:
            bad("lr_gamma", "must be in (0, 1]")
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            bad("milestones", "must be increasing fractions of training in (0, 1), e.g. 0.75,0.9")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            bad("warmup_epochs", "must be in [0, epochs]")
        if self.eval_examples < 0:
            bad("eval_examples", "must be >= 0 (0 = all)")
        if self.train_examples < 0:
            bad("train_examples", "must be >= 0 (0 = all)")
        for name in ("train_subset", "eval_subset"):
            if getattr(self, name) not in SUBSETS:
                bad(name, f"must be one of {', '.join(SUBSETS)}")
        if self.subset_seed < 0:
            bad("subset_seed", "must be >= 0")
        if not self.poly_power > 0:
            bad("poly_power", "must be > 0")
        if self.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if self.sam_ascent not in SAM_ASCENT:
            bad("sam_ascent", f"must be one of {', '.join(SAM_ASCENT)}")
        if self.eval_split not in EVAL_SPLITS:
            bad("eval_split", f"must be one of {', '.join(EVAL_SPLITS)}")
        if self.val_every < 0:
            bad("val_every", "must be >= 0 (0 = off)")
        if self.crop < 0:
            bad("crop", "must be >= 0 (0 = the task's own crop)")
        return self

    def override(self, items: Mapping[str, str]) -> "TrainConfig":
        """Apply `--set key=value` strings, converting each to the field's type."""
        kinds = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, raw in items.items():
            kind = kinds[key]
            try:
                if kind in ("int", int):
                    v = parse_number(raw)
                    if not float(v).is_integer():
                        raise ValueError(f"not an integer: {raw!r}")
                    changes[key] = int(v)
                elif kind in ("float", float):
                    changes[key] = parse_number(raw)
                elif kind in ("bool", bool):
                    changes[key] = parse_bool(raw)
                elif "tuple" in str(kind):
                    changes[key] = tuple(parse_number(x) for x in str(raw).split(",") if x.strip())
                else:
                    changes[key] = str(raw)
            except ValueError as e:
                raise UserError(f"--set {key}={raw}: {e}") from None
        return dataclasses.replace(self, **changes).validate()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class TaskOptions:
    """What a user may change about how a task is built, beyond its recipe."""
    data_dir: Path | None = None
    model: str | None = None       # e.g. a hub id or a local directory (text tasks)
    crop: int = 0                  # training crop side of segmentation tasks (TrainConfig.crop); 0: the task's own


# Segmentation masks: the value of unlabelled pixels (void, borders) in every mask the suite reads or
# scores; the data readers write it and the segmentation adapter ignores it.
IGNORE_INDEX = 255


@dataclass
class DataBundle:
    train: Any                      # a torch Dataset
    test: Any                       # a torch Dataset (the split evaluation uses)
    collate: Callable | None = None
    train_transform: Callable | None = None  # applied to a batch on the device (augmentation)
    fingerprint: str = ""           # hash of the data the task read, for provenance
    test_order: str = "unknown"     # "shuffled" where the test split is known to be in random order
                                    # (only then may eval_subset=first take "the first N")
    # The validation split, for choosing a recipe (eval_split=val, val_every): an official one, or a
    # seeded part held out of the training split, in which case `train_without_val` is the rest (what a
    # run that evaluates on val trains on). None: the task has none.
    val: Any = None
    train_without_val: Any = None


@dataclass(frozen=True)
class ReportedRow:
    """A number the paper reports, shown as its own row marked as reported, never mixed with ours."""
    label: str
    metrics: Mapping[str, float]    # column label -> value (percent)
    source: str = ""


@dataclass(frozen=True)
class Task:
    name: str
    modality: str
    version: str
    num_classes: int
    description: str
    build_data: Callable[[TaskOptions], DataBundle]
    build_model: Callable[[TaskOptions], Any]
    recipe: TrainConfig = field(default_factory=TrainConfig)
    method_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    evaluation: tuple = ()          # AttackSpec strings or objects: the default evaluation suite
    # what the board ranks by (then clean): attack specs of the evaluation suite (the paper's budget for
    # the task), or "worst_case" for the norm-bounded worst case; empty = the worst case
    headline: tuple = ()
    reported: tuple[ReportedRow, ...] = ()
    sweeps: Mapping[str, tuple] = field(default_factory=dict)  # preset name -> ((method, {params}), ...)
    report: Callable[[list], str] | None = None  # optional extra markdown section for the leaderboard
    perturbable: Any = None         # optional mask of attackable input features (features modality)
    default_model: str | None = None
    extra_metrics: Callable[[Any, TaskOptions], dict] | None = None  # optional extra numbers of the trained model (record["extra"])
    analyses: tuple = ()            # analysis specs run after evaluation (e.g. "sharpness:rho=0.05")
    corruption_data: str = ""       # folder under --data-dir with <corruption>.npy files (e.g. "CIFAR-10-C")
    corruptions: str = ""           # default corruption spec (suite.data.corruptions), "" = none
    needs_data_dir: bool = False    # the task reads files from --data-dir / SUITE_DATA_DIR
    class_names: tuple = ()         # names of the classes, in label order (boards: per-class IoU columns)


def check_sync_bn(device) -> None:
    """sync_bn=true is refused off CUDA (also with one process), before anything runs (`device`: a
    torch.device)."""
    if device.type != "cuda":
        raise UserError(f"sync_bn=true needs CUDA (PyTorch's SyncBatchNorm synchronises on GPUs only) and this "
                        f"run is on {device.type}; drop --set sync_bn=true (each process then normalises with "
                        "its own share of the batch)")
