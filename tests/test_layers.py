"""The architecture, checked: the layers of suite/ (lowest first), no import cycle, no import from a
lower layer up to a higher one, and no function in suite/ longer than a screen and a half.

A module may import from its own layer or any layer below. A new module belongs to the layer of the
closest name listed here (suite.attacks.foo is an attack); a module that fits none fails the test, so
whoever adds a top-level module places it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = (
    ("suite", "suite.errors"),                                    # the package holds only __version__
    ("suite.params", "suite.registry", "suite.hub", "suite.files"),  # parameters, the (leaf) registry, files
    ("suite.config", "suite.stats", "suite.outcomes", "suite.subsets"),  # contracts of tasks, statistics
    ("suite.distributed", "suite.data", "suite.models"),          # readers and networks
    ("suite.modalities", "suite.checkpoint"),                     # adapters; checkpoint and state I/O
    ("suite.attacks", "suite.analysis", "suite.methods"),         # the plug-ins
    ("suite.train", "suite.evaluate", "tasks"),                   # the loop, evaluation, the tasks
    ("suite.plugins",),                                           # discovery: fills the registries
    ("suite.records", "suite.leaderboard"),                       # run records and boards
    ("suite.runner",),                                            # plan and execute a run
    ("suite.cli", "suite.__main__"),                              # the command line
)
MAX_FUNCTION_LINES = 90


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted([*(ROOT / "suite").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]):
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the suite modules it imports (anywhere in the file, lazy imports included)."""
    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(owner(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets.update(s for s in subs if s in mods)
                if any(s not in mods for s in subs):  # names imported from the module itself
                    targets.add(owner(node.module))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def layer_of(name: str) -> int | None:
    best = None
    for k, names in enumerate(LAYERS):
        for prefix in names:
            if name == prefix or (prefix != "suite" and name.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (k, len(prefix))
    return None if best is None else best[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_no_import_cycle():
    assert cycles(import_graph(modules())) == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    graph = import_graph(modules())
    upward = [f"{m} -> {t}" for m, ts in sorted(graph.items()) for t in sorted(ts)
              if layer_of(t) is not None and layer_of(m) is not None and layer_of(t) > layer_of(m)]
    assert upward == []


def test_the_registry_imports_no_plug_in():
    assert import_graph(modules())["suite.registry"] <= {"suite.errors"}


def test_the_checks_see_what_they_check():
    """Not vacuous: the graph finds the runner's imports, and a registry that imported the plug-ins (as
    it did before suite.plugins existed) would be both a cycle and an upward import."""
    graph = import_graph(modules())
    assert {"suite.registry", "suite.config", "suite.checkpoint"} <= graph["suite.runner"]
    graph["suite.registry"] = graph["suite.registry"] | {"suite.methods", "tasks"}
    assert cycles(graph)
    assert layer_of("suite.methods") > layer_of("suite.registry")


def test_no_function_in_suite_is_too_long():
    long = []
    for path in sorted((ROOT / "suite").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
