"""The batched engine stands beside the llama-cpp-python engine, not on it: what both need lives
in the shared modules (docs/architecture.md, "The server's pieces")."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "server" / "engine"
LLAMA_CPP_PYTHON_ENGINE = {
    "server.instrumented",
    "server.preflight",
    "server.response_rewrite",
    "server.llama_middleware",
    "server.llama_settings",
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_batched_engine_imports_nothing_of_the_llama_cpp_python_engine() -> None:
    files = sorted(ENGINE.glob("*.py"))
    assert len(files) > 5  # the folder was found
    found = {path.name: imported(path) & LLAMA_CPP_PYTHON_ENGINE for path in files}
    assert not any(found.values()), found


def test_the_check_sees_imports_of_both_forms(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import server.preflight\nfrom server import instrumented\n", encoding="utf-8")
    assert imported(module) & LLAMA_CPP_PYTHON_ENGINE == {"server.preflight", "server.instrumented"}
