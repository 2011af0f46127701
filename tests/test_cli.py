"""The command line end to end on the offline digits task, and its one-line errors for bad input."""
import json

import pytest

from suite.cli import main
from suite.records import RecordStore

FAST = ["--set", "epochs=2", "--set", "eval_examples=120", "--no-progress"]
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
    common = ["--out", str(out), "--work-dir", str(work), *FAST, *ATTACK]
    code, stdout, _ = run_cli(capsys, "run", "--task", "digits", "--method", "sam", "--rho", "0.05", *common)
    assert code == 0 and "recorded" in stdout
    (rec,) = RecordStore(out).load("digits")
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
                              "--set", "eval_examples=120", "--json", str(js), "--out", str(out), *ATTACK)
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


def test_sweep_grid_file_runs_the_grid_then_skips_it(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('task = "digits"\nseeds = [0]\nset = { epochs = 1, eval_examples = 60 }\n'
                    '[[runs]]\nmethod = "st"\n[[runs]]\nmethod = "sam"\nrho = [0.05, 0.1]\n')
    common = ["--grid", str(grid), "--out", str(tmp_path / "lb"), "--work-dir", str(tmp_path / "runs"),
              "--no-progress"]
    code, stdout, _ = run_cli(capsys, "sweep", *common, "--dry-run")
    assert code == 0 and "3 runs, 0 already recorded, 3 to run" in stdout
    code, stdout, _ = run_cli(capsys, "sweep", *common)
    assert code == 0 and len(RecordStore(tmp_path / "lb").load("digits")) == 3
    code, stdout, _ = run_cli(capsys, "sweep", *common, "--dry-run")
    assert "3 runs, 3 already recorded, 0 to run" in stdout


def test_bad_grid_file_is_one_line(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('task = "digits"\n[[runs]]\nrho = 0.1\n')
    code, _, err = run_cli(capsys, "sweep", "--grid", str(grid), "--out", str(tmp_path))
    assert code == 2 and "runs[0] needs method" in err


def test_ls_lists_everything(capsys):
    code, out, _ = run_cli(capsys, "ls")
    assert code == 0
    for name in ("digits", "st", "sam", "asam", "esam", "at", "fast_at", "pgd", "fgsm"):
        assert f"  {name} " in out
