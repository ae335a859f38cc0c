"""The messages a user sees for a broken `config/local_models.json`: the file, the model entry
(by name and index), the field, what is valid, and the closest field name for a typo; JSON
syntax errors with the line and a caret. The server keeps its own module (it shares no code
with the evaluator, whose config files are YAML and have their own wording).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from server.errors import ServerConfigError


def read_json_object(path: Path, *, default: Path, docs: str) -> tuple[str, dict[str, Any]]:
    """The file's text and its top-level object, or ServerConfigError saying what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ServerConfigError(
            f"{path}: config file not found. Pass --config PATH, or start from {default}."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerConfigError(f"{path}: cannot read the config file: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServerConfigError(json_error(path, text, exc)) from None
    if not isinstance(raw, dict):
        raise ServerConfigError(
            f'{path}: the top level must be a JSON object with a "models" list, '
            f"got {json_kind(raw)}. See {docs}."
        )
    return text, raw


def report(path: Path, problems: list[str], docs: str) -> str:
    lines = [f"Invalid config {path}:"]
    lines += [f"  - {p}" for p in problems]
    lines.append(f"See {docs} for every field.")
    return "\n".join(lines)


def where(index: int, name: Any) -> str:
    if isinstance(name, str) and name:
        return f'model "{name}" (models[{index}])'
    return f"models[{index}]"


def json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}  # fmt: skip
    return kinds.get(type(value), type(value).__name__)


def json_error(path: Path, text: str, exc: json.JSONDecodeError) -> str:
    lines = text.splitlines()
    shown = ""
    if 0 < exc.lineno <= len(lines):
        src = lines[exc.lineno - 1].expandtabs(1)
        shown = f"\n    {src}\n    {' ' * (exc.colno - 1)}^"
    hint = ""
    if "//" in text or "/*" in text:
        hint = (
            '\nJSON has no comments: use a "description" field, or "enabled": false on an '
            "example model entry."
        )
    return f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{shown}{hint}"


def describe_error(err: Any, raw: dict[str, Any], top_fields: list[str], entry_fields: list[str]) -> str:
    """One pydantic error as a line naming the entry and the field."""
    loc: tuple[Any, ...] = tuple(err["loc"])
    kind: str = err["type"]
    place = "top level"
    fields = top_fields
    rest = loc
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        models = raw.get("models")
        item = models[loc[1]] if isinstance(models, list) and loc[1] < len(models) else None
        place = where(loc[1], item.get("name") if isinstance(item, dict) else None)
        fields = entry_fields
        rest = loc[2:]
    if not rest:
        if kind in ("model_type", "dict_type", "model_attributes_type"):
            return f"{place}: must be a JSON object, got {json_kind(err.get('input'))}"
        return f"{place}: {clean_msg(err['msg'])}"
    name = str(rest[0])
    label = f'{place}, field "{name}"' + "".join(f"[{r}]" for r in rest[1:])
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
        if close:
            return f'{label}: unknown field; did you mean "{close[0]}"?'
        return f"{label}: unknown field; valid fields: {', '.join(fields)}"
    if kind == "missing":
        return f"{label}: required field is missing"
    got = json.dumps(err.get("input"))
    return f"{label}: {clean_msg(err['msg'])}, got {got}"


def clean_msg(msg: str) -> str:
    msg = msg.removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be").replace("input should be", "must be")
    msg = msg.replace("List should have", "must have").replace("String should", "must")
    return msg
