"""The package's layering, read from its imports, so that it cannot quietly come back.

Every ``import`` of an ``unirl_stream`` module counts, the ones inside functions too (they
run); imports under ``if TYPE_CHECKING:`` do not (annotations only: a component may name
the ``Recipe`` type it is built from). Nodes are the top-level modules and subpackages.
docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import unirl_stream

ROOT = Path(unirl_stream.__file__).parent
# Lower layers first; a node may import its own layer's contracts and anything below it.
LAYERS = [
    {"api"},
    {"control", "events", "training", "explain", "tomlio", "data"},
    {"registry"},
    {"algorithms", "storage", "rewards"},
    {"models", "stages.config"},
    {"recipe"},
    {"validate", "docs", "planning"},
    {"stages"},
    {"monitor"},
    {"pipeline"},
    {"cli"},
]
LAYER = {node: i for i, layer in enumerate(LAYERS) for node in layer}
LIGHT = {"__future__", "collections", "typing", "msgspec", "unirl_stream"}


def _node(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "unirl_stream" or len(parts) == 1:
        return None
    if parts[1:3] == ["stages", "config"]:  # the [pipeline] section's Structs: below recipe
        return "stages.config"
    return parts[1]


def _runtime_imports(tree: ast.AST) -> list[str]:
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out.extend(f"{node.module}.{a.name}" for a in node.names)  # from pkg import module
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _graph() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = "unirl_stream." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        src = _node(module.removesuffix(".__init__"))
        for target in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            dst = _node(target)
            if src and dst and dst != src:
                edges.setdefault((src, dst), []).append(f"{module} -> {target}")
    return edges


def _cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
            strong(v)
    return found


@pytest.mark.timeout(60)
def test_no_import_cycle_between_subpackages() -> None:
    edges = _graph()
    cycles = _cycles(edges)
    detail = {c: [x for (a, b), xs in edges.items() if a in c and b in c for x in xs] for c in map(tuple, cycles)}
    assert not cycles, detail


@pytest.mark.timeout(60)
def test_every_import_points_down_the_layers() -> None:
    edges = _graph()
    nodes = {n for edge in edges for n in edge}
    assert nodes <= set(LAYER), f"nodes without a layer: {sorted(nodes - set(LAYER))}"
    upward = {edge: xs for edge, xs in edges.items() if LAYER[edge[1]] > LAYER[edge[0]]}
    assert not upward, upward


@pytest.mark.timeout(120)
def test_contracts_import_nothing_heavy() -> None:
    for name in ("api", "control", "events", "training"):
        tree = ast.parse((ROOT / f"{name}.py").read_text(encoding="utf-8"))
        roots = {m.split(".")[0] for m in _runtime_imports(tree)}
        assert roots <= LIGHT, (name, roots - LIGHT)
    code = ("import sys, unirl_stream.api, unirl_stream.control, unirl_stream.events, unirl_stream.training, unirl_stream.stages.base; "
            "print(sorted({'torch', 'ray', 'tensordict', 'diffusers', 'transformers', 'zmq'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, check=True)
    assert out.stdout.strip() == "[]", out.stdout
