"""Shared fixtures. Tests build their own tiny data; nothing here needs the network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from suite.registry import load_builtins

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
