"""Run records: one JSON file per run, validated when written and when loaded.

The run id is a hash of everything that determines the result (task and its version, model option,
method and its resolved parameters, training settings, evaluation suite, seed), so `run` and
`sweep` skip runs already recorded. Provenance (versions, git commit, data fingerprint, hardware)
is recorded but not hashed: it describes a result, it does not select one.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from suite.errors import UserError

SCHEMA_VERSION = 2


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_id(identity: dict) -> str:
    return hashlib.sha256(canonical(identity).encode()).hexdigest()[:16]


def git_info() -> dict:
    """Commit and dirty flag of the suite's own checkout (None when not installed from one)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def provenance(data_fingerprint: str = "") -> dict:
    import importlib.metadata as md

    import numpy
    import torch

    import suite

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for pkg in ("transformers", "tokenizers", "textattack", "scikit-learn", "torchvision", "timm",
                "segmentation-models-pytorch", "pyautoattack"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    g = git_info()
    return {
        "suite_version": suite.__version__,
        "git_commit": g["commit"],
        "git_dirty": g["dirty"],
        "versions": versions,
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data_fingerprint": data_fingerprint,
    }


# --- validation ------------------------------------------------------------------------------------
_NUM = (int, float)

# key -> (type or tuple of types, required)
_TOP = {
    "schema": (int, True), "run_id": (str, True), "status": (str, True), "error": ((str, type(None)), True),
    "task": (dict, True), "method": (dict, True), "train": (dict, True), "seed": (int, True),
    "evaluation": (dict, True), "metrics": ((dict, type(None)), True), "cost": (dict, True),
    "provenance": (dict, True), "model": ((str, type(None)), False), "model_name": ((str, type(None)), False),
    "extra": (dict, False),
    "history": (list, False), "notes": (list, False),
}


class RecordError(UserError):
    pass


def validate(rec: Any, where: str = "record") -> dict:
    def fail(msg):
        raise RecordError(f"{where}: invalid run record: {msg}")

    if not isinstance(rec, dict):
        fail("not a JSON object")
    for key, (kind, required) in _TOP.items():
        if key not in rec:
            if required:
                fail(f"missing {key!r}")
            continue
        if isinstance(rec[key], bool) and kind is int:
            fail(f"{key!r} must be an integer")
        if not isinstance(rec[key], kind):
            fail(f"{key!r} has type {type(rec[key]).__name__}")
    if rec["schema"] != SCHEMA_VERSION:
        fail(f"written with record schema {rec['schema']}, and this suite reads schema {SCHEMA_VERSION}; "
             "run it again with this version (or move the file away)")
    if rec["status"] not in ("complete", "failed"):
        fail(f"status {rec['status']!r} is not 'complete' or 'failed'")
    for key in ("name", "version", "modality"):
        if not isinstance(rec["task"].get(key), str):
            fail(f"task.{key} must be a string")
    if not isinstance(rec["method"].get("name"), str) or not isinstance(rec["method"].get("params"), dict):
        fail("method needs a name (string) and params (object)")
    if rec["status"] == "complete":
        m = rec["metrics"]
        if m is None:
            fail("a complete run needs metrics")
        if not isinstance(m.get("clean"), _NUM) or isinstance(m.get("clean"), bool):
            fail("metrics.clean must be a number")
        if not isinstance(m.get("n"), int):
            fail("metrics.n must be an integer")
        if not isinstance(m.get("metric"), str):
            fail("metrics.metric must name the headline metric")
        for a in m.get("attacks", []):
            if not isinstance(a.get("label"), str) or not isinstance(a.get("value"), _NUM):
                fail("each metrics.attacks entry needs a label and a numeric value")
            if not isinstance(a.get("n"), int):
                fail("each metrics.attacks entry needs its number of examples n")
        if m.get("worst_case") is not None and not isinstance(m["worst_case"], _NUM):
            fail("metrics.worst_case must be a number or null")
        if m.get("outcomes") is not None:  # per-example outcomes (records made before them have none)
            from suite.outcomes import OutcomeError, Outcomes, check_against_metrics
            try:
                check_against_metrics(Outcomes.from_json(m["outcomes"], "metrics.outcomes"), m, fail)
            except OutcomeError as e:
                fail(str(e))
    elif not rec["error"]:
        fail("a failed run needs its error")
    _no_strings_for_numbers(rec.get("metrics") or {}, "metrics", fail)
    return rec


def _no_strings_for_numbers(obj, path, fail):
    """Numbers are numbers: a metric value that is a numeric-looking string is rejected."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _no_strings_for_numbers(v, f"{path}.{k}", fail)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _no_strings_for_numbers(v, f"{path}[{i}]", fail)
    elif isinstance(obj, str) and not path.endswith(("label", "name", "metric", "norm", "device")):
        try:
            float(obj)
        except ValueError:
            return
        fail(f"{path} is the string {obj!r}; numbers must be JSON numbers")


def _clean_floats(obj):
    """NaN/inf are not JSON: store them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


# --- store -----------------------------------------------------------------------------------------
class RecordStore:
    """Records live at <root>/records/<task>/<run_id>.json."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, task: str, rid: str) -> Path:
        return self.root / "records" / task / f"{rid}.json"

    def exists(self, task: str, rid: str) -> bool:
        p = self.path(task, rid)
        if not p.exists():
            return False
        try:
            return self.read(p)["status"] == "complete"
        except RecordError:
            return False

    def read(self, path: Path) -> dict:
        try:
            rec = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 text
            raise RecordError(f"{path}: cannot read run record: {type(e).__name__}: {e}") from None
        return validate(rec, str(path))

    def write(self, rec: dict) -> Path:
        """Atomic (unique temporary name, then rename). A failed run never replaces a complete record."""
        rec = validate(_clean_floats(rec))
        p = self.path(rec["task"]["name"], rec["run_id"])
        if rec["status"] == "failed" and self.exists(rec["task"]["name"], rec["run_id"]):
            return p
        from suite.files import write_text
        self.set_aside(p)  # an invalid file there is kept, never overwritten
        write_text(p, json.dumps(rec, indent=2, sort_keys=True) + "\n")  # a full disk: DiskFull, one line
        return p

    def set_aside(self, p: Path) -> tuple[Path, str] | None:
        """A file at a record's path that is not a valid record (corrupt, or of another schema) is
        renamed to `<run_id>.json.invalid[-N]` (which `load` does not read) rather than replaced;
        returns (the new name, why it is invalid), or None when there was nothing to set aside."""
        if not p.exists():
            return None
        try:
            self.read(p)
            return None
        except RecordError as e:
            why = str(e)
        aside = p.with_name(p.name + ".invalid")
        n = 1
        while aside.exists():
            n += 1
            aside = p.with_name(f"{p.name}.invalid-{n}")
        os.replace(p, aside)
        return aside, why

    def tidy(self, task: str, rid: str) -> list[str]:
        """When a run is touched: an invalid record is set aside; a temporary of this record whose
        writer died (suite.files) becomes the record when it is a complete valid record and none exists
        (the writer died between writing it and renaming it), and is removed otherwise. Returns what
        was done, one line each."""
        from suite.files import remove_stale_temporaries, stale_temporaries

        p = self.path(task, rid)
        notes = []
        moved = self.set_aside(p)
        if moved is not None:
            notes.append(f"{moved[1]}; kept aside as {moved[0].name}, and this run writes a new record")
        for tmp in stale_temporaries(p.parent, p.name):
            if p.exists():
                break
            try:
                rec = self.read(tmp)
            except RecordError:
                continue
            if rec["run_id"] == rid and rec["status"] == "complete":
                os.replace(tmp, p)
                notes.append(f"{p}: the complete record a writer that died left as {tmp.name} is this run's "
                             "record now")
        for tmp in remove_stale_temporaries(p.parent, p.name):
            notes.append(f"removed {tmp}, a temporary file left by a writer that died")
        return notes

    def load(self, task: str | None = None) -> list[dict]:
        base = self.root / "records"
        if not base.exists():
            return []
        dirs = [base / task] if task else sorted(d for d in base.iterdir() if d.is_dir())
        out = []
        for d in dirs:
            for f in sorted(d.glob("*.json")):
                out.append(self.read(f))
        return out
