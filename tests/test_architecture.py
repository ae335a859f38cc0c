"""The shape of the code base: no import circles in `server/` or `evaluator/`, the CLI layered
(a leaf module below the commands, nothing importing the root), the two packages share no code,
and long modules say why they are long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "evaluator")
LONG_MODULE_LINES = 400


def modules(package: str, root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` (a package is its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that must have run (or be running) for `name` to import.

    Every import counts, at module level or inside a function: an import done lazily to dodge
    a circle is still a circle. Importing `a.b.c` runs `a`, `a.b` and `a.b.c`; the packages
    that hold `name` itself have started before it runs, so reaching them by a dotted path
    waits on nothing and is no edge (that is what lets a package's __init__ import its own
    submodules). Taking a name that a package's __init__ defines (`from a.b import X`, X not a
    submodule) needs that __init__ to have finished, so it is an edge even from inside `a.b`:
    a submodule using its package's re-export while the __init__ imports the submodule is a
    real circle.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def nearest(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def runs(module: str | None) -> None:
        if module is None:
            return
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if not _inside(name, prefix):
                found.add(prefix)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                runs(nearest(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            source = nearest(base)
            runs(source)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    runs(f"{base}.{alias.name}")  # a submodule
                elif source is not None and source == base and source != name:
                    found.add(source)  # a name the module (or package __init__) defines
    return found


def graph(packages: tuple[str, ...] = PACKAGES, root: Path = REPO) -> dict[str, set[str]]:
    mods = {name: path for package in packages for name, path in modules(package, root).items()}
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


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


def write_package(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    return graph(("pkg",), root)


def test_a_lazy_import_and_a_reexport_used_from_inside_are_circles(tmp_path: Path) -> None:
    edges = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.cli import main\nVERSION = 1\n",
            "pkg/cli.py": "def main():\n    from pkg.app import run\n    return run()\n",
            "pkg/app.py": "from pkg.cli import main\n\ndef run():\n    return main\n",
            "pkg/tool.py": "from pkg import VERSION\n",
            "pkg/user.py": "import pkg.tool\n",
        },
    )
    assert edges["pkg.cli"] == {"pkg.app"}  # the import inside a function is seen
    assert cycles(edges) == [["pkg.app", "pkg.cli"]]
    edges = write_package(tmp_path, {"pkg/__init__.py": "from pkg.tool import VERSION as V\n"})
    assert edges["pkg.tool"] == {"pkg"}  # the __init__'s own name: it must have finished
    assert ["pkg", "pkg.tool"] in cycles(edges)


def test_a_package_importing_its_own_submodules_is_no_circle(tmp_path: Path) -> None:
    edges = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.cli import main\nfrom . import helpers\n",
            "pkg/cli.py": "from pkg import helpers\nfrom .helpers import fail\nimport pkg.helpers\n",
            "pkg/helpers.py": "def fail(): ...\n",
            "pkg/sub/__init__.py": "from .inner import x\n",
            "pkg/sub/inner.py": "from pkg.sub import other_inner\nx = 1\n",
            "pkg/sub/other_inner.py": "",
            "pkg/outside.py": "from pkg.sub.inner import x\n",
        },
    )
    assert edges["pkg"] == {"pkg.cli", "pkg.helpers"}
    assert edges["pkg.cli"] == {"pkg.helpers"}  # `pkg` itself has started before pkg.cli runs
    assert edges["pkg.sub.inner"] == {"pkg.sub.other_inner"}
    assert edges["pkg.outside"] == {"pkg.sub", "pkg.sub.inner"}  # the path runs pkg.sub first
    assert cycles(edges) == []


def test_no_import_circle_in_server_or_evaluator() -> None:
    edges = graph()
    assert {"evaluator.judge", "evaluator.report"} <= edges["evaluator.cli"]  # not vacuous
    assert "evaluator.judge.cli" in edges["evaluator.judge"]
    assert cycles(edges) == []


def test_the_cli_is_layered() -> None:
    """Commands in other packages register on the group; nothing imports the root command
    module, and the leaf every command shares reaches none of the commands."""
    edges = graph()
    assert [m for m, targets in edges.items() if "evaluator.cli" in targets] == []
    below_the_leaf = reachable(edges, "evaluator.cli_common") | reachable(edges, "evaluator.cli_options")
    commands = ("evaluator.cli", "evaluator.judge", "evaluator.report")
    assert [m for m in below_the_leaf if any(_inside(m, c) for c in commands)] == []


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
