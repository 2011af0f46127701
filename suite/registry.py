"""One generic registry; instances for tasks, methods, attacks, modality adapters and analyses.

The lowest layer of the suite beside suite.errors and suite.params: it imports no plug-in. What fills
the registries (the built-in plug-ins, the `tasks` package, `--include` files) is suite.plugins.

Registration is by decorator (or `register(name, obj)` for non-class objects such as task specs). The
registered name is the entry's `name`: a class that does not state one gets it, and an entry that
states another is refused, so a name is written once. A duplicate name raises; an unknown name raises
one `UnknownName` error that suggests the nearest names and lists every available one, so the CLI can
print it as a single line.
"""
from __future__ import annotations

import sys
from typing import Callable, Generic, Iterator, TypeVar

from suite.errors import UserError, nearest

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
            stated = o.__dict__.get("name") if isinstance(o, type) else getattr(o, "name", None)
            if stated is not None and stated != name:
                raise ValueError(f"{self.kind} registered as {name!r} states name = {stated!r} in {origin}; "
                                 "the registered name is the one name (drop the class attribute)")
            if isinstance(o, type) and stated is None:
                o.name = name
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
        close = longer + [c for c in nearest(name, names) if c not in longer]
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
