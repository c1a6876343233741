"""No module of lbt.data imports another in a cycle, counting lazy (function-level) imports."""

from __future__ import annotations

import ast
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "lbt" / "data"


def _imports(path: Path) -> set[str]:
    """The ``lbt.data.*`` modules that ``path`` imports anywhere (top level or in functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "lbt.data":  # from lbt.data import tfds_sources
                out |= {f"lbt.data.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("lbt.data.")}


def test_no_import_cycles_in_lbt_data():
    graph = {f"lbt.data.{p.stem}": _imports(p) for p in DATA.glob("*.py") if p.stem != "__init__"}
    assert "lbt.data.types" in graph and graph["lbt.data.types"] == set()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(stack + [m, dep])
            if dep not in state:
                visit(dep, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    # The per-kind loaders import only types (and preprocess), never the registry.
    for loader in ("lbt.data.sources", "lbt.data.tfds_sources"):
        assert "lbt.data.registry" not in graph[loader]
