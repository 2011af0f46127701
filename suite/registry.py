"""One generic registry; instances for tasks, methods, attacks and modality adapters.

Registration is by decorator (or `register(name, obj)` for non-class objects such as task specs).
A duplicate name raises; an unknown name raises one `UnknownName` error that suggests the nearest
names and lists every available one, so the CLI can print it as a single line.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from suite.errors import UserError

T = TypeVar("T")


class UnknownName(UserError):
    pass


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}  # name -> the file that registered it

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """`@REG.register("name")` on a class or function, or `REG.register("name", obj)`."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        origin = sys._getframe(1).f_code.co_filename

        def add(o: T) -> T:
            if name in self._items:
                raise UserError(f"duplicate {self.kind} {name!r} in {origin}: already registered by "
                                f"{self._origin.get(name, '?')}; rename one of them")
            self._items[name] = o
            self._origin[name] = origin
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = sorted(self._items)
        # every name that extends the one given (`cifar10` -> each cifar10_* task, the paper's among
        # them), then the nearest others by spelling
        longer = [n for n in names if n.startswith(name)] if len(name) >= 3 else []
        close = longer + [c for c in difflib.get_close_matches(name, names, n=3, cutoff=0.5) if c not in longer]
        hint = f" Did you mean {', '.join(repr(c) for c in close[:max(3, len(longer))])}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names) or '(none)'}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests that register temporary entries)."""
        self._items.pop(name, None)
        self._origin.pop(name, None)


TASKS: Registry = Registry("task")
METHODS: Registry = Registry("method")
ATTACKS: Registry = Registry("attack")
MODALITIES: Registry = Registry("modality")
ANALYSES: Registry = Registry("analysis")
# What a task needs from this machine (data files, model weights), checked before anything is imported
# or trained: `CHECKS.register("task_name", fn)` with fn(TaskOptions) -> a list of one-line problems
# (empty when the task can run). The runner reports them together with any other problem it finds
# (e.g. an attack's missing corpus), so a newcomer learns everything missing in one message.
CHECKS: Registry = Registry("task check")

_loaded_builtins = False
_included: dict[Path, list[str]] = {}  # file -> the task names it registered


def load_builtins() -> None:
    """Import the built-in methods, attacks, modalities and the `tasks` package (idempotent)."""
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    import suite.analysis  # noqa: F401  (each subpackage imports its modules, which register)
    import suite.attacks  # noqa: F401
    import suite.methods  # noqa: F401
    import suite.modalities  # noqa: F401
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
