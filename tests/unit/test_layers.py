"""The architecture's floors, read from the imports themselves (ast), so they stay true.

    floor 0  lasro_common (what crosses process boundaries), lasro_diffusion (model-side code)
    floor 1  toyworld
    floor 2  reward_service, surrogate_service
    floor 3  trainer
    floor 4  lasro (the console script: hands its flags to the programs below)
    (bench/, tools/ and tests/ stand on everything)

A package imports only from lower floors (and itself); the trainer reaches the services through
their clients only (and reads their settings schemas: the demo validates and records the settings
it starts each service with); and no chain of imports, top-level or inside a function, comes back to
where it started.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"lasro_common": 0, "lasro_diffusion": 0, "toyworld": 1, "reward_service": 2,
          "surrogate_service": 2, "trainer": 3, "lasro": 4}
SERVICE_CLIENTS = {"reward_service.client", "surrogate_service.client",
                   "reward_service.settings", "surrogate_service.settings"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every project module `path` imports, anywhere in the file, relative imports resolved."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` may name a submodule: keep the longest that exists
            names = [f"{target}.{a.name}" if _exists(f"{target}.{a.name}") else target for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in FLOORS}
    return found


def _exists(module: str) -> bool:
    p = ROOT.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for top in FLOORS:
        for path in sorted((ROOT / top).rglob("*.py")):
            graph[_module_name(path)] = _imports(path)
    return graph


def test_every_import_goes_down_a_floor() -> None:
    wrong = []
    for mod, deps in _graph().items():
        own = mod.split(".")[0]
        for dep in deps:
            other = dep.split(".")[0]
            if other == own:
                continue
            if FLOORS[other] >= FLOORS[own]:
                wrong.append(f"{mod} imports {dep} (floor {FLOORS[other]} from floor {FLOORS[own]})")
            elif own == "trainer" and other in ("reward_service", "surrogate_service") and dep not in SERVICE_CLIENTS:
                wrong.append(f"{mod} imports {dep}: the trainer talks to a service through its client only")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _graph()
    # a package's __init__ is a module like the others; a submodule importing its own package's
    # __init__ is not a cycle unless the __init__ imports it back, which the search finds.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_what_it_checks() -> None:
    """Guard the guard: the graph holds the modules and finds a known downward import."""
    graph = _graph()
    assert "trainer.loop" in graph and "lasro_diffusion.text" in graph["surrogate_service.model"]
    assert "toyworld.captions" in graph["toyworld.checker"]
