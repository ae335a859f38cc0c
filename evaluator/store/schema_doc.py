"""The stored documents' fields as Markdown tables, generated from the typed models.

docs/store.md embeds these tables between `<!-- schema:<collection> -->` markers and a test
checks they match, so the documentation of a field lives once, in its docstring in
evaluator/records.py. `python -m evaluator.store.schema_doc` rewrites the tables in place.
"""

from __future__ import annotations

import re
import sys
import types
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from evaluator.records import DOCUMENT_KINDS, StoredDocument

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "store.md"
_BLOCK = re.compile(r"(<!-- schema:(?P<name>\w+) -->\n)(?P<body>.*?)(<!-- /schema -->)", re.S)


def type_name(annotation: Any) -> str:
    """A stored field's type in the words docs/store.md uses."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        parts = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(parts) < len(get_args(annotation))
        inner = "/".join(type_name(a) for a in parts)
        return f"{inner}/null" if nullable else inner
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in get_args(annotation))
    if origin is list:
        return "list"
    if origin is dict or annotation is dict:
        return "object"
    if isinstance(annotation, type) and issubclass(annotation, datetime):
        return "date"
    return getattr(annotation, "__name__", str(annotation))


def markdown_table(kind: type[StoredDocument]) -> str:
    lines = ["| field | type | meaning |", "|---|---|---|"]
    for name, field in kind.model_fields.items():
        stored = field.alias or name
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| `{stored}` | {type_name(field.annotation)} | {meaning} |")
    return "\n".join(lines) + "\n"


def tables() -> dict[str, str]:
    """Collection name -> its generated table."""
    return {kind.collection: markdown_table(kind) for kind in DOCUMENT_KINDS}


def render(text: str) -> str:
    """`text` with every schema block replaced by the current table."""
    generated = tables()

    def replace(match: re.Match[str]) -> str:
        return match[1] + generated[match["name"]] + match[4]

    return _BLOCK.sub(replace, text)


def embedded(text: str) -> dict[str, str]:
    """Collection name -> the table found between its markers in `text`."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def main() -> None:
    text = DOC_PATH.read_text(encoding="utf-8")
    DOC_PATH.write_text(render(text), encoding="utf-8")
    print(f"updated {len(embedded(text))} schema table(s) in {DOC_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
