"""Several processes: DDP training and sharded evaluation equal one process; torchrun end to end;
a grid sharded over concurrent processes runs every run exactly once.

The reference is always the same code in one process with the same global batch. The models have no
BatchNorm (each rank would normalise with its own share's statistics, which one process does not;
see suite.distributed), and float64 weights, so the only differences are the order in which the
all-reduce adds the ranks' gradients: tolerance 1e-9 relative (observed ~1e-15).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from suite.attacks.base import AttackSpec
from suite.config import DataBundle, TrainConfig
from suite.modalities.image import ImageClassification
from suite.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
# gloo finds its network interface through the host name, which some CI sandboxes cannot resolve:
# every process of these tests runs on this machine, so loopback is the interface
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
RTOL, ATOL = 1e-9, 1e-12


# --- the problem every process solves -----------------------------------------------------------
def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()


def noisy(batch, generator):
    """Augmentation drawn from the trainer's generator: the ranks must cut the same draws."""
    x, y = batch
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (x + 0.05 * noise).clamp(0, 1), y


def problem(n_train: int = 100, n_test: int = 40):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(16, 3, generator=g, dtype=torch.float64)
    x = torch.rand(n_train + n_test, 1, 4, 4, generator=g, dtype=torch.float64)
    y = ((x.flatten(1) - 0.5) @ w).argmax(1)
    return DataBundle(train=TensorDataset(x[:n_train], y[:n_train]), test=TensorDataset(x[n_train:], y[n_train:]),
                      train_transform=noisy)


# batch 25 on 2 ranks: shares of 12 and 13, so the gradient must be weighted by share, not averaged
CFG = TrainConfig(epochs=6, batch_size=25, lr=0.5, momentum=0.9, weight_decay=5e-4, schedule="cosine")
CASES = {
    "st": ("st", {}),
    "sam": ("sam", {"rho": 0.2}),
    "esam_swp": ("esam", {"rho": 0.2, "beta": 0.5, "gamma": 1.0}),  # the tensor choice is rank 0's
    "at": ("at", {"norm": "linf", "eps": 0.05, "steps": 2, "random_start": False}),  # attack on the module
}
ATTACKS = [AttackSpec.parse("fgsm:eps=0.05"), AttackSpec.parse("pgd:norm=l2,eps=0.3,steps=3")]


class Interrupt(Exception):
    pass


def run_case(name: str, checkpoint: Path | None = None, stop_after: int | None = None):
    from suite.train import train

    method_name, params = CASES[name]
    model = mlp()

    def stop(epoch, entry):
        if stop_after is not None and epoch == stop_after:
            raise Interrupt

    res = train(model, METHODS.get(method_name)(**params), ImageClassification(), problem(), CFG, seed=3,
                device=torch.device("cpu"), checkpoint=checkpoint, run_id="r", progress=False, on_epoch_end=stop)
    return model, res


def evaluate_model(model, state_path: Path | None = None) -> dict:
    from suite.evaluate import evaluate

    metrics = evaluate(model, ImageClassification(), problem().test, ATTACKS, batch_size=7, device=torch.device("cpu"),
                       seed=1, state_path=state_path)
    metrics.pop("eval_time_s")
    return metrics


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    from suite import distributed

    torch.set_num_threads(1)
    os.environ.update({k: v for k, v in LOOPBACK.items() if k not in os.environ})
    distributed.init_for_test(rank, world, init_file)
    try:
        out = Path(out)
        result = {}
        for name in CASES:
            model, res = run_case(name)
            result[name] = {"state": model.state_dict(), "history": res.history}
        # interrupted after epoch 1, then resumed: rank 0 reads the checkpoint and hands it out
        ckpt = out / "resume.pt"
        with pytest.raises(Interrupt):
            run_case("sam", checkpoint=ckpt, stop_after=1)
        model, res = run_case("sam", checkpoint=ckpt)
        result["sam_resumed"] = {"state": model.state_dict(), "resumed_from": res.resumed_from_epoch}
        result["eval"] = evaluate_model(result_model("sam", result), state_path=out / f"eval_state_{world}.pt")
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def result_model(name, result):
    model = mlp()
    model.load_state_dict(result[name]["state"])
    return model


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Every case trained by 2 gloo processes (spawned once for the whole module)."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def assert_states_close(a: dict, b: dict, **tol):
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], **(tol or {"rtol": RTOL, "atol": ATOL}), msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_ddp_training_equals_one_process_with_the_same_global_batch(ddp_results, name):
    _, ranks = ddp_results
    model, res = run_case(name)
    one = model.state_dict()
    assert_states_close(ranks[0][name]["state"], one)
    assert_states_close(ranks[1][name]["state"], one)
    # the epoch losses are the global batches' (summed over ranks)
    for h_ddp, h_one in zip(ranks[0][name]["history"], res.history):
        assert h_ddp["loss"] == pytest.approx(h_one["loss"], rel=1e-9)
    # and training did move the weights (the comparison can fail)
    assert max((one[k] - mlp().state_dict()[k]).abs().max().item() for k in one) > 1e-2


def test_ddp_resume_reproduces_the_uninterrupted_run(ddp_results):
    out, ranks = ddp_results
    assert ranks[0]["sam_resumed"]["resumed_from"] == 1
    for r in range(WORLD):
        assert_states_close(ranks[r]["sam_resumed"]["state"], ranks[r]["sam"]["state"], rtol=0, atol=0)
    ckpt = torch.load(out / "resume.pt", weights_only=False)
    assert ckpt["world_size"] == WORLD and len(ckpt["rng_ranks"]) == WORLD
    # rank 1 draws its own numbers (its stream is not rank 0's)
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])


def test_sharded_evaluation_equals_one_process_exactly(ddp_results, tmp_path):
    out, ranks = ddp_results
    model = result_model("sam", ranks[0])
    one = evaluate_model(model, state_path=tmp_path / "eval_state.pt")
    assert ranks[0]["eval"] == one and ranks[1]["eval"] == one
    assert 0 < one["attacks"][1]["value"] < one["clean"]  # the attacks did something
    # rank 0 wrote the merged state, in the one-process format
    saved = torch.load(out / f"eval_state_{WORLD}.pt", weights_only=False)
    mine = torch.load(tmp_path / "eval_state.pt", weights_only=False)
    assert torch.equal(saved["clean"], mine["clean"]) and saved["attacked"] == mine["attacked"]
    for a, b in zip(saved["stats"], mine["stats"]):
        assert torch.equal(a, b)


# --- torchrun, end to end --------------------------------------------------------------------------
TASK_FILE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset
from suite.config import DataBundle, Task, TrainConfig
from suite.registry import TASKS


def build_data(options):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(16, 3, generator=g, dtype=torch.float64)
    x = torch.rand(140, 1, 4, 4, generator=g, dtype=torch.float64)
    y = (x.flatten(1) @ w).argmax(1)
    return DataBundle(train=TensorDataset(x[:100], y[:100]), test=TensorDataset(x[100:], y[100:]))


def build_model(options):
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()


TASKS.register("ddp_mlp", Task(
    name="ddp_mlp", modality="image", version="1", num_classes=3, description="test task: an MLP without BatchNorm",
    build_data=build_data, build_model=build_model,
    recipe=TrainConfig(epochs=2, batch_size=20, lr=0.2, schedule="constant")))
'''


def _env():
    return {**LOOPBACK, **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def test_torchrun_two_processes_record_once_and_match_one_process(tmp_path):
    task = tmp_path / "ddp_task.py"
    task.write_text(TASK_FILE)
    args = ["-m", "suite", "run", "--include", str(task), "--task", "ddp_mlp", "--method", "sam", "--rho", "0.2",
            "--attacks", "fgsm:eps=0.05", "--analyses", "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one"), "--work-dir", str(tmp_path / "w1")],
                         capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "two"), "--work-dir", str(tmp_path / "w2")],
                         capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-2000:]
    records = list((tmp_path / "two" / "records" / "ddp_mlp").glob("*.json"))
    assert len(records) == 1  # written once, by rank 0
    assert (two.stdout + two.stderr).count("recorded ") == 1
    rec = json.loads(records[0].read_text())
    rec_one = json.loads(next((tmp_path / "one" / "records" / "ddp_mlp").glob("*.json")).read_text())
    assert rec["run_id"] == rec_one["run_id"]  # the number of processes does not change what a run is
    assert rec["cost"]["world_size"] == 2 and rec_one["cost"]["world_size"] == 1
    w_two = torch.load(tmp_path / "w2" / rec["run_id"] / "model.pt", weights_only=True)
    w_one = torch.load(tmp_path / "w1" / rec["run_id"] / "model.pt", weights_only=True)
    assert_states_close(w_two, w_one)
    assert rec["metrics"]["clean"] == rec_one["metrics"]["clean"]


# --- a grid sharded over machines -----------------------------------------------------------------
GRID = '''
task = "digits"
seeds = [0, 1]
set = { epochs = 1, train_examples = 150, eval_examples = 30 }
[[runs]]
method = "st"
[[runs]]
method = "sam"
rho = [0.05, 0.1]
[[runs]]
method = "fast_at"
'''


def test_three_shards_and_an_overlapping_sweep_run_every_run_exactly_once(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    common = [sys.executable, "-m", "suite", "sweep", "--grid", str(grid), "--attacks", "fgsm:eps=0.1", "--analyses",
              "--no-progress", "--device", "cpu", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "runs")]
    jobs = [common + ["--shard", f"{i}/3"] for i in (1, 2, 3)] + [common]  # the last one overlaps all shards
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                              env=_env()) for cmd in jobs]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-1500:] for log in logs)
    started = [m for log in logs for m in re.findall(r"^run ([0-9a-f]{16}):", log, flags=re.MULTILINE)]
    records = sorted(p.stem for p in (tmp_path / "out" / "records" / "digits").glob("*.json"))
    assert len(records) == 8  # 4 configurations x 2 seeds
    assert sorted(started) == records  # every run trained exactly once, across all four processes
    # each shard ran only its own share (the overlapping sweep may take any)
    from suite.cli import shard_of
    for i, log in enumerate(logs[:3], 1):
        for rid in re.findall(r"^run ([0-9a-f]{16}):", log, flags=re.MULTILINE):
            assert shard_of(rid, 3) == i
