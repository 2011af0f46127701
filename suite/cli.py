"""Command line: run, eval, sweep, ls, leaderboard. Bad input exits with one line and code 2.

Start-up is kept light: the registries are filled by modules that import nothing heavy (torch is
imported by the commands that train or evaluate, not by `--help` or `ls`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tomllib  # Python >= 3.11, the floor pyproject.toml declares
from pathlib import Path

from suite.errors import UserError, did_you_mean

RUN_EXAMPLES = """examples:
  python -m suite run --task digits --method sam                  # the offline default (under a minute on a CPU with OMP_NUM_THREADS=1)
  python -m suite run --task digits --method sam --rho 0.2 --seed 1
  python -m suite run --task digits --method at --norm l2 --eps 64/255 --step-size 16/255
  python -m suite run --task digits --method st --set epochs=5 --set lr=0.02
  python -m suite run --task digits --method st --set train_examples=500 --set eval_examples=200
  NLTK_DATA=../shared/data/nltk_data python -m suite run --task text_rt --method sam --model $MINILM --data-dir ../shared/data
                                                                  # offline: the three things text_rt needs (README, quick start)
  python -m suite run --task digits --method sam --dry-run        # check everything, print the plan and run id; train nothing
  python -m suite run --task digits --method st --attacks pgd:norm=linf,eps=16/255,steps=20 pgd:norm=l2,eps=0.5,restarts=5
"""
EVAL_EXAMPLES = """examples:
  python -m suite eval --task digits --checkpoint runs/<run_id>/model.pt
  python -m suite eval --task digits --checkpoint runs/<run_id>/checkpoint.pt --attacks fgsm:eps=8/255 --json out.json
  python -m suite eval --include examples/autoattack_resnet18.py --task cifar10_aa_resnet18 \\
      --checkpoint model_test.pt --data-dir ../shared/data --record --label "ResNet-18 (AutoAttack example)"
"""
SWEEP_EXAMPLES = """examples:
  python -m suite sweep --grid digits_main --seeds 0 1 2     # a preset declared by a task
  python -m suite sweep --grid my_grid.toml --dry-run         # a grid file
  python -m suite sweep --grid digits_main --shard 2/8        # the 2nd of 8 disjoint shares (Slurm arrays, many machines)

grid file (TOML); lists expand to a grid:
  task = "digits"
  seeds = [0, 1, 2]
  set = { epochs = 20 }
  [[runs]]
  method = "sam"
  rho = [0.05, 0.1, 0.2]
  [[runs]]
  method = "at"
  eps = ["4/255", "8/255"]
  seeds = [0]                  # a run's own seeds replace the grid's (--seeds replaces both)
"""
LB_EXAMPLES = """examples:
  python -m suite leaderboard                  # every task with records under ./leaderboards/records
  python -m suite leaderboard --task digits --out results
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one line (UserError) instead of usage text and exit."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            from suite.config import TrainConfig
            words = message.split(":", 1)[1].split()
            for i, w in enumerate(words):
                key = w[2:].split("=", 1)[0].replace("-", "_") if w.startswith("--") else None
                if key in TrainConfig.field_names():
                    value = w.split("=", 1)[1] if "=" in w else (words[i + 1] if i + 1 < len(words) else "VALUE")
                    raise UserError(f"{w.split('=', 1)[0]} is not a flag; training settings are given with --set, "
                                    f"e.g. --set {key}={value}")
            flags = [w for w in words if w.startswith("--")]
            if flags and self.prog.split()[-1] in ("run", "sweep"):
                # flags exist for the parameters of built-in methods; one loaded with --include takes --set
                key = flags[0][2:].split("=", 1)[0].replace("-", "_")
                raise UserError(f"{self.prog}: {message} (see {self.prog} --help); a parameter of a method loaded "
                                f"with --include is given with --set, e.g. --set {key}=VALUE")
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _common(p: argparse.ArgumentParser, *, run: bool = True) -> None:
    p.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="load task files from a .py file or a folder (repeatable)")
    p.add_argument("--out", default=os.environ.get("SUITE_OUT", "leaderboards"), metavar="DIR",
                   help="where records (DIR/records) and leaderboards go (default: ./leaderboards or $SUITE_OUT)")
    if run:
        p.add_argument("--work-dir", default=os.environ.get("SUITE_WORK_DIR", "runs"), metavar="DIR",
                       help="checkpoints and evaluation state, one folder per run id (default: ./runs)")
        p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
        p.add_argument("--data-dir", default=None, metavar="DIR",
                       help="dataset root (default: $SUITE_DATA_DIR or ~/.cache/suite/data)")
        p.add_argument("--model", default=None,
                       help="model id or local path, for tasks that take one (text: a Hugging Face checkpoint)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override a recipe field or method parameter, e.g. epochs=10 (repeatable)")
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bars (on a terminal) nor progress lines (in a log)")


def _method_flags(p: argparse.ArgumentParser) -> list[str]:
    """One flag per parameter declared by any method (--rho, --eps, ...); validated by the method."""
    from suite.registry import METHODS
    names = sorted({k for _, cls in METHODS.items() for k in cls.params})
    g = p.add_argument_group("method parameters (each method declares its own; see `suite ls`)")
    for name in names:
        # a flag several methods declare may mean a different thing to each (--beta: ESAM's SWP
        # probability, TRADES' KL weight): each meaning is shown with the methods it belongs to
        meanings: dict[str, list[str]] = {}
        for n, cls in METHODS.items():
            if name in cls.params:
                meanings.setdefault(cls.params[name].help, []).append(n)
        if len(meanings) == 1:
            ((text, owners),) = meanings.items()
            meaning = f"{text} ({', '.join(owners)})"
        else:
            meaning = "; ".join(f"{', '.join(owners)}: {text}" for text, owners in meanings.items())
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"mp_{name}", default=None, metavar="V",
                       help=meaning.replace("%", "%%"))
    return names


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    parser = Parser(prog="suite", description="Benchmark sharpness-aware and adversarial training "
                    "across modalities: train, evaluate, record, publish leaderboards.",
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RUN_EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,eval,sweep,ls,leaderboard}",
                                parser_class=Parser)

    run = sub.add_parser("run", help="train a model with a method, evaluate it, record the run",
                         epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--task", required=True)
    run.add_argument("--method", required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--attacks", nargs="+", default=None, metavar="SPEC",
                     help="replace the task's evaluation suite, e.g. pgd:norm=l2,eps=0.5 fgsm:eps=8/255 "
                          "(n=N: that attack on a stratified N of the evaluated examples)")
    run.add_argument("--analyses", nargs="*", default=None, metavar="SPEC",
                     help="replace the task's analyses, e.g. sharpness:rho=0.05 hessian (none: --analyses)")
    run.add_argument("--corruptions", default=None, metavar="SPEC",
                     help="corruption robustness (CIFAR-10-C style files under --data-dir): paper, all, all:3, fog:3,...")
    run.add_argument("--force", action="store_true", help="run again even if this run is recorded")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything (names, values, paths, what the task needs here), print the plan "
                          "and whether it is recorded; train nothing")
    _common(run)
    names = _method_flags(run)

    ev = sub.add_parser("eval", help="evaluate saved weights (clean + attacks), optionally recording them",
                        epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--task", required=True)
    ev.add_argument("--checkpoint", required=True, help="a suite checkpoint or a plain state dict")
    ev.add_argument("--attacks", nargs="+", default=None, metavar="SPEC")
    ev.add_argument("--analyses", nargs="*", default=None, metavar="SPEC")
    ev.add_argument("--corruptions", default=None, metavar="SPEC")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the metrics here (must not exist)")
    ev.add_argument("--record", action="store_true",
                    help="record the result as a run (method 'checkpoint') in --out, shown in the leaderboard")
    ev.add_argument("--label", default=None, help="the leaderboard row's name for a recorded checkpoint")
    ev.add_argument("--force", action="store_true", help="with --record: evaluate again even if recorded")
    _common(ev)

    sw = sub.add_parser("sweep", help="run a grid of runs, skipping those already recorded", epilog=SWEEP_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("--grid", required=True, help="a preset name declared by a task, or a .toml grid file")
    sw.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="seeds for every run (default: each run's own, else the grid's, else 0)")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and whether they are recorded")
    sw.add_argument("--force", action="store_true")
    sw.add_argument("--keep-going", action="store_true", help="continue after a failed run")
    sw.add_argument("--attacks", nargs="+", default=None, metavar="SPEC",
                    help="replace the task's evaluation suite for every run of the grid")
    sw.add_argument("--analyses", nargs="*", default=None, metavar="SPEC",
                    help="replace the task's analyses for every run of the grid")
    sw.add_argument("--shard", default=None, metavar="I/N",
                    help="run only the I-th of N disjoint shares of the grid (1-based), e.g. $SLURM_ARRAY_TASK_ID/8")
    _common(sw)

    ls = sub.add_parser("ls", help="list tasks, methods, attacks and analyses")
    ls.add_argument("what", nargs="?", choices=["tasks", "methods", "attacks", "analyses"], default=None)
    ls.add_argument("--include", action="append", default=[], metavar="PATH")

    lb = sub.add_parser("leaderboard", help="render leaderboards/<task>.md and .png from the records",
                        epilog=LB_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    lb.add_argument("--task", default=None)
    _common(lb, run=False)
    parser.commands = sub.choices  # name -> subparser, so a stray argument names `suite run --help`
    return parser, names


def _kv(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} epochs=10")
        out[key.strip()] = value.strip()
    return out


def _looks_like_path(text: str) -> bool:
    """A hub id is 'name' or 'org/name'; a path starts with / . ~ or has more parts."""
    return text.startswith(("/", ".", "~")) or text.count("/") >= 2 or os.sep in text and Path(text).parent.exists()


def _options(args):
    from suite.config import TaskOptions
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir {args.data_dir}: no such directory")
    if args.model and _looks_like_path(args.model) and not Path(args.model).expanduser().exists():
        raise UserError(f"--model {args.model}: no such file or directory")
    return TaskOptions(data_dir=data_dir, model=args.model)


def _check_out_dirs(args) -> None:
    from suite.runner import check_writable_dir
    check_writable_dir(Path(args.out), "--out")
    if hasattr(args, "work_dir"):
        check_writable_dir(Path(args.work_dir), "--work-dir")


def _flag_hint(args) -> str:
    """The flags a follow-up command needs to see the same records (--out, --include)."""
    parts = [f"--include {p}" for p in getattr(args, "include", [])]
    if Path(args.out) != Path("leaderboards"):
        parts.append(f"--out {args.out}")
    return (" " + " ".join(parts)) if parts else ""


def cmd_run(args, names) -> int:
    from suite.records import RecordStore
    from suite.runner import plan_run

    # everything up to here imports no torch: bad input is refused in well under a second
    params = {n: getattr(args, f"mp_{n}") for n in names if getattr(args, f"mp_{n}") is not None}
    plan = plan_run(args.task, args.method, method_params=params, overrides=_kv(args.overrides, "--set"),
                    seed=args.seed, attacks=args.attacks, analyses=args.analyses, corruptions=args.corruptions,
                    options=_options(args), check_needs=True)
    if args.dry_run:
        _print_plan(plan, RecordStore(Path(args.out)))
        return 0
    _check_out_dirs(args)
    from suite import distributed
    from suite.runner import execute, resolve_device
    device = distributed.setup(resolve_device(args.device))  # under torchrun: join the job, one device each
    rec = execute(plan, RecordStore(Path(args.out)), work_dir=Path(args.work_dir), device=device, force=args.force,
                  progress=not args.no_progress)
    if distributed.is_main():
        _print_metrics(rec["metrics"], rec.get("cost", {}))
    return 0


def _print_plan(plan, store) -> None:
    """`run --dry-run`: what the run would do, and whether it is recorded already."""
    from suite.runner import analyses_cost

    cfg = plan.cfg
    state = f"recorded: {store.path(plan.task.name, plan.run_id)}" if store.exists(plan.task.name, plan.run_id) \
        else "not recorded yet"
    print(f"run {plan.run_id}: task {plan.task.name}, {plan.method.label()}, seed {plan.seed} ({state})")
    subset = f" on a stratified {cfg.train_examples} training examples" if cfg.train_examples else ""
    print(f"  training: {cfg.epochs} epoch{'' if cfg.epochs == 1 else 's'}{subset}, batch {cfg.batch_size}, "
          f"{cfg.optimizer} lr {cfg.lr:g}, {plan.method.cost():g} forward-backward passes per step")
    split = "validation" if cfg.eval_split == "val" else "test"
    n_eval = f"{cfg.eval_examples} {split} examples" if cfg.eval_examples else f"the whole {split} split"
    attacks = [attack.label() + (f" (n={spec.n})" if spec.n else "") for spec, attack in zip(plan.attacks, plan.built_attacks)]
    print(f"  evaluation on {n_eval}: clean" + "".join(f", {a}" for a in attacks))
    if plan.analyses:
        labels = ", ".join(analysis.label() for analysis in plan.built_analyses)
        print(f"  analyses: {labels}")
        if cfg.train_examples:
            print(f"  {analyses_cost(plan, cfg.train_examples)}")


def _print_metrics(m: dict, cost: dict | None = None) -> None:
    sub = m.get("subset", {})
    how = f", {sub['strategy']} subset of {sub['of']}" if sub and sub.get("strategy") != "all" else ""
    print(f"clean {m['metric']}: {m['clean']:.2f}% (n={m['n']}{how})")
    for a in m["attacks"]:
        n = f" (n={a['n']})" if a["n"] != m["n"] else ""
        threat = f" [{a['threat']}]" if a.get("threat", "norm-bounded") != "norm-bounded" else ""
        print(f"  {a['label']}: {a['value']:.2f}%{n}{threat}")
    if m.get("worst_case") is not None:
        n = f" (n={m['worst_case_n']})" if m.get("worst_case_n") != m["n"] else ""
        print(f"  worst case (norm-bounded attacks): {m['worst_case']:.2f}%{n}")
    if m.get("corruptions"):
        c = m["corruptions"]
        print(f"  {c['dataset']} mean over {len(c['items'])}: {c['mean']:.2f}% (n={c['subset']['n']})")
    for a in m.get("analysis", []):
        print(f"  {a['label']}: {a['value']:.4g}")
    if cost and cost.get("train_time_s") is not None:
        print(f"train {cost['train_time_s']:.1f} s, evaluation {cost.get('eval_time_s', 0):.1f} s on {cost.get('device')}")


def cmd_eval(args) -> int:
    from suite.records import RecordStore
    from suite.runner import execute_eval, plan_run, resolve_device

    out = Path(args.json) if args.json else None
    if out is not None and out.exists():
        raise UserError(f"--json {out}: file exists; choose another path (results are never overwritten)")
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint}: no such file")
    plan = plan_run(args.task, "st", overrides=_kv(args.overrides, "--set"), seed=args.seed, attacks=args.attacks,
                    analyses=args.analyses, corruptions=args.corruptions, options=_options(args), check_needs=True)
    _check_out_dirs(args)
    from suite import distributed
    device = distributed.setup(resolve_device(args.device))  # under torchrun: evaluation sharded over ranks
    store = RecordStore(Path(args.out)) if args.record else None
    rec = execute_eval(plan, Path(args.checkpoint), store, label=args.label, device=device,
                       work_dir=Path(args.work_dir), force=args.force, progress=not args.no_progress)
    metrics = rec["metrics"]
    if not distributed.is_main():
        return 0
    _print_metrics(metrics)
    if out is not None:
        from suite.files import write_text  # whole or not at all; a full disk is one line
        write_text(out, json.dumps({"task": args.task, "checkpoint": str(args.checkpoint), "metrics": metrics},
                                   indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")
    return 0


def _grid_seeds(spec: str, where: str, seeds) -> list[int] | None:
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise UserError(f"--grid {spec}: {where}seeds must be a non-empty list of integers, e.g. seeds = [0, 1, 2]")
    return seeds


def load_grid(spec: str) -> tuple[str, list[tuple[str, dict, list[int] | None]], list[int] | None, dict,
                                  list[str] | None]:
    """A preset declared by a task (Task.sweeps) or a TOML grid file -> (task, [(method, params, seeds)], seeds,
    set, attacks). A file may name the evaluation suite (`attacks = ["pgd:..."]`, as --attacks; --attacks wins),
    and a [[runs]] table its own `seeds` (a board with three seeds for some rows and one for the others);
    `--seeds` on the command line overrides both."""
    from suite.registry import TASKS
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"--grid {spec}: no such file")
        try:
            grid = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"--grid {spec}: not valid TOML: {e}") from None
        if not isinstance(grid.get("task"), str) or not isinstance(grid.get("runs"), list) or not grid["runs"]:
            raise UserError(f"--grid {spec}: needs task = \"NAME\" and at least one [[runs]] table with a method")
        runs = []
        for i, entry in enumerate(grid["runs"]):
            entry = dict(entry)
            method = entry.pop("method", None)
            if not isinstance(method, str):
                raise UserError(f"--grid {spec}: runs[{i}] needs method = \"NAME\"")
            run_seeds = _grid_seeds(spec, f"runs[{i}]: ", entry.pop("seeds", None))
            keys = sorted(entry)
            values = [v if isinstance(v, list) else [v] for v in (entry[k] for k in keys)]
            for combo in itertools.product(*values):
                runs.append((method, dict(zip(keys, combo)), run_seeds))
        seeds = _grid_seeds(spec, "", grid.get("seeds"))
        sets = {k: str(v) for k, v in grid.get("set", {}).items()}
        attacks = grid.get("attacks")
        if attacks is not None and (not isinstance(attacks, list) or not attacks
                                    or not all(isinstance(a, str) for a in attacks)):
            raise UserError(f"--grid {spec}: attacks must be a non-empty list of attack specs, "
                            "e.g. [\"pgd:norm=linf,eps=2/255\"]")
        return grid["task"], runs, seeds, sets, attacks
    owners = [(name, t) for name, t in TASKS.items() if spec in t.sweeps]
    if not owners:
        presets = sorted(p for _, t in TASKS.items() for p in t.sweeps)
        hint = did_you_mean(spec, presets)
        raise UserError(f"--grid {spec}: not a grid file nor a preset.{hint} Presets: {', '.join(presets) or '(none)'}")
    if len(owners) > 1:
        raise UserError(f"--grid {spec}: the preset is declared by tasks {', '.join(n for n, _ in owners)}; "
                        "a preset name must be unique (rename one)")
    name, task = owners[0]
    return name, [(m, dict(p), None) for m, p in task.sweeps[spec]], None, {}, None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    i, slash, n = text.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        i = n = 0
    if not slash or n < 1 or not 1 <= i <= n:
        raise UserError(f"--shard {text}: expected I/N with 1 <= I <= N, e.g. --shard 2/8")
    return i, n


def shard_of(run_id: str, n: int) -> int:
    """Which of n shards (1-based) a run belongs to: by its id, so the assignment does not depend on
    the order of the grid, on which runs are recorded, or on the machine."""
    return int(run_id[:8], 16) % n + 1


def cmd_sweep(args) -> int:
    from suite.records import RecordStore
    from suite.runner import RunFailed, RunLock, execute, plan_run, resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("sweep is not run under torchrun: launch `torchrun ... -m suite run ...` per run, or "
                        "spread the grid over processes with --shard I/N (one GPU each)")
    task, runs, grid_seeds, sets, grid_attacks = load_grid(args.grid)
    attacks = args.attacks if args.attacks is not None else grid_attacks
    sets.update(_kv(args.overrides, "--set"))
    shard = parse_shard(args.shard)
    store = RecordStore(Path(args.out))
    # plan everything first: a typo in the last run fails before the first one trains
    plans = [plan_run(task, m, method_params=p, overrides=sets, seed=s, attacks=attacks,
                      analyses=args.analyses, options=_options(args), check_needs=not args.dry_run)
             for (m, p, run_seeds) in runs for s in (args.seeds or run_seeds or grid_seeds or [0])]
    if shard is not None:
        plans = [p for p in plans if shard_of(p.run_id, shard[1]) == shard[0]]
    where = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    recorded = sum(store.exists(p.task.name, p.run_id) for p in plans)
    todo = [p for p in plans if args.force or not store.exists(p.task.name, p.run_id)]
    again = ""
    if args.force and recorded:
        again = (" (dry run: with --force the recorded ones would run again)" if args.dry_run
                 else " (--force: running the recorded ones again)")
    print(f"sweep {args.grid}{where}: {len(plans)} runs, {recorded} already recorded, {len(todo)} to run{again}")
    if args.dry_run:  # lists only: nothing is read, trained or written
        for p in plans:
            state = "recorded" if store.exists(p.task.name, p.run_id) else "to run"
            print(f"  {p.run_id}  {p.method.label():40s} seed {p.seed}  {state}")
        return 0
    _check_out_dirs(args)
    device = resolve_device(args.device)
    from suite.runner import check_sweep, data_key
    shared = check_sweep(plans, store, Path(args.work_dir), device, args.force)  # before any run or lock
    failures, done, deferred = 0, 0, []

    def one(p, lock, i, total):
        nonlocal failures, done
        if store.exists(p.task.name, p.run_id) and not args.force:  # finished by another process meanwhile
            lock.release()
            print(f"[{i}/{total}] {p.method.label()} seed {p.seed}: recorded by another process")
            return True
        print(f"[{i}/{total}] {p.method.label()} seed {p.seed}")
        try:
            execute(p, store, work_dir=Path(args.work_dir), device=device, force=args.force,
                    progress=not args.no_progress, lock=lock, data=shared.get(data_key(p)))
            done += 1
        except RunFailed as e:
            failures += 1
            print(str(e), file=sys.stderr)
            return args.keep_going
        finally:
            lock.release()
        return True

    # a run another process holds (an overlapping sweep or shard) is left to it and revisited at the end
    for i, p in enumerate(todo, 1):
        lock = RunLock(store, p.task.name, p.run_id)
        if not lock.acquire(wait=False):
            print(f"[{i}/{len(todo)}] {p.method.label()} seed {p.seed}: another process is running it; later")
            deferred.append(p)
            continue
        if not one(p, lock, i, len(todo)):
            return 1
    for p in deferred:
        lock = RunLock(store, p.task.name, p.run_id)
        lock.acquire(wait=True)
        if not one(p, lock, "deferred", len(todo)):
            return 1
    print(f"sweep done: {done} run, {failures} failed, {len(todo) - done - failures} recorded by other processes; "
          f"now `python -m suite leaderboard{_flag_hint(args)}`")
    return 1 if failures else 0


def cmd_ls(args) -> int:
    from suite.params import fmt_value
    from suite.registry import ANALYSES, ATTACKS, METHODS, TASKS

    if args.what in (None, "tasks"):
        print("tasks:")
        for name, t in TASKS.items():
            print(f"  {name:20s} [{t.modality}] {t.description}")
    if args.what in (None, "methods"):
        print("methods:")
        for name, cls in METHODS.items():
            ps = ", ".join(f"{k}={fmt_value(p.default)}" for k, p in cls.params.items())
            print(f"  {name:20s} {cls.description}" + (f"  [{ps}]" if ps else ""))
    if args.what in (None, "attacks"):
        print("attacks:")
        for name, cls in ATTACKS.items():
            print(f"  {name:20s} ({', '.join(cls.modalities) or 'any'}) {cls.description}")
    if args.what in (None, "analyses"):
        print("analyses:")
        for name, cls in ANALYSES.items():
            print(f"  {name:20s} {cls.description}")
    return 0


def cmd_leaderboard(args) -> int:
    from suite.leaderboard import publish
    from suite.records import RecordStore
    from suite.registry import TASKS

    out = Path(args.out)
    if args.task is not None:
        TASKS.get(args.task)
    # --task: that board; --include: the boards of the tasks those files register; else every board
    wanted = {args.task} if args.task is not None else set(getattr(args, "included", [])) or None
    records = RecordStore(out).load(args.task)
    known = [t for n, t in TASKS.items() if wanted is None or n in wanted]
    unknown = sorted({r["task"]["name"] for r in records} - set(TASKS.names()))
    if unknown and wanted is None:
        print(f"note: records of unregistered tasks skipped: {', '.join(unknown)} (load them with --include)")
    if wanted is not None:
        records = [r for r in records if r["task"]["name"] in wanted]
    written = publish(known, records, out)
    if not written:
        raise UserError(f"no complete run records under {out / 'records'}; run `python -m suite run ...` first")
    for p in written:
        print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from suite.plugins import include, load_builtins

    try:
        load_builtins()
        parser, names = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand's parser, which names its own --help
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        args.included = []
        for path in getattr(args, "include", []):
            args.included += include(path)
        if args.command == "run":
            return cmd_run(args, names)
        return {"eval": cmd_eval, "sweep": cmd_sweep, "ls": cmd_ls, "leaderboard": cmd_leaderboard}[args.command](args)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever a library's message held
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head -1`): stop quietly, as command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:
        from suite.runner import RunFailed
        if isinstance(e, RunFailed):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
