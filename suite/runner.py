"""From names and settings to a recorded run: plan (validate everything, compute the run id), then
execute (build data and model, train, evaluate, analyze, record). The CLI, sweeps and tests all go
through these functions.

Safety around results: output folders are checked before any compute; a run holds a lock on its id
while it trains, so two processes (overlapping sweeps, shards of one grid) never train the same run
twice: the second waits for the first and then finds its record; every file is written to a unique
temporary name and renamed; a failure is recorded only where no complete record exists.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from suite import distributed as D
from suite import subsets
from suite.attacks.base import AttackSpec
from suite.config import Task, TaskOptions, TrainConfig
from suite.errors import UserError
from suite.evaluate import evaluate
from suite.methods.base import Method
from suite.modalities.base import Adapter
from suite.records import SCHEMA_VERSION, RecordStore, provenance, run_id
from suite.registry import ANALYSES, METHODS, MODALITIES, TASKS, load_builtins
from suite.train import atomic_save, train


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


def check_writable_dir(path: Path, flag: str) -> None:
    """A folder the run will write into: it is a directory (or can be made one) and is writable.

    Checked before any data is read or any step is trained, so a typo never costs a run."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a directory; pass a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {path}: {probe} is a file, so the folder cannot be created; pass another folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {probe} is not writable; pass a folder you can write to")


# --- planning ----------------------------------------------------------------------------------------

@dataclass
class RunPlan:
    task: Task
    method: Method
    adapter: Adapter
    cfg: TrainConfig
    seed: int
    attacks: list[AttackSpec]
    analyses: list[tuple[str, dict]]
    corruptions: list[tuple[str, int]]
    options: TaskOptions
    identity: dict
    run_id: str


# Training settings added after runs were first recorded (the speed switches of suite.train): they
# enter a run's identity only when set away from their defaults, so earlier run ids stay valid.
LATER_TRAIN_FIELDS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                      if f.name in ("channels_last", "compile", "sync_bn", "sam_ascent")}


def train_identity(cfg: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if not (k in LATER_TRAIN_FIELDS and v == LATER_TRAIN_FIELDS[k])}


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


def _reject_conflicts(method_cls, flags: Mapping[str, Any], sets: Mapping[str, Any]) -> None:
    """`--rho 0.1 --set rho=0.3` names two values for one parameter: refuse rather than pick one."""
    for key in sorted(set(flags) & set(sets)):
        p = method_cls.params[key]
        try:
            same = p.parse(flags[key]) == p.parse(sets[key])
        except ValueError:
            same = False  # one of them is invalid; resolve_params reports which
        if not same:
            raise UserError(f"{key} is given twice with different values (--{key.replace('_', '-')} {flags[key]} "
                            f"and --set {key}={sets[key]}); give it once")


def parse_analysis(text: str) -> tuple[str, dict]:
    from suite.attacks.base import parse_spec
    name, items = parse_spec(text, kind="analysis", example="sharpness:rho=0.05")
    return name, dict(items)


def build_analysis(spec: tuple[str, dict], adapter: Adapter):
    name, params = spec
    cls = ANALYSES.get(name)
    if cls.modalities and adapter.name not in cls.modalities:
        raise UserError(f"analysis {name!r} does not support modality {adapter.name!r}")
    return cls(adapter, **params)


def plan_run(
    task_name: str,
    method_name: str,
    *,
    method_params: Mapping[str, Any] | None = None,
    overrides: Mapping[str, str] | None = None,
    seed: int = 0,
    attacks: list[str] | None = None,
    analyses: list[str] | None = None,
    corruptions: str | None = None,
    options: TaskOptions | None = None,
) -> RunPlan:
    load_builtins()
    task: Task = TASKS.get(task_name)
    method_cls = METHODS.get(method_name)
    train_set, method_set = split_overrides(task, method_cls, overrides or {})
    _reject_conflicts(method_cls, method_params or {}, method_set)
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
    an_specs = [parse_analysis(a) for a in (task.analyses if analyses is None else analyses)]
    an_resolved = [{"name": name, **build_analysis((name, p), adapter).p} for name, p in an_specs]
    corr = _plan_corruptions(task, task.corruptions if corruptions is None else corruptions)
    options = options or TaskOptions()
    model_id = options.model or task.default_model
    identity = {
        "task": task.name, "task_version": task.version, "model": model_id,
        "method": method.name, "method_params": method.identity_params(),
        "train": train_identity(cfg), "seed": seed, "evaluation": resolved,
    }
    if an_resolved:  # absent when empty, so runs without analyses keep the ids they always had
        identity["analyses"] = an_resolved
    if corr:
        identity["corruptions"] = [f"{n}:{s}" for n, s in corr]
    return RunPlan(task, method, adapter, cfg, seed, specs, an_specs, corr, options, identity, run_id(identity))


def _plan_corruptions(task: Task, spec: str) -> list[tuple[str, int]]:
    if not spec:
        return []
    if not task.corruption_data:
        raise UserError(f"task {task.name} has no corruption data (only tasks with a CIFAR-10-C-style folder do); "
                        "drop --corruptions")
    from suite.data.corruptions import parse_spec
    return parse_spec(spec)


def corruption_folder(plan: RunPlan, options: TaskOptions) -> Path:
    return Path(options.data_dir or default_data_dir()) / plan.task.corruption_data


def build_data(plan_task: Task, options: TaskOptions):
    if plan_task.needs_data_dir:
        data_dir = options.data_dir or default_data_dir()
        options = dataclasses.replace(options, data_dir=Path(data_dir))
    return plan_task.build_data(options), options


def prepare_data(plan: RunPlan):
    """The task's data, with the training subset applied and the evaluation subset checked."""
    data, options = build_data(plan.task, plan.options)
    cfg = plan.cfg
    if cfg.train_examples:
        idx = subsets.select(data.train, cfg.train_examples, cfg.train_subset, cfg.subset_seed)
        data.train = subsets.subset(data.train, idx)
    if plan.corruptions:  # the files are checked before anything trains
        from suite.data.corruptions import check_folder
        check_folder(corruption_folder(plan, options), plan.corruptions, plan.task.corruption_data)
    # the evaluation subsets are chosen now, so a setting that cannot work fails before training
    sizes = [cfg.eval_examples] + [spec.n for spec in plan.attacks if spec.n]
    if any(0 < k < len(data.test) for k in sizes):
        subsets.nested(data.test, sizes, cfg.eval_subset, cfg.subset_seed)
    if cfg.eval_subset == "first" and cfg.eval_examples and data.test_order != "shuffled":
        raise UserError(f"eval_subset=first takes the first {cfg.eval_examples} test examples, but task "
                        f"{plan.task.name}'s test split is not known to be in shuffled order here "
                        f"({data.test_order}); use the default eval_subset=stratified")
    return data, options


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # process peak resident set size (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- locking -----------------------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on one run id, held while the run trains and records.

    A lock file beside the records (`records/<task>/.locks/<run_id>.lock`), locked with flock, so
    every process that shares the record store (overlapping sweeps, shards of one grid on several
    machines with a shared file system) agrees. The lock goes away with the process that holds it,
    even after kill -9. `acquire(wait=False)` returns False when another process holds it."""

    def __init__(self, store: RecordStore, task: str, rid: str):
        self.path = store.root / "records" / task / ".locks" / f"{rid}.lock"
        self.fd: int | None = None

    def acquire(self, wait: bool = True) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc):
        self.release()
        return False


# --- execution ---------------------------------------------------------------------------------------

def execute(
    plan: RunPlan,
    store: RecordStore,
    *,
    work_dir: Path,
    device: torch.device,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    lock: RunLock | None = None,
) -> dict:
    """Train, evaluate and record one run; returns the record. Skips a run already recorded.

    Holds the run's lock while it works (waiting for another process that holds it); `lock` passes
    one the caller already holds."""
    check_writable_dir(store.root, "--out")
    check_writable_dir(work_dir, "--work-dir")
    if D.active():
        return _execute_ranks(plan, store, work_dir=work_dir, device=device, force=force, progress=progress,
                              log=log)
    path = store.path(plan.task.name, plan.run_id)
    if store.exists(plan.task.name, plan.run_id) and not force:
        log(f"already recorded: {path} (use --force to run again)")
        return store.read(path)
    own = lock is None
    if own:
        lock = RunLock(store, plan.task.name, plan.run_id)
        if not lock.acquire(wait=False):
            log(f"run {plan.run_id} is being run by another process; waiting for it")
            lock.acquire(wait=True)
    try:
        if store.exists(plan.task.name, plan.run_id) and not force:  # the other process finished it
            log(f"already recorded: {path}")
            return store.read(path)
        return _execute_locked(plan, store, work_dir=Path(work_dir), device=device, force=force,
                               progress=progress, log=log)
    finally:
        if own:
            lock.release()


def _execute_ranks(plan, store, *, work_dir, device, force, progress, log) -> dict:
    """One run trained by every process of a torchrun job: rank 0 holds the run's lock and decides
    whether it is recorded already; every rank trains and evaluates its share (suite.distributed);
    rank 0 alone logs and writes."""
    path = store.path(plan.task.name, plan.run_id)
    lock, recorded = None, None
    if D.is_main():
        if force or not store.exists(plan.task.name, plan.run_id):
            lock = RunLock(store, plan.task.name, plan.run_id)
            if not lock.acquire(wait=False):
                log(f"run {plan.run_id} is being run by another process; waiting for it")
                lock.acquire(wait=True)
        recorded = store.exists(plan.task.name, plan.run_id) and not force
    recorded = D.broadcast_object(recorded)
    try:
        if recorded:
            if D.is_main():
                log(f"already recorded: {path} (use --force to run again)")
            return D.broadcast_object(store.read(path) if D.is_main() else None)
        quiet = log if D.is_main() else (lambda *args, **kwargs: None)
        return _execute_locked(plan, store, work_dir=Path(work_dir), device=device, force=force,
                               progress=progress and D.is_main(), log=quiet)
    finally:
        if lock is not None:
            lock.release()


def _execute_locked(plan, store, *, work_dir, device, force, progress, log) -> dict:
    path = store.path(plan.task.name, plan.run_id)
    run_dir = work_dir / plan.run_id
    cfg = plan.cfg
    record = {
        "schema": SCHEMA_VERSION, "run_id": plan.run_id, "status": "failed", "error": None,
        "task": {"name": plan.task.name, "version": plan.task.version, "modality": plan.task.modality},
        "model": plan.identity["model"],
        # the params that name the run (a later parameter at its default is absent, as in the run id),
        # so the leaderboard groups a new seed with the records made before that parameter existed
        "method": {"name": plan.method.name, "params": plan.identity["method_params"], "label": plan.method.label()},
        "train": plan.identity["train"], "seed": plan.seed,
        "evaluation": {"attacks": plan.identity["evaluation"], "n_examples": cfg.eval_examples,
                       "subset": cfg.eval_subset, "analyses": plan.identity.get("analyses", []),
                       "corruptions": plan.identity.get("corruptions", [])},
        "metrics": None, "cost": {}, "provenance": {},
    }
    t_start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        data, options = prepare_data(plan)
        torch.manual_seed(plan.seed)  # model initialisation is part of the seeded run
        model = plan.task.build_model(options)
        notes = list(getattr(model, "suite_notes", []) or [])
        for note in notes:
            log(f"note: {note}")
        if force and D.is_main() and (run_dir / "checkpoint.pt").exists():
            (run_dir / "checkpoint.pt").unlink()  # --force means from scratch
            (run_dir / "eval_state.pt").unlink(missing_ok=True)
        log(f"run {plan.run_id}: task {plan.task.name}, {plan.method.label()}, seed {plan.seed}, "
            f"{cfg.epochs} epoch{'' if cfg.epochs == 1 else 's'} on {len(data.train)} examples, {device}")
        result = train(model, plan.method, plan.adapter, data, cfg, seed=plan.seed, device=device,
                       checkpoint=run_dir / "checkpoint.pt", run_id=plan.run_id, progress=progress, log=log)
        if D.is_main():  # under torchrun, rank 0 writes every file
            atomic_save(model.state_dict(), run_dir / "model.pt")
        metrics = evaluate(model, plan.adapter, data.test, plan.attacks, batch_size=cfg.eval_batch_size,
                           device=device, collate=data.collate, state_path=run_dir / "eval_state.pt",
                           seed=plan.seed, n_examples=cfg.eval_examples, subset_strategy=cfg.eval_subset,
                           subset_seed=cfg.subset_seed, progress=progress)
        if plan.corruptions:
            metrics["corruptions"] = run_corruptions(plan, model, options, device)
            metrics["corruption_mean"] = metrics["corruptions"]["mean"]
        if plan.analyses:
            metrics["analysis"] = run_analyses(plan, model, data, device, log)
        record["metrics"] = metrics
        record["history"] = result.history
        if notes:
            record["notes"] = notes
        if plan.task.analyze is not None:
            record["extra"] = plan.task.analyze(model, options)
        record["status"] = "complete"
        record["cost"] = {
            "wall_time_s": time.perf_counter() - t_start, "train_time_s": result.train_time_s,
            "eval_time_s": metrics["eval_time_s"], "steps": result.steps,
            "passes_per_step": plan.method.cost(), "peak_memory_mb": peak_memory_mb(device),
            "device": device_name(device), "amp": result.amp, "resumed_from_epoch": result.resumed_from_epoch,
            "train_examples": len(data.train), "world_size": result.world_size,
        }
        record["provenance"] = provenance(data.fingerprint)
    except (UserError, KeyboardInterrupt):
        raise  # bad input is not a run; an interrupt leaves the checkpoint to resume from
    except Exception as e:
        record["error"] = "".join(traceback.format_exception(e))[-4000:]
        record["cost"] = {"wall_time_s": time.perf_counter() - t_start, "device": device_name(device)}
        record["provenance"] = provenance()
        if D.is_main():
            store.write(record)  # never replaces a complete record (RecordStore.write refuses)
        raise RunFailed(f"run {plan.run_id} failed: {type(e).__name__}: {e} (recorded in {path})") from e
    if D.is_main():
        store.write(record)
        log(f"recorded {path}")
    return record


def run_corruptions(plan: RunPlan, model, options, device) -> dict:
    from suite.evaluate import evaluate_corruptions
    cfg = plan.cfg
    return evaluate_corruptions(model, plan.adapter, corruption_folder(plan, options), plan.corruptions,
                                dataset_name=plan.task.corruption_data, batch_size=cfg.eval_batch_size,
                                device=device, n_examples=cfg.eval_examples, subset_strategy=cfg.eval_subset,
                                subset_seed=cfg.subset_seed)


def run_analyses(plan: RunPlan, model, data, device, log) -> list[dict]:
    out = []
    for spec in plan.analyses:
        analysis = build_analysis(spec, plan.adapter)
        t0 = time.perf_counter()
        log(f"analysis {analysis.label()} ...")
        res = dict(analysis.run(model, data.train, collate=data.collate, device=device, seed=plan.seed))
        out.append({"name": spec[0], "label": analysis.label(), "params": dict(analysis.p),
                    **res, "time_s": time.perf_counter() - t0})
    return out


class RunFailed(Exception):
    pass


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# --- checkpoints of models the suite did not train -------------------------------------------------

def _shape_report(model: torch.nn.Module, state: dict) -> str:
    """Which keys and shapes of a state dict differ from the model's, in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]

    def few(items):
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs model): {few(shapes)}")
    return "; ".join(parts) or "the state dict does not load"


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
    except RuntimeError:
        raise UserError(f"checkpoint {path} does not fit this task's model ({type(model).__name__}): "
                        f"{_shape_report(model, state)}") from None


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def execute_eval(plan: RunPlan, checkpoint: Path, store: RecordStore | None, *, label: str | None,
                 device: torch.device, work_dir: Path, force: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Evaluate weights the suite did not train (a plain state dict or a suite checkpoint).

    With a store, the result is recorded as a run of the pseudo-method `checkpoint` whose identity is
    the file's sha256 (plus the task, its version and the evaluation), so it appears in the task's
    leaderboard beside trained rows and is skipped when recorded already."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint}: no such file")
    if store is not None:
        check_writable_dir(store.root, "--out")
    check_writable_dir(work_dir, "--work-dir")
    digest = file_sha256(checkpoint)
    cfg = plan.cfg
    eval_cfg = {k: getattr(cfg, k) for k in ("eval_examples", "eval_subset", "subset_seed", "eval_batch_size")}
    identity = {"task": plan.task.name, "task_version": plan.task.version, "model": plan.identity["model"],
                "method": "checkpoint", "checkpoint_sha256": digest, "eval": eval_cfg, "seed": plan.seed,
                "evaluation": plan.identity["evaluation"]}
    for key in ("analyses", "corruptions"):
        if plan.identity.get(key):
            identity[key] = plan.identity[key]
    rid = run_id(identity)
    path = store.path(plan.task.name, rid) if store is not None else None
    if store is not None and store.exists(plan.task.name, rid) and not force:
        log(f"already recorded: {path} (use --force to evaluate again)")
        return store.read(path)
    data, options = prepare_data(plan)
    model = plan.task.build_model(options)
    load_model_weights(model, checkpoint)
    t0 = time.perf_counter()
    metrics = evaluate(model, plan.adapter, data.test, plan.attacks, batch_size=cfg.eval_batch_size, device=device,
                       collate=data.collate, state_path=work_dir / f"eval-{rid}" / "eval_state.pt", seed=plan.seed,
                       n_examples=cfg.eval_examples, subset_strategy=cfg.eval_subset, subset_seed=cfg.subset_seed,
                       progress=progress)
    if plan.corruptions:
        metrics["corruptions"] = run_corruptions(plan, model, options, device)
        metrics["corruption_mean"] = metrics["corruptions"]["mean"]
    if plan.analyses:
        metrics["analysis"] = run_analyses(plan, model, data, device, log)
    record = {
        "schema": SCHEMA_VERSION, "run_id": rid, "status": "complete", "error": None,
        "task": {"name": plan.task.name, "version": plan.task.version, "modality": plan.task.modality},
        "model": plan.identity["model"],
        "method": {"name": "checkpoint", "params": {"file": checkpoint.name, "sha256": digest},
                   "label": label or f"checkpoint {checkpoint.name}"},
        "train": {}, "seed": plan.seed,
        "evaluation": {"attacks": plan.identity["evaluation"], "n_examples": cfg.eval_examples,
                       "subset": cfg.eval_subset, "analyses": plan.identity.get("analyses", []),
                       "corruptions": plan.identity.get("corruptions", [])},
        "metrics": metrics,
        "cost": {"wall_time_s": time.perf_counter() - t0, "eval_time_s": metrics["eval_time_s"],
                 "device": device_name(device)},
        "provenance": provenance(data.fingerprint),
    }
    if store is not None and D.is_main():
        with RunLock(store, plan.task.name, rid):
            store.write(record)
        log(f"recorded {path}")
    return record
