"""Checkpoint and state I/O: what the training loop, evaluation and the runner write and read back.

- training checkpoints (`atomic_save`, `load_checkpoint`, `read_resume_checkpoint`) with the random
  states they carry (`rng_state`, `set_rng_state`), so a resumed run reproduces the uninterrupted one;
- evaluation states (`load_eval_state`, `save_eval_state`, `check_eval_state`), so an interrupted
  evaluation resumes where it stopped;
- weights the suite did not train (`load_model_weights`: a suite checkpoint or a plain state dict).

Every write goes through suite.files (a temporary file, then a rename): an interrupt never leaves half
a file, and a full disk is one line naming the folder.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from suite.errors import UserError, one_line
from suite.files import atomic_write


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupt never leaves half a file, and a full
    disk is one line naming the folder (suite.files)."""
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, *, resuming: bool = False, mmap: bool = False) -> dict:
    """`mmap`: map the tensors rather than read them where the file allows it (a cheap look)."""
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # noqa: BLE001, S110  (read it plainly: that names what is wrong with it, if any)
            pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file is bad input, reported in one line
        first = one_line(e)
        hint = (f"; delete it (rm {path}) or pass --force to train this run from scratch" if resuming else "")
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {first}{hint}") from None


def read_resume_checkpoint(checkpoint: Path, run_id: str, data_fingerprint: str = "", *,
                           mmap: bool = False) -> dict:
    """A training checkpoint this run may resume from: readable, of this run, and made from the same
    data (a checkpoint that predates data fingerprints is taken as it is); else one line saying why.
    `mmap`: map the tensors instead of reading them (a cheap check before anything runs)."""
    state = load_checkpoint(checkpoint, resuming=True, mmap=mmap)
    if not isinstance(state, dict) or "epoch" not in state:
        raise UserError(f"checkpoint {checkpoint} is not a suite training checkpoint; delete it "
                        f"(rm {checkpoint}) or pass --force to train this run from scratch")
    if state.get("run_id") != run_id:
        raise UserError(f"checkpoint {checkpoint} belongs to run {state.get('run_id')!r}, not "
                        f"{run_id!r}; move it away or pass another --work-dir")
    theirs = state.get("data_fingerprint")
    if theirs and data_fingerprint and theirs != data_fingerprint:
        raise UserError(f"checkpoint {checkpoint} was trained on other data (data fingerprint {theirs}, "
                        f"this data {data_fingerprint}), so it is not resumed; pass --force to train "
                        "this run from scratch on this data, or another --work-dir")
    return state


def check_eval_state(path: Path, data_fingerprint: str) -> None:
    """An evaluation state made from other data is refused in one line (an unreadable one is simply
    recomputed by the evaluation)."""
    if not path.exists() or not data_fingerprint:
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001  (recomputed from scratch by evaluate, never trusted)
        return
    theirs = state.get("data_fingerprint") if isinstance(state, dict) else None
    if theirs and theirs != data_fingerprint:
        raise UserError(f"evaluation state {path} was computed on other data (data fingerprint {theirs}, this data "
                        f"{data_fingerprint}), so it is not resumed; pass --force to evaluate from scratch on this "
                        f"data, or another --work-dir")


def load_eval_state(path: Path | None, key: dict, k: int, data_fingerprint: str = "") -> dict:
    """The saved state of this evaluation, or a fresh one. A state of other data (its data fingerprint
    differs; the runner refuses such a state in one line before anything runs) is never resumed."""
    fresh = {"key": key, "clean": None, "predicted": None, "done": [torch.zeros(key["n"], dtype=torch.bool) for _ in range(k)],
             "stats": [None] * k, "attacked": [0] * k, "extra": [{} for _ in range(k)],
             "data_fingerprint": data_fingerprint}
    if path is None or not path.exists():
        return fresh
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return fresh  # a half-written or foreign state is recomputed, never trusted
    if not isinstance(state, dict) or state.get("key") != key:
        return fresh
    if data_fingerprint and state.setdefault("data_fingerprint", data_fingerprint) != data_fingerprint:
        return fresh
    return state


def save_eval_state(path: Path | None, state: dict) -> None:
    from suite import distributed

    if path is None or not distributed.is_main():  # every rank holds the merged state; rank 0 writes it
        return
    atomic_save(state, path)


# --- weights the suite did not train ---------------------------------------------------------------

def _shape_report(model: torch.nn.Module, state: dict) -> str:
    """Which keys and shapes of a state dict differ from the model's, in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]

    def few(items):
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs model): {few(shapes)}")
    return "; ".join(parts) or "the state dict does not load"


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Accept a suite checkpoint (a dict with 'model') or a plain state dict."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path}: no such file")
    state = load_checkpoint(Path(path))
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path}: not a state dict or suite checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise UserError(f"checkpoint {path} does not fit this task's model ({type(model).__name__}): "
                        f"{_shape_report(model, state)}") from None


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
