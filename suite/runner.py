"""From names and settings to a recorded run: plan (validate everything, compute the run id), then
execute (build data and model, train, evaluate, record). The CLI, sweeps and tests all go through
these two functions.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from suite.attacks.base import AttackSpec
from suite.config import Task, TaskOptions, TrainConfig
from suite.errors import UserError
from suite.evaluate import eval_subset, evaluate
from suite.methods.base import Method
from suite.modalities.base import Adapter
from suite.records import SCHEMA_VERSION, RecordStore, provenance, run_id
from suite.registry import METHODS, MODALITIES, TASKS, load_builtins
from suite.train import train


def default_data_dir() -> Path:
    env = os.environ.get("SUITE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "suite" / "data"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


@dataclass
class RunPlan:
    task: Task
    method: Method
    adapter: Adapter
    cfg: TrainConfig
    seed: int
    attacks: list[AttackSpec]
    options: TaskOptions
    identity: dict
    run_id: str


def split_overrides(task: Task, method_cls, items: Mapping[str, str]) -> tuple[dict, dict]:
    """`--set key=value`: a training field, or a parameter of the method. Anything else is an error."""
    train_fields = set(TrainConfig.field_names())
    train_set, method_set = {}, {}
    for key, value in items.items():
        if key in train_fields:
            train_set[key] = value
        elif key in method_cls.params:
            method_set[key] = value
        else:
            import difflib
            known = sorted(train_fields | set(method_cls.params))
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"--set {key}: not a training setting of task {task.name} nor a parameter of method "
                            f"{method_cls.name}.{hint} Known: {', '.join(known)}")
    return train_set, method_set


def plan_run(
    task_name: str,
    method_name: str,
    *,
    method_params: Mapping[str, Any] | None = None,
    overrides: Mapping[str, str] | None = None,
    seed: int = 0,
    attacks: list[str] | None = None,
    options: TaskOptions | None = None,
) -> RunPlan:
    load_builtins()
    task: Task = TASKS.get(task_name)
    method_cls = METHODS.get(method_name)
    train_set, method_set = split_overrides(task, method_cls, overrides or {})
    params = dict(task.method_defaults.get(method_name, {}))
    params.update(method_set)
    params.update(method_params or {})
    method = method_cls(**params)
    cfg = task.recipe.override(train_set) if train_set else task.recipe.validate()
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    adapter = MODALITIES.get(task.modality)(task)
    specs = [s if isinstance(s, AttackSpec) else AttackSpec.parse(s)
             for s in (task.evaluation if attacks is None else attacks)]
    resolved = [spec.resolved(adapter) for spec in specs]  # validates every attack now, not after training
    options = options or TaskOptions()
    model_id = options.model or task.default_model
    identity = {
        "task": task.name, "task_version": task.version, "model": model_id,
        "method": method.name, "method_params": method.p,
        "train": dataclasses.asdict(cfg), "seed": seed, "evaluation": resolved,
    }
    return RunPlan(task, method, adapter, cfg, seed, specs, options, identity, run_id(identity))


def build_data(plan_task: Task, options: TaskOptions):
    if plan_task.needs_data_dir:
        data_dir = options.data_dir or default_data_dir()
        options = dataclasses.replace(options, data_dir=Path(data_dir))
    return plan_task.build_data(options), options


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # process peak resident set size (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def execute(
    plan: RunPlan,
    store: RecordStore,
    *,
    work_dir: Path,
    device: torch.device,
    force: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Train, evaluate and record one run; returns the record. Skips a run already recorded."""
    path = store.path(plan.task.name, plan.run_id)
    if store.exists(plan.task.name, plan.run_id) and not force:
        log(f"already recorded: {path} (use --force to run again)")
        return store.read(path)
    run_dir = Path(work_dir) / plan.run_id
    record = {
        "schema": SCHEMA_VERSION, "run_id": plan.run_id, "status": "failed", "error": None,
        "task": {"name": plan.task.name, "version": plan.task.version, "modality": plan.task.modality},
        "model": plan.identity["model"],
        "method": {"name": plan.method.name, "params": plan.method.p, "label": plan.method.label()},
        "train": plan.identity["train"], "seed": plan.seed,
        "evaluation": {"attacks": plan.identity["evaluation"], "n_examples": plan.cfg.eval_examples},
        "metrics": None, "cost": {}, "provenance": {},
    }
    t_start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        data, options = build_data(plan.task, plan.options)
        torch.manual_seed(plan.seed)  # model initialisation is part of the seeded run
        model = plan.task.build_model(options)
        if force and (run_dir / "checkpoint.pt").exists():
            (run_dir / "checkpoint.pt").unlink()  # --force means from scratch
            (run_dir / "eval_state.pt").unlink(missing_ok=True)
        log(f"run {plan.run_id}: task {plan.task.name}, {plan.method.label()}, seed {plan.seed}, "
            f"{plan.cfg.epochs} epochs on {device}")
        result = train(model, plan.method, plan.adapter, data, plan.cfg, seed=plan.seed, device=device,
                       checkpoint=run_dir / "checkpoint.pt", run_id=plan.run_id, progress=progress)
        torch.save(model.state_dict(), run_dir / "model.pt")
        test = eval_subset(data.test, plan.cfg.eval_examples)
        metrics = evaluate(model, plan.adapter, test, plan.attacks, batch_size=plan.cfg.eval_batch_size,
                           device=device, collate=data.collate, state_path=run_dir / "eval_state.pt",
                           seed=plan.seed, progress=progress)
        record["metrics"] = metrics
        record["history"] = result.history
        if plan.task.analyze is not None:
            record["extra"] = plan.task.analyze(model, options)
        record["status"] = "complete"
        record["cost"] = {
            "wall_time_s": time.perf_counter() - t_start, "train_time_s": result.train_time_s,
            "eval_time_s": metrics["eval_time_s"], "steps": result.steps,
            "passes_per_step": plan.method.cost(), "peak_memory_mb": peak_memory_mb(device),
            "device": _device_name(device), "amp": result.amp, "resumed_from_epoch": result.resumed_from_epoch,
        }
        record["provenance"] = provenance(data.fingerprint)
    except (UserError, KeyboardInterrupt):
        raise  # bad input is not a run; an interrupt leaves the checkpoint to resume from
    except Exception as e:
        record["error"] = "".join(traceback.format_exception(e))[-4000:]
        record["cost"] = {"wall_time_s": time.perf_counter() - t_start, "device": _device_name(device)}
        record["provenance"] = provenance()
        if not path.exists():  # never replace a result with a failure
            store.write(record)
        raise RunFailed(f"run {plan.run_id} failed: {type(e).__name__}: {e} (recorded in {path})") from e
    store.write(record)
    log(f"recorded {path}")
    return record


class RunFailed(Exception):
    pass


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Accept a suite checkpoint (a dict with 'model') or a plain state dict."""
    from suite.train import load_checkpoint
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path}: no such file")
    state = load_checkpoint(Path(path))
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path}: not a state dict or suite checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint {path} does not fit this task's model: {first}") from None


