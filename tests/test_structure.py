"""The package's import graph has no cycles, counting lazy (function-level) imports too.

A cycle is found by parsing every module's ``import`` statements (the graph Python would follow)
and looking for strongly connected components; importing ``a.b.c`` also imports ``a`` and ``a.b``.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import lbt

ROOT = Path(lbt.__file__).resolve().parent


def _module_names() -> dict[str, Path]:
    mods = {"lbt": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="lbt."):
        spec = importlib.util.find_spec(info.name)
        mods[info.name] = Path(spec.origin)
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c imports a, a.b and a.b.c
                mod = ".".join(parts[:i])
                if mod in known and mod != name and not name.startswith(mod + "."):
                    out.add(mod)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _module_names()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lbt_has_no_import_cycles():
    graph = import_graph()
    assert "lbt.train.loop" in graph and "lbt.parallel.accumulate" in graph["lbt.train.loop"]
    assert cycles(graph) == []


def test_runtime_imports_no_jax():
    """lbt.runtime must run before a JAX backend starts, so importing it loads no JAX."""
    code = "import sys, lbt.runtime; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
