"""Discovery: what fills the registries (suite.registry), one layer above every plug-in.

`load_builtins()` imports the built-in analyses, attacks, methods, modality adapters and the
top-level `tasks` package (each module registers itself on import); `include(path)` loads a user's
task files (`--include`). The registry itself imports none of them, so a plug-in importing the
registry never closes an import cycle.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from suite.errors import UserError
from suite.registry import TASKS

_loaded_builtins = False
_included: dict[Path, list[str]] = {}  # file -> the task names it registered


def load_builtins() -> None:
    """Import the built-in methods, attacks, modalities and the `tasks` package (idempotent)."""
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    import suite.analysis  # each subpackage imports its modules, which register
    import suite.attacks
    import suite.methods
    import suite.modalities
    import tasks

    for mod in pkgutil.iter_modules(tasks.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"tasks.{mod.name}")


def include(path: str | Path) -> list[str]:
    """Load user task files: a .py file, or every .py file (not starting with _) in a folder.

    Returns the names of the tasks they registered (also when a file was loaded before).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--include {path}: no such file or folder")
    files = sorted(f for f in p.glob("*.py") if not f.name.startswith("_")) if p.is_dir() else [p]
    if p.is_file() and p.suffix != ".py":
        raise UserError(f"--include {path}: expected a .py file or a folder of them")
    names: set[str] = set()
    for f in files:
        f = f.resolve()
        if f in _included:
            names.update(_included[f])
            continue
        before = set(TASKS.names())
        _included[f] = []
        modname = f"suite_user_{f.stem}_{abs(hash(str(f))) % 10**8}"
        spec = importlib.util.spec_from_file_location(modname, f)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except UserError:
            raise
        except Exception as e:  # a broken user file is bad input: one line, not a traceback
            raise UserError(f"--include {f}: failed to load: {type(e).__name__}: {e}") from e
        _included[f] = sorted(set(TASKS.names()) - before)
        names.update(_included[f])
    return sorted(names)
