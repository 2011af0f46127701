"""Command line: run, eval, sweep, ls, leaderboard. Bad input exits with one line and code 2."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tomllib
from pathlib import Path

from suite.errors import UserError

RUN_EXAMPLES = """examples:
  python -m suite run --task digits --method sam                  # the offline default (about a minute on a CPU)
  python -m suite run --task digits --method sam --rho 0.2 --seed 1
  python -m suite run --task digits --method at --norm l2 --eps 64/255 --step-size 16/255
  python -m suite run --task digits --method st --set epochs=5 --set lr=0.02
  python -m suite run --task text_rt --method sam --model /path/to/local/model --data-dir ~/data
  python -m suite run --task digits --method st --attacks pgd:norm=linf,eps=16/255,steps=20
"""
EVAL_EXAMPLES = """examples:
  python -m suite eval --task digits --checkpoint runs/<run_id>/model.pt
  python -m suite eval --task digits --checkpoint runs/<run_id>/checkpoint.pt --attacks fgsm:eps=8/255 --json out.json
"""
SWEEP_EXAMPLES = """examples:
  python -m suite sweep --grid digits_main --seeds 0 1 2     # a preset declared by a task
  python -m suite sweep --grid my_grid.toml --dry-run         # a grid file

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
"""
LB_EXAMPLES = """examples:
  python -m suite leaderboard                  # every task with records under ./leaderboards/records
  python -m suite leaderboard --task digits --out leaderboards
"""


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
        p.add_argument("--model", default=None, help="model id or local directory, for tasks that take one (text)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override a recipe field or method parameter, e.g. epochs=10 (repeatable)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _method_flags(p: argparse.ArgumentParser) -> list[str]:
    """One flag per parameter declared by any method (--rho, --eps, ...); validated by the method."""
    from suite.registry import METHODS
    names = sorted({k for _, cls in METHODS.items() for k in cls.params})
    g = p.add_argument_group("method parameters (each method declares its own; see `suite ls`)")
    for name in names:
        owners = [n for n, cls in METHODS.items() if name in cls.params]
        helps = {cls.params[name].help for n, cls in METHODS.items() if name in cls.params}
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"mp_{name}", default=None, metavar="V",
                       help=f"{sorted(helps)[0]} ({', '.join(owners)})")
    return names


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    parser = argparse.ArgumentParser(prog="suite", description="Benchmark sharpness-aware and adversarial training "
                                     "across modalities: train, evaluate, record, publish leaderboards.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=RUN_EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,eval,sweep,ls,leaderboard}")

    run = sub.add_parser("run", help="train a model with a method, evaluate it, record the run",
                         epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--task", required=True)
    run.add_argument("--method", required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--attacks", nargs="+", default=None, metavar="SPEC",
                     help="replace the task's evaluation suite, e.g. pgd:norm=l2,eps=0.5 fgsm:eps=8/255")
    run.add_argument("--force", action="store_true", help="run again even if this run is recorded")
    _common(run)
    names = _method_flags(run)

    ev = sub.add_parser("eval", help="evaluate a saved checkpoint (clean + attacks)", epilog=EVAL_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--task", required=True)
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--attacks", nargs="+", default=None, metavar="SPEC")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the metrics here (must not exist)")
    _common(ev)

    sw = sub.add_parser("sweep", help="run a grid of runs, skipping those already recorded", epilog=SWEEP_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("--grid", required=True, help="a preset name declared by a task, or a .toml grid file")
    sw.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the grid's, else 0)")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and whether they are recorded")
    sw.add_argument("--force", action="store_true")
    sw.add_argument("--keep-going", action="store_true", help="continue after a failed run")
    _common(sw)

    ls = sub.add_parser("ls", help="list tasks, methods and attacks")
    ls.add_argument("what", nargs="?", choices=["tasks", "methods", "attacks"], default=None)
    ls.add_argument("--include", action="append", default=[], metavar="PATH")

    lb = sub.add_parser("leaderboard", help="render leaderboards/<task>.md and .png from the records",
                        epilog=LB_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    lb.add_argument("--task", default=None)
    _common(lb, run=False)
    return parser, names


def _kv(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} epochs=10")
        out[key.strip()] = value.strip()
    return out


def _options(args):
    from suite.config import TaskOptions
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir {args.data_dir}: no such directory")
    return TaskOptions(data_dir=data_dir, model=args.model)


def cmd_run(args, names) -> int:
    from suite.records import RecordStore
    from suite.runner import execute, plan_run, resolve_device

    params = {n: getattr(args, f"mp_{n}") for n in names if getattr(args, f"mp_{n}") is not None}
    plan = plan_run(args.task, args.method, method_params=params, overrides=_kv(args.overrides, "--set"),
                    seed=args.seed, attacks=args.attacks, options=_options(args))
    device = resolve_device(args.device)
    rec = execute(plan, RecordStore(Path(args.out)), work_dir=Path(args.work_dir), device=device, force=args.force,
                  progress=not args.no_progress)
    _print_metrics(rec["metrics"], rec.get("cost", {}))
    return 0


def _print_metrics(m: dict, cost: dict | None = None) -> None:
    print(f"clean {m['metric']}: {m['clean']:.2f}% (n={m['n']})")
    for a in m["attacks"]:
        print(f"  {a['label']}: {a['accuracy']:.2f}%")
    if m.get("worst_case") is not None:
        print(f"  worst case: {m['worst_case']:.2f}%")
    if cost and cost.get("train_time_s") is not None:
        print(f"train {cost['train_time_s']:.1f} s, evaluation {cost.get('eval_time_s', 0):.1f} s on {cost.get('device')}")


def cmd_eval(args) -> int:
    import torch

    from suite.evaluate import eval_subset, evaluate
    from suite.runner import build_data, load_model_weights, plan_run, resolve_device

    out = Path(args.json) if args.json else None
    if out is not None and out.exists():
        raise UserError(f"--json {out}: file exists; choose another path (results are never overwritten)")
    plan = plan_run(args.task, "st", overrides=_kv(args.overrides, "--set"), seed=args.seed, attacks=args.attacks,
                    options=_options(args))
    device = resolve_device(args.device)
    data, options = build_data(plan.task, plan.options)
    model = plan.task.build_model(options)
    load_model_weights(model, Path(args.checkpoint))
    torch.manual_seed(args.seed)
    metrics = evaluate(model, plan.adapter, eval_subset(data.test, plan.cfg.eval_examples), plan.attacks,
                       batch_size=plan.cfg.eval_batch_size, device=device, collate=data.collate, seed=args.seed)
    _print_metrics(metrics)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"task": args.task, "checkpoint": str(args.checkpoint), "metrics": metrics},
                                  indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")
    return 0


def load_grid(spec: str) -> tuple[str, list[tuple[str, dict]], list[int] | None, dict]:
    """A preset declared by a task (Task.sweeps) or a TOML grid file -> (task, [(method, params)], seeds, set)."""
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
            keys = sorted(entry)
            values = [v if isinstance(v, list) else [v] for v in (entry[k] for k in keys)]
            for combo in itertools.product(*values):
                runs.append((method, dict(zip(keys, combo))))
        seeds = grid.get("seeds")
        if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds)):
            raise UserError(f"--grid {spec}: seeds must be a list of integers")
        sets = {k: str(v) for k, v in grid.get("set", {}).items()}
        return grid["task"], runs, seeds, sets
    owners = [(name, t) for name, t in TASKS.items() if spec in t.sweeps]
    if not owners:
        presets = sorted(p for _, t in TASKS.items() for p in t.sweeps)
        import difflib
        close = difflib.get_close_matches(spec, presets, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"--grid {spec}: not a grid file nor a preset.{hint} Presets: {', '.join(presets) or '(none)'}")
    name, task = owners[0]
    return name, [(m, dict(p)) for m, p in task.sweeps[spec]], None, {}


def cmd_sweep(args) -> int:
    from suite.records import RecordStore
    from suite.runner import RunFailed, execute, plan_run, resolve_device

    task, runs, grid_seeds, sets = load_grid(args.grid)
    seeds = args.seeds if args.seeds is not None else (grid_seeds or [0])
    sets.update(_kv(args.overrides, "--set"))
    store = RecordStore(Path(args.out))
    # plan everything first: a typo in the last run fails before the first one trains
    plans = [plan_run(task, m, method_params=p, overrides=sets, seed=s, options=_options(args))
             for (m, p) in runs for s in seeds]
    recorded = sum(store.exists(p.task.name, p.run_id) for p in plans)
    todo = [p for p in plans if args.force or not store.exists(p.task.name, p.run_id)]
    again = " (--force: running the recorded ones again)" if args.force and recorded else ""
    print(f"sweep {args.grid}: {len(plans)} runs, {recorded} already recorded, {len(todo)} to run{again}")
    if args.dry_run:
        for p in plans:
            state = "recorded" if store.exists(p.task.name, p.run_id) else "to run"
            print(f"  {p.run_id}  {p.method.label():40s} seed {p.seed}  {state}")
        return 0
    device = resolve_device(args.device)
    failures = 0
    for i, p in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {p.method.label()} seed {p.seed}")
        try:
            execute(p, store, work_dir=Path(args.work_dir), device=device, force=args.force,
                    progress=not args.no_progress)
        except RunFailed as e:
            failures += 1
            print(str(e), file=sys.stderr)
            if not args.keep_going:
                return 1
    print(f"sweep done: {len(todo) - failures} run, {failures} failed; now `python -m suite leaderboard`")
    return 1 if failures else 0


def cmd_ls(args) -> int:
    from suite.registry import ATTACKS, METHODS, TASKS
    from suite.params import fmt_value

    if args.what in (None, "tasks"):
        print("tasks:")
        for name, t in TASKS.items():
            print(f"  {name:16s} [{t.modality}] {t.description}")
    if args.what in (None, "methods"):
        print("methods:")
        for name, cls in METHODS.items():
            ps = ", ".join(f"{k}={fmt_value(p.default)}" for k, p in cls.params.items())
            print(f"  {name:16s} {cls.description}" + (f"  [{ps}]" if ps else ""))
    if args.what in (None, "attacks"):
        print("attacks:")
        for name, cls in ATTACKS.items():
            print(f"  {name:16s} ({', '.join(cls.modalities)}) {cls.description}")
    return 0


def cmd_leaderboard(args) -> int:
    from suite.leaderboard import publish
    from suite.records import RecordStore
    from suite.registry import TASKS

    out = Path(args.out)
    records = RecordStore(out).load(args.task)
    if args.task is not None:
        TASKS.get(args.task)
    known = [t for n, t in TASKS.items() if args.task in (None, n)]
    unknown = sorted({r["task"]["name"] for r in records} - set(TASKS.names()))
    if unknown:
        print(f"note: records of unregistered tasks skipped: {', '.join(unknown)} (load them with --include)")
    written = publish(known, records, out)
    if not written:
        raise UserError(f"no complete run records under {out / 'records'}; run `python -m suite run ...` first")
    for p in written:
        print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from suite.registry import include, load_builtins
    from suite.runner import RunFailed

    try:
        load_builtins()
        parser, names = build_parser()
        args = parser.parse_args(argv)
        for path in getattr(args, "include", []):
            include(path)
        if args.command == "run":
            return cmd_run(args, names)
        return {"eval": cmd_eval, "sweep": cmd_sweep, "ls": cmd_ls, "leaderboard": cmd_leaderboard}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
