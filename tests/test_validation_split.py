"""Choosing a recipe without the test split: `--set eval_split=val` evaluates on the task's validation
split (and trains without it where it is held out of the training split); `--set val_every=N` adds the
clean metric on the validation split to the training history, without changing the training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from suite.cli import main
from suite.config import DataBundle, Task, TaskOptions, TrainConfig
from suite.registry import TASKS

TASK = "_val_split_toy"
NO_VAL = "_val_split_none"


class Untouchable(Dataset):
    """A test split that must not be read: any access fails the run."""

    def __len__(self):
        raise AssertionError("the test split was read")

    def __getitem__(self, i):
        raise AssertionError("the test split was read")


def _arrays(seed: int, n: int):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 4).astype(np.float32)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _data(options: TaskOptions) -> DataBundle:
    x, y = _arrays(0, 90)
    return DataBundle(train=TensorDataset(x, y), test=Untouchable(), val=TensorDataset(x[60:], y[60:]),
                      train_without_val=TensorDataset(x[:60], y[:60]), fingerprint="toy")


def _model(options):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


@pytest.fixture
def tasks():
    recipe = TrainConfig(epochs=4, batch_size=10, lr=0.1, weight_decay=0.0)
    TASKS.register(TASK, Task(name=TASK, modality="features", version="1", num_classes=2, description="t",
                              build_data=_data, build_model=_model, recipe=recipe, evaluation=("fgsm:eps=0.1",)))
    TASKS.register(NO_VAL, Task(name=NO_VAL, modality="features", version="1", num_classes=2, description="t",
                                build_data=lambda o: DataBundle(train=TensorDataset(*_arrays(1, 30)),
                                                                test=TensorDataset(*_arrays(2, 20))),
                                build_model=_model, recipe=recipe, evaluation=("fgsm:eps=0.1",)))
    yield
    TASKS.unregister(TASK)
    TASKS.unregister(NO_VAL)


def _run(tmp_path, name, *sets):
    out = tmp_path / name
    argv = ["run", "--task", TASK, "--method", "st", "--out", str(out), "--work-dir", str(tmp_path / f"{name}-runs"),
            "--no-progress", "--analyses"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    (path,) = (out / "records" / TASK).glob("*.json")
    return json.loads(path.read_text())


def test_eval_split_val_evaluates_on_val_and_trains_without_it(tasks, tmp_path):
    rec = _run(tmp_path, "val", "eval_split=val")
    assert rec["metrics"]["n"] == 30  # the 30 validation examples; the test split was never read
    assert rec["cost"]["train_examples"] == 60  # the held-out part is not trained on
    assert rec["train"]["eval_split"] == "val"


def test_val_every_adds_the_validation_metric_without_changing_training(tasks, tmp_path):
    plain = _run(tmp_path, "plain", "eval_split=val")
    curve = _run(tmp_path, "curve", "eval_split=val", "val_every=2")
    assert [("val_accuracy" in e) for e in curve["history"]] == [False, True, False, True]
    assert all(0 <= e["val_accuracy"] <= 100 for e in curve["history"] if "val_accuracy" in e)
    # the same training: the validation passes draw no random numbers and leave the model as it was
    assert [e["loss"] for e in curve["history"]] == [e["loss"] for e in plain["history"]]
    assert curve["metrics"]["clean"] == plain["metrics"]["clean"]
    assert curve["history"][-1]["val_accuracy"] == pytest.approx(curve["metrics"]["clean"])
    assert curve["run_id"] != plain["run_id"]


def test_a_task_without_validation_split_is_refused_in_one_line(tasks, tmp_path, capsys):
    argv = ["run", "--task", NO_VAL, "--method", "st", "--out", str(tmp_path / "o"), "--work-dir",
            str(tmp_path / "w"), "--no-progress", "--analyses", "--set", "eval_split=val"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no validation split" in err
    assert main(argv[:-1] + ["eval_split=valid"]) == 2
    assert "eval_split" in capsys.readouterr().err
