"""The shape of the code base: no import circles in `server/` or `evaluator/`, the two packages
share no code, and long modules say why they are long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "evaluator")
LONG_MODULE_LINES = 400


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` (a package is its __init__)."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its body (functions included: an import done
    lazily to dodge a circle is still a circle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # `from pkg import mod` names a module; `from mod import func` names the module.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = {name: path for package in PACKAGES for name, path in modules(package).items()}
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_lazy_import_counts() -> None:
    edges = graph()
    assert "evaluator.cli_common" in edges["evaluator.cli"]  # a module-level import is seen
    assert all(edges[m] <= set(edges) for m in edges)


def test_no_import_circle_in_server_or_evaluator() -> None:
    edges = graph()
    # A package's __init__ re-exporting its own submodules is not a circle of design: drop the
    # edges from a package to modules inside it before looking.
    own = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in edges.items()}
    assert cycles(own) == []


def test_server_and_evaluator_share_no_code() -> None:
    for name, targets in graph().items():
        other = "evaluator" if name.startswith("server") else "server"
        assert not [t for t in targets if t.split(".")[0] == other], name


@pytest.mark.parametrize("package", PACKAGES)
def test_long_modules_say_why_they_are_long(package: str) -> None:
    """Over about 400 lines, the module docstring says why (it names its length in lines)."""
    unexplained = []
    for name, path in modules(package).items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") <= LONG_MODULE_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "lines" not in doc:
            unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert unexplained == []
