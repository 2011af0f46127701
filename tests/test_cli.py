"""The command line end to end on the offline digits task, and its one-line errors for bad input."""
import json
import re

import pytest

from suite.cli import main
from suite.records import RecordStore

FAST = ["--set", "epochs=2", "--set", "eval_examples=120", "--no-progress", "--analyses"]
ATTACK = ["--attacks", "pgd:norm=linf,eps=16/255,steps=3"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["run", "--task", "digitz", "--method", "sam"], "unknown task 'digitz'. Did you mean 'digits'?"),
    (["run", "--task", "digits", "--method", "sma"], "unknown method 'sma'. Did you mean 'sam'"),
    (["run", "--task", "digits", "--method", "sam", "--rho", "-1"], "invalid rho: must be >= 0"),
    (["run", "--task", "digits", "--method", "at", "--eps", "-0.1"], "invalid eps: must be >= 0"),
    (["run", "--task", "digits", "--method", "at", "--steps", "0"], "invalid steps: must be >= 1"),
    (["run", "--task", "digits", "--method", "at", "--norm", "l3"], "invalid norm: must be one of linf, l2"),
    (["run", "--task", "digits", "--method", "at", "--rho", "0.1"], "method at has no parameter 'rho'"),
    (["run", "--task", "digits", "--method", "st", "--set", "epoch=3"], "Did you mean epochs"),
    (["run", "--task", "digits", "--method", "st", "--set", "epochs"], "expected KEY=VALUE"),
    (["run", "--task", "digits", "--method", "st", "--attacks", "pgdd"], "unknown attack 'pgdd'"),
    (["run", "--task", "digits", "--method", "st", "--attacks", "pgd:norm=l3"], "attack pgd: invalid norm"),
    (["run", "--task", "digits", "--method", "st", "--data-dir", "/no/such/dir"], "no such directory"),
    (["run", "--task", "digits", "--method", "st", "--seed", "-1"], "--seed must be >= 0"),
    (["eval", "--task", "digits", "--checkpoint", "/no/such/model.pt"], "no such file"),
    (["sweep", "--grid", "digits_mian"], "Did you mean digits_main"),
    (["leaderboard", "--task", "nope"], "unknown task 'nope'"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *argv, *(["--out", str(tmp_path)] if argv[0] != "ls" else []))
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def test_unreadable_checkpoint_is_one_line(capsys, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "eval", "--task", "digits", "--checkpoint", str(bad), "--out", str(tmp_path))
    assert code == 2 and "cannot read checkpoint" in err and err.count("\n") == 1


def test_run_records_skips_evaluates_and_publishes(capsys, tmp_path):
    out, work = tmp_path / "lb", tmp_path / "runs"
    sharp = ["--analyses", "sharpness:examples=64,steps=2,batch_size=32"]
    common = ["--out", str(out), "--work-dir", str(work), *FAST, *ATTACK, *sharp]
    code, stdout, _ = run_cli(capsys, "run", "--task", "digits", "--method", "sam", "--rho", "0.05", *common)
    assert code == 0 and "recorded" in stdout
    (rec,) = RecordStore(out).load("digits")
    (an,) = rec["metrics"]["analysis"]
    assert an["name"] == "sharpness" and an["value"] >= 0 and an["examples"] == 64 and an["time_s"] > 0
    assert rec["method"] == {"name": "sam", "params": {"rho": 0.05}, "label": "SAM rho=0.05"}
    assert rec["metrics"]["n"] == 120 and rec["train"]["epochs"] == 2
    assert rec["cost"]["passes_per_step"] == 2.0 and rec["provenance"]["versions"]["torch"]
    path = out / "records" / "digits" / f"{rec['run_id']}.json"
    before = path.read_bytes()

    # the same run again is skipped, and the record is untouched
    code, stdout, _ = run_cli(capsys, "run", "--task", "digits", "--method", "sam", "--rho", "0.05", *common)
    assert code == 0 and "already recorded" in stdout and path.read_bytes() == before

    # eval of the saved model reproduces the recorded clean accuracy exactly
    js = tmp_path / "eval.json"
    code, stdout, _ = run_cli(capsys, "eval", "--task", "digits", "--checkpoint", str(work / rec["run_id"] / "model.pt"),
                              "--set", "eval_examples=120", "--json", str(js), "--out", str(out), *ATTACK, "--analyses")
    assert code == 0
    assert json.loads(js.read_text())["metrics"]["clean"] == rec["metrics"]["clean"]
    # ... and never overwrites an existing output
    code, _, err = run_cli(capsys, "eval", "--task", "digits", "--checkpoint", str(work / rec["run_id"] / "model.pt"),
                           "--json", str(js), "--out", str(out))
    assert code == 2 and "file exists" in err

    code, stdout, _ = run_cli(capsys, "leaderboard", "--out", str(out))
    assert code == 0
    md = (out / "digits.md").read_text()
    assert "| SAM rho=0.05 |" in md and (out / "digits.png").read_bytes()[:4] == b"\x89PNG"
    assert f"| {an['label']} |" in md.splitlines()[4].replace(" | train cost", " |")  # the analysis column


def test_sweep_grid_file_runs_the_grid_then_skips_it(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('task = "digits"\nseeds = [0]\nset = { epochs = 1, eval_examples = 60 }\n'
                    '[[runs]]\nmethod = "st"\n[[runs]]\nmethod = "sam"\nrho = [0.05, 0.1]\n')
    common = ["--grid", str(grid), "--out", str(tmp_path / "lb"), "--work-dir", str(tmp_path / "runs"),
              "--no-progress", "--analyses"]
    code, stdout, _ = run_cli(capsys, "sweep", *common, "--dry-run")
    assert code == 0 and "3 runs, 0 already recorded, 3 to run" in stdout
    code, stdout, _ = run_cli(capsys, "sweep", *common)
    assert code == 0 and len(RecordStore(tmp_path / "lb").load("digits")) == 3
    code, stdout, _ = run_cli(capsys, "sweep", *common, "--dry-run")
    assert "3 runs, 3 already recorded, 0 to run" in stdout


def _dry_grid(tmp_path, text):
    """A grid file with `text`, and the arguments of a dry-run sweep over it."""
    grid = tmp_path / "grid.toml"
    grid.write_text(text)
    return grid, ["--grid", str(grid), "--out", str(tmp_path / "lb"), "--dry-run", "--analyses"]


def test_a_grid_file_names_its_evaluation_and_the_command_line_overrides_it(capsys, tmp_path):
    grid, common = _dry_grid(tmp_path, 'task = "digits"\nattacks = ["fgsm:eps=0.1", "pgd:norm=l2,eps=0.5,steps=2"]\n'
                                       '[[runs]]\nmethod = "st"\n')
    code, from_file, _ = run_cli(capsys, "sweep", *common)
    code2, same, _ = run_cli(capsys, "run", "--task", "digits", "--method", "st", "--out", str(tmp_path / "lb"),
                             "--dry-run", "--analyses", "--attacks", "fgsm:eps=0.1", "pgd:norm=l2,eps=0.5,steps=2")
    run_id = re.search(r"run (\w{16})", same).group(1)
    assert code == code2 == 0 and run_id in from_file  # the file's attacks enter the run id as --attacks does
    code, overridden, _ = run_cli(capsys, "sweep", *common, "--attacks", "fgsm:eps=0.2")
    assert code == 0 and run_id not in overridden
    grid.write_text('task = "digits"\nattacks = "fgsm:eps=0.1"\n[[runs]]\nmethod = "st"\n')
    code, _, err = run_cli(capsys, "sweep", *common)
    assert code == 2 and "attacks must be a non-empty list" in err and len(err.strip().splitlines()) == 1


def test_dry_run_names_the_split_it_will_evaluate(capsys, tmp_path):
    """Choosing a recipe reads the validation split, and the plan says so (not "the whole test split")."""
    common = ["run", "--task", "digits", "--method", "st", "--out", str(tmp_path / "lb"), "--dry-run"]
    code, on_test, _ = run_cli(capsys, *common)
    code2, on_val, _ = run_cli(capsys, *common, "--set", "eval_split=val", "--set", "eval_examples=100")
    assert code == code2 == 0
    assert "evaluation on the whole test split" in on_test and "evaluation on 100 validation examples" in on_val


def test_a_run_of_a_grid_file_may_name_its_own_seeds(capsys, tmp_path):
    # a board with three seeds for some rows and one for the others is one grid file
    grid, common = _dry_grid(tmp_path, 'task = "digits"\nseeds = [0]\n[[runs]]\nmethod = "st"\nseeds = [0, 1, 2]\n'
                                       '[[runs]]\nmethod = "sam"\nrho = [0.05, 0.1]\n')
    code, out, _ = run_cli(capsys, "sweep", *common)
    listed = [(line.split()[1], line.split("seed ")[1].split()[0]) for line in out.splitlines()[1:]]
    assert code == 0 and "5 runs" in out
    assert sorted(listed) == [("SAM", "0"), ("SAM", "0"), ("ST", "0"), ("ST", "1"), ("ST", "2")]
    code, out, _ = run_cli(capsys, "sweep", *common, "--seeds", "4")  # the command line replaces both
    assert code == 0 and "3 runs" in out and out.count("seed 4") == 3
    grid.write_text('task = "digits"\n[[runs]]\nmethod = "st"\nseeds = 1\n')
    code, _, err = run_cli(capsys, "sweep", *common)
    assert code == 2 and "runs[0]: seeds must be a non-empty list of integers" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_grid_file_is_one_line(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('task = "digits"\n[[runs]]\nrho = 0.1\n')
    code, _, err = run_cli(capsys, "sweep", "--grid", str(grid), "--out", str(tmp_path))
    assert code == 2 and "runs[0] needs method" in err


def test_ls_lists_everything(capsys):
    from suite.registry import ANALYSES, ATTACKS, METHODS, TASKS

    code, out, _ = run_cli(capsys, "ls")
    assert code == 0
    listed, section = {}, None
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            section = listed.setdefault(line[:-1], [])
        else:
            section.append(line.split()[0])
    assert listed == {"tasks": TASKS.names(), "methods": METHODS.names(), "attacks": ATTACKS.names(),
                      "analyses": ANALYSES.names()}


# --- bad input caught before any compute ----------------------------------------------------------
def test_output_folders_are_checked_before_training(capsys, tmp_path, monkeypatch):
    import suite.train

    def no_training(*a, **k):
        raise AssertionError("trained despite a bad output folder")

    monkeypatch.setattr(suite.train, "train", no_training)  # the runner imports it when it trains
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for flags, message in ((["--out", str(a_file)], "--out"), (["--out", str(a_file / "sub")], "is a file"),
                           (["--out", str(tmp_path), "--work-dir", str(a_file)], "--work-dir")):
        code, _, err = run_cli(capsys, "run", "--task", "digits", "--method", "st", *flags, *FAST)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("argv, message", [
    (["--rho", "0.1", "--set", "rho=0.3"], "rho is given twice with different values"),
    (["--epochs", "5"], "--epochs is not a flag; training settings are given with --set, e.g. --set epochs=5"),
    (["--epochs=5"], "--set epochs=5"),
    (["--model", "/no/such/dir"], "--model /no/such/dir: no such file or directory"),
    (["--attacks", "fgsm:n=0"], "n must be a positive number"),
    (["--set", "eval_subset=firsts"], "eval_subset"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_more_bad_input_is_one_line(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, "run", "--task", "digits", "--method", "sam", "--out", str(tmp_path), *argv)
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_same_value_twice_is_not_a_conflict():
    from suite.runner import plan_run
    plan = plan_run("digits", "sam", method_params={"rho": "0.1"}, overrides={"rho": "1/10"})
    assert plan.method.p["rho"] == 0.1


def test_a_damaged_checkpoint_says_how_to_recover(capsys, tmp_path):
    from suite.runner import plan_run
    common = ["--out", str(tmp_path / "lb"), "--work-dir", str(tmp_path / "runs"), *FAST, *ATTACK]
    plan = plan_run("digits", "st", overrides={"epochs": "2", "eval_examples": "120"},
                    attacks=["pgd:norm=linf,eps=16/255,steps=3"], analyses=[])
    ckpt = tmp_path / "runs" / plan.run_id / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x00garbage")
    code, _, err = run_cli(capsys, "run", "--task", "digits", "--method", "st", *common)
    assert code == 2 and "cannot read checkpoint" in err and "--force" in err and err.count("\n") == 1
    code, out, _ = run_cli(capsys, "run", "--task", "digits", "--method", "st", "--force", *common)
    assert code == 0 and "recorded" in out


def test_a_resumed_run_says_so(capsys, tmp_path):
    import torch

    from suite.records import RecordStore
    from suite.runner import execute, plan_run
    plan = plan_run("digits", "st", overrides={"epochs": "2", "eval_examples": "60"}, attacks=[], analyses=[])
    logs = []
    execute(plan, RecordStore(tmp_path / "a"), work_dir=tmp_path / "runs", device=torch.device("cpu"),
            progress=False, log=logs.append)
    ckpt = torch.load(tmp_path / "runs" / plan.run_id / "checkpoint.pt", weights_only=False)
    ckpt["epoch"] = 1  # as if interrupted after the first epoch
    ckpt["history"] = ckpt["history"][:1]
    torch.save(ckpt, tmp_path / "runs" / plan.run_id / "checkpoint.pt")
    logs.clear()
    execute(plan, RecordStore(tmp_path / "b"), work_dir=tmp_path / "runs", device=torch.device("cpu"),
            progress=False, log=logs.append)
    assert any(line.startswith("resuming from") and "epoch 1 of 2 done" in line for line in logs), logs


def test_a_checkpoint_of_another_task_names_the_keys_and_shapes(capsys, tmp_path):
    import torch

    from tasks.toy_features import build_model
    path = tmp_path / "toy.pt"
    torch.save(build_model(None).state_dict(), path)
    code, _, err = run_cli(capsys, "eval", "--task", "digits", "--checkpoint", str(path), "--out", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert "does not fit this task's model (SmallCNN)" in err and "missing key(s): normalize.mean" in err
    assert "unexpected key(s): linear.weight" in err


def test_duplicate_task_in_included_files_names_the_files(capsys, tmp_path):
    body = ("from suite.config import Task\nfrom suite.registry import TASKS\nimport tasks.digits as d\n"
            "TASKS.register('dup_task', Task(name='dup_task', modality='image', version='1', num_classes=10, "
            "description='x', build_data=d.build_data, build_model=d.build_model))\n")
    (tmp_path / "a.py").write_text(body)
    (tmp_path / "b.py").write_text(body)
    from suite.registry import TASKS
    try:
        code, _, err = run_cli(capsys, "ls", "tasks", "--include", str(tmp_path))
    finally:
        TASKS.unregister("dup_task")
    assert code == 2 and err.count("\n") == 1 and len(err) < 500
    assert "duplicate task 'dup_task'" in err and "b.py" in err and "a.py" in err


# --- the command line as a new user meets it ------------------------------------------------------
def _suite(*argv, env=None, **kw):
    import os
    import subprocess
    import sys
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "suite", *argv], capture_output=True, text=True, env=e, **kw)


def test_help_and_ls_do_not_import_torch():
    import subprocess
    import sys
    code = ("import sys; from suite.cli import main; main(['ls']); "
            "assert 'torch' not in sys.modules, 'ls imported torch'; print('no torch')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "no torch" in r.stdout, r.stderr


def test_dry_run_into_a_closed_pipe_is_quiet(tmp_path):
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "suite", "sweep", "--grid", "digits_main", "--seeds", "0", "1",
                          "--dry-run", "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()  # like `| head -1`
    err = p.stderr.read().decode()
    assert p.wait() == 0 and first.startswith(b"sweep digits_main") and "Traceback" not in err, err


def test_the_hint_after_a_sweep_keeps_out_and_include(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('task = "digits"\nset = { epochs = 1, eval_examples = 30, train_examples = 100 }\n'
                    '[[runs]]\nmethod = "st"\n')
    code, out, _ = run_cli(capsys, "sweep", "--grid", str(grid), "--out", str(tmp_path / "lb"), "--work-dir",
                           str(tmp_path / "runs"), "--no-progress", "--attacks", "fgsm:eps=0.1", "--analyses")
    assert code == 0 and f"python -m suite leaderboard --out {tmp_path / 'lb'}`" in out


def test_python_floor_is_declared_and_met():
    import ast
    import re
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    floor = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (root / "pyproject.toml").read_text())
    floor = (int(floor[1]), int(floor[2]))
    assert floor == (3, 11) and sys.version_info[:2] >= floor  # tomllib is in the standard library from 3.11
    for f in list((root / "suite").rglob("*.py")) + list((root / "tasks").glob("*.py")):
        ast.parse(f.read_text(), feature_version=floor)  # no syntax newer than the floor


# --- concurrent writers ---------------------------------------------------------------------------
GRID = ('task = "digits"\nseeds = [0, 1]\nset = { epochs = 1, eval_examples = 30, train_examples = 150 }\n'
        '[[runs]]\nmethod = "st"\n[[runs]]\nmethod = "sam"\nrho = [0.05, 0.1]\n')


def test_two_processes_running_one_sweep_train_every_run_exactly_once(tmp_path):
    import subprocess
    import sys
    (tmp_path / "grid.toml").write_text(GRID)
    args = [sys.executable, "-m", "suite", "sweep", "--grid", str(tmp_path / "grid.toml"), "--out",
            str(tmp_path / "lb"), "--work-dir", str(tmp_path / "runs"), "--no-progress", "--attacks", "fgsm:eps=0.1",
            "--analyses"]
    import os
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trained = [line.split(":")[0] for out, _ in outs for line in out.splitlines() if line.startswith("run ")]
    assert len(trained) == 6 and len(set(trained)) == 6, outs  # each of the 6 runs trained by one process
    recs = RecordStore(tmp_path / "lb").load("digits")
    assert len(recs) == 6 and all(r["status"] == "complete" for r in recs)
    leftovers = [p for p in (tmp_path).rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_a_run_held_by_another_process_is_deferred_then_waited_for(tmp_path):
    import subprocess
    import sys
    import time

    from suite.cli import load_grid
    from suite.runner import RunLock, plan_run
    (tmp_path / "grid.toml").write_text(GRID.replace("seeds = [0, 1]", "seeds = [0]"))
    task, runs, seeds, sets, _ = load_grid(str(tmp_path / "grid.toml"))
    first = plan_run(task, runs[0][0], method_params=runs[0][1], overrides=sets, seed=0, attacks=["fgsm:eps=0.1"],
                     analyses=[])
    store = RecordStore(tmp_path / "lb")
    held = RunLock(store, "digits", first.run_id)
    assert held.acquire(wait=False)
    import os
    p = subprocess.Popen([sys.executable, "-m", "suite", "sweep", "--grid", str(tmp_path / "grid.toml"), "--out",
                          str(tmp_path / "lb"), "--work-dir", str(tmp_path / "runs"), "--no-progress", "--attacks",
                          "fgsm:eps=0.1", "--analyses"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while len([r for r in store.load("digits")]) < 2 and time.time() < deadline:  # the other two runs finish
        time.sleep(0.5)
    assert not store.exists("digits", first.run_id) and p.poll() is None  # still waiting for the held run
    held.release()
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "another process is running it; later" in out
    assert store.exists("digits", first.run_id)


@pytest.mark.parametrize("script, argv, message", [
    ("autoattack_overhead.py", ["--include", "no/such/tasks.py"], "--include no/such/tasks.py: no such file"),
    ("autoattack_overhead.py", ["--task", "digitz"], "unknown task 'digitz'"),
    ("method_cost.py", ["--task", "digitz"], "unknown task 'digitz'"),
])
def test_benchmark_bad_input_is_one_line_exit_2(script, argv, message):
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / script
    r = subprocess.run([sys.executable, str(path), *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
