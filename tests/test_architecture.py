"""The package's import graph: no cycles, and the layers import downwards only.

Every ``import`` of a ``detector`` module counts, at module level and inside functions alike,
so an import moved into a function to dodge a cycle is still seen.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "detector"

#: Allowed direction: a module may import its own layer or any layer listed after it.
LAYERS = (
    "detector.benchmarks",
    "detector.engine",
    "detector.config_checks",
    "detector.inference",
    "detector.evaluation",
    "detector.data",
    "detector.config",
    "detector.modeling",
    "detector.utils",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, known: set[str], this: str | None = None) -> set[str]:
    """The ``detector`` modules that ``path`` (module ``this``) imports anywhere in its body
    (``from a import b`` counts as ``a.b`` when that is a module, else as ``a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = this or module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [n if n in known else base for n in names]
        else:
            continue
        found.update(n for n in names if n in known and n != this)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, known) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def layer_of(module: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports_inside_functions(tmp_path: Path):
    src = PACKAGE / "engine" / "train.py"
    graph = import_graph()
    assert "detector.engine.build" in graph[module_name(src)]
    code = "def f():\n    from ..engine import train\n    import detector.data.base\n"
    (tmp_path / "m.py").write_text(code)
    known = {"detector.engine.train", "detector.data.base", "detector.engine", "detector.x.m"}
    assert imported_modules(tmp_path / "m.py", known, "detector.x.m") == {
        "detector.engine.train",
        "detector.data.base",
    }


def test_no_import_cycles_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_layers_import_downwards_only(module: str):
    own = layer_of(module)
    if own is None:  # detector/__init__.py and other top-level glue
        return
    upward = sorted(
        m for m in import_graph()[module] if (layer := layer_of(m)) is not None and layer < own
    )
    assert not upward, f"{module} imports a higher layer: {upward} (order: {LAYERS})"
