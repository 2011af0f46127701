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


@pytest.fixture
def one_thread():
    """Tiny models run faster (and without contention) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
