"""Shared fixtures. Tests build their own tiny data; nothing here needs the network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import fit

from suite.plugins import load_builtins

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Tests never touch the network: no hub look-ups, and TextAttack's NLTK data from ../shared.
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")
if (SHARED / "data" / "nltk_data").is_dir():
    os.environ.setdefault("NLTK_DATA", str(SHARED / "data" / "nltk_data"))

load_builtins()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Every test model is tiny: intra-op threads would only contend for the cores (a BatchNorm call on
    a tiny tensor took ~70 ms with two threads on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits():
    """A small MLP trained for ~0.3 s on the digits task's train split, and its test split (a real
    model that attacks can break, shared by the attack and evaluation tests)."""
    import torch.nn.functional as F
    from torch import nn

    from suite.config import TaskOptions
    from tasks.digits import build_data

    data = build_data(TaskOptions())
    x, y = data.train.tensors
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return fit(model, lambda m: F.cross_entropy(m(x), y), steps=150, lr=1e-2), data.test


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    """The suite's caches (decoded images, the record of checked segmentation pairs) go to this test's
    folder, never the user's, and nothing is downloaded. A file that reads datasets uses it for every
    test: `pytestmark = pytest.mark.usefixtures("cache_in_tmp")`."""
    monkeypatch.setenv("SUITE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SUITE_DOWNLOAD", raising=False)
