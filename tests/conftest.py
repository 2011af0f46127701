"""Shared fixtures. Tests build their own tiny data; nothing here needs the network."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from suite.registry import load_builtins

load_builtins()

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def one_thread():
    """Tiny models run faster (and without contention) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
