"""The messages users see when a config file is wrong: one translator for every evaluator loader.

`config/models.yaml`, `config/prompts.json` (evaluator/config.py) and `config/rubric.json`
(evaluator/judge/rubric.py) are read, parsed and validated here, so that a problem is always
reported the same way: one line per problem naming the file, the entry, the field, what is valid
and how to fix it, never pydantic's raw text, never a secret. Each file keeps the words its
documentation uses; a `Dialect` holds those differences as data:

- `CONFIG` (models.yaml, prompts.json; docs/configuration.md) names entries ("model 'gpt4'
  (entry 2)") and says what a field expects from its declaration ("expected a number from 0
  to 2").
- `RUBRIC` (rubric.json; docs/judging.md) names fields by dotted paths with the criterion's name
  (`response.criteria[1] ('continuity').scale`) and speaks JSON ("an object", "null").

Only the wording is per dialect: finding the entry and the model that owns a field (read from
the models' own annotations, so no list of nested fields is kept here), suggesting the closest
valid name, showing a value without leaking it, and capping the number of lines are shared.
The module is longer than most (about 500 lines) because the messages for unreadable files,
parse errors and validation errors are worded together, in one place for every loader.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "CONFIG",
    "RUBRIC",
    "ConfigError",
    "Dialect",
    "Entry",
    "Words",
    "did_you_mean",
    "explain",
    "parse_json",
    "parse_yaml",
    "read_text",
    "validate",
]

MAX_PROBLEMS = 15  # lines beyond this are summed up in one: the first ones are the ones to fix


class ConfigError(Exception):
    """A configuration problem. `str(error)` is the complete message for the user."""


# What values are called


@dataclass(frozen=True)
class Words:
    """How a message names a kind of value ("got a mapping", "got null")."""

    null: str
    mapping: str
    empty_list: str
    # True: booleans are shown bare like numbers ("got true"); False: "got true (true/false)".
    bare_booleans: bool

    def kind(self, value: Any) -> str:
        if value is None:
            return self.null
        if isinstance(value, bool):
            return "true/false"
        if isinstance(value, (int, float)):
            return "a number"
        if isinstance(value, str):
            return "a string"
        if isinstance(value, list):
            return "a list" if value else self.empty_list
        if isinstance(value, dict):
            return self.mapping
        return f"a {type(value).__name__}"

    def shown(self, value: Any, sensitive: bool = False) -> str:
        """The value as the user wrote it (cut at 40 characters), or only its kind when it may
        be a secret or is a container."""
        if sensitive or value is None or isinstance(value, (list, dict)):
            return self.kind(value)
        text = json.dumps(value, default=str, ensure_ascii=False)
        text = text if len(text) <= 40 else text[:37] + "..."
        bare = isinstance(value, (int, float)) and (self.bare_booleans or not isinstance(value, bool))
        return text if bare else f"{text} ({self.kind(value)})"


# docs/configuration.md's words, for YAML and JSON alike.
CONFIG_WORDS = Words(
    null="an empty value", mapping="a mapping", empty_list="an empty list", bare_booleans=True
)
# docs/judging.md's words: the rubric is JSON and says so.
JSON_WORDS = Words(null="null", mapping="an object", empty_list="a list", bare_booleans=False)


# Dialects


@dataclass(frozen=True)
class Entry:
    """How the items of a nested field are named in the location of a message."""

    noun: str  # "model": "model 'gpt4' (entry 2)", or "model entry 2" without a name
    plural: str = ""  # "model entries": "expected a non-empty list of model entries"
    unit: str = "entry"  # what the number counts: "turn 't' (turn 1)", or "turn 1" without a name


@dataclass(frozen=True)
class Dialect:
    """The wording of one family of config files.

    `entries` None: locations are dotted paths that name list items by their `name`
    (`response.criteria[1] ('continuity')`) and pydantic's own description of the problem is
    kept. Otherwise locations name the entries of these fields ("sequence 's' (entry 1), turn
    't' (turn 1)") and a wrong value is described from the field's declaration.
    """

    words: Words
    entries: Mapping[str, Entry] | None = None
    # Values of these fields (and anything under them) are never shown.
    sensitive: frozenset[str] = frozenset()
    # An unknown field named like one of these is someone pasting a key into the file.
    key_like: frozenset[str] = frozenset()
    key_hint: str = ""
    # field -> what to say when its value does not match the field's pattern, from the value
    pattern_hints: Mapping[str, Callable[[Any], str]] = field(default_factory=dict)


def _name_hint(value: Any) -> str:
    value = str(value)
    if not value:
        return "name must not be empty"
    fixed = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-") or "my-name"
    return (
        f"name '{value}' may only use letters, digits, '.', '_' and '-' "
        f"(names become result keys), e.g. '{fixed}'"
    )


def _api_key_env_hint(value: Any) -> str:
    return (
        "api_key_env must be the NAME of an environment variable (letters, digits and '_'), "
        "e.g. OPENAI_API_KEY - never the key itself"
    )


CONFIG = Dialect(
    words=CONFIG_WORDS,
    entries={
        "models": Entry("model", "model entries"),
        "settings": Entry("settings"),
        "sequences": Entry("sequence", "sequences"),
        "turns": Entry("turn", "turns", unit="turn"),
    },
    sensitive=frozenset({"api_key_env", "base_url", "base_urls", "extra_body"}),
    key_like=frozenset({"api_key", "apikey", "key", "token", "api_token", "secret", "authorization"}),
    key_hint=(
        " Keys never go in this file: put the key in an environment variable and set "
        "api_key_env to that variable's name."
    ),
    pattern_hints={"api_key_env": _api_key_env_hint, "name": _name_hint},
)
RUBRIC = Dialect(words=JSON_WORDS)


# Reading and parsing


def read_text(path: Path, what: str, *, docs: str, default: Path, alternative: str = "") -> str:
    """The file's text; a ConfigError saying where we looked and what to create otherwise.

    `what` names the file ("models"), `docs` the page that describes it, `default` the file the
    repository ships, `alternative` an extra way out (" - or point --rubric at one").
    """
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: {what} file not found (looked in {path.resolve()}). Create it - "
            f"{docs} describes the format and the repository ships a default {default}{alternative}."
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; expected the {what} file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} file: {exc.strerror}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{key}' (first at line {seen[key]}); remove one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_YAML_HINT = " (check the indentation, and quote values that contain ': ' or start with '#')"


def parse_yaml(path: Path, text: str) -> Any:
    """The YAML document (JSON is YAML too); a ConfigError with the line and column otherwise."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        hint = "" if isinstance(exc, yaml.constructor.ConstructorError) else _YAML_HINT
        raise ConfigError(f"{path}: invalid YAML{where}: {exc.problem or exc.context}{hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def parse_json(path: Path, text: str) -> Any:
    """The JSON document; a ConfigError with the line and column, or the duplicated key."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} "
            "(JSON allows no comments and no trailing commas)"
        ) from None
    except _DuplicateKey as exc:
        raise ConfigError(
            f'{path}: duplicate key "{exc.args[0]}" in one object (JSON would keep only the '
            "last); remove or rename one"
        ) from None


# Validation errors

M = TypeVar("M", bound=BaseModel)


def validate(cls: type[M], data: Any, path: Path, dialect: Dialect) -> M:
    """`cls.model_validate(data)`, with a ConfigError in the dialect's words instead of pydantic's."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(explain(exc, cls, data, path, dialect)) from None


def explain(exc: ValidationError, root: type[BaseModel], data: Any, path: Path, dialect: Dialect) -> str:
    """One line per problem, each starting with the file: `path: where: what is wrong, the fix`."""
    line = _entry_line if dialect.entries is not None else _path_line
    lines = []
    for error in exc.errors():
        where, what = line(error, root, data, dialect)
        lines.append(f"{path}: {where}: {what}" if where else f"{path}: {what}")
    if len(lines) > MAX_PROBLEMS:
        lines[MAX_PROBLEMS:] = [f"... and {len(lines) - MAX_PROBLEMS} more problems"]
    return "\n".join(lines)


def did_you_mean(name: str, valid: list[str]) -> str:
    """The hint " - did you mean 'x'?" for the closest valid name, or "" when none is close."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f" - did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class _Hop:
    """One step into a nested model: a block (`index` None) or an item of a list."""

    field: str
    index: int | None
    name: str | None


def _walk(
    loc: list[int | str], root: type[BaseModel], data: Any, follow: Callable[[str], bool]
) -> tuple[list[_Hop], type[BaseModel], list[int | str]]:
    """Follow an error location into nested models, as far as `follow` allows: the steps taken
    (with the item's `name` from the data), the model that owns the rest, and the rest."""
    hops: list[_Hop] = []
    owner, node, i = root, data, 0
    while i < len(loc):
        key = loc[i]
        nested = _nested(owner, key) if isinstance(key, str) and follow(key) else None
        if nested is None:
            break
        sub, many = nested
        child = node.get(key) if isinstance(node, dict) else None
        if not many:
            hops.append(_Hop(str(key), None, None))
            owner, node, i = sub, child, i + 1
            continue
        if i + 1 >= len(loc) or not isinstance(loc[i + 1], int):
            break
        index = int(loc[i + 1])
        item = child[index] if isinstance(child, list) and index < len(child) else None
        name = item.get("name") if isinstance(item, dict) else None
        hops.append(_Hop(str(key), index, name if isinstance(name, str) and name else None))
        owner, node, i = sub, item, i + 2
    return hops, owner, list(loc[i:])


def _nested(owner: type[BaseModel], name: str) -> tuple[type[BaseModel], bool] | None:
    """(the model of field `name`'s value or items, whether it is a list); None for other fields."""
    info = owner.model_fields.get(name)
    if info is None:
        return None
    annotation, _ = _unwrap_optional(info.annotation)
    many = get_origin(annotation) is list
    if many:
        annotation = get_args(annotation)[0]
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation, many
    return None


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        return args[0], len(args) < len(get_args(annotation))
    return annotation, False


def _about(owner: type[BaseModel], name: str) -> str:
    info = owner.model_fields.get(name)
    return f" ({info.description})" if info is not None and info.description else ""


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# The CONFIG dialect: entries by name, values described from the declaration


def _entry_line(error: Any, root: type[BaseModel], data: Any, dialect: Dialect) -> tuple[str, str]:
    entries = dialect.entries or {}
    hops, owner, rest = _walk(list(error["loc"]), root, data, lambda key: key in entries)
    where = ", ".join(_entry_name(hop, entries[hop.field]) for hop in hops)
    return where, _entry_problem(error, owner, rest, not where, dialect)


def _entry_name(hop: _Hop, entry: Entry) -> str:
    if hop.index is None:
        return entry.noun
    if hop.name is not None:
        return f"{entry.noun} '{hop.name}' ({entry.unit} {hop.index + 1})"
    if entry.unit == "entry":
        return f"{entry.noun} entry {hop.index + 1}"
    return f"{entry.unit} {hop.index + 1}"


def _entry_problem(
    error: Any, owner: type[BaseModel], rest: list[int | str], top: bool, dialect: Dialect
) -> str:
    kind = error["type"]
    words = dialect.words
    name = str(rest[0]) if rest else ""
    dotted = _dotted(rest)
    if kind == "extra_forbidden":
        unknown = str(rest[-1])
        where = "top-level field" if top and len(rest) == 1 else "field"
        return f"unknown {where} '{unknown}'" + _unknown_hint(unknown, list(owner.model_fields), dialect)
    if kind == "missing":
        return f"missing required field '{dotted}'{_about(owner, name)}"
    if kind == "value_error":
        message = str(error["ctx"]["error"])
        return f"{dotted}: {message}" if dotted else message
    if kind == "string_pattern_mismatch" and name in dialect.pattern_hints:
        return dialect.pattern_hints[name](error["input"])
    if not rest:
        fields = ", ".join(owner.model_fields)
        return f"expected a mapping of fields ({fields}), got {words.kind(error['input'])}"
    got = words.shown(error["input"], any(str(part) in dialect.sensitive for part in rest))
    if len(rest) == 1 and name in owner.model_fields:
        return f"{name}: expected {_expected(owner, name, dialect)}, got {got}"
    return f"{dotted}: {_lower_first(error['msg'])}, got {got}"


def _unknown_hint(unknown: str, valid: list[str], dialect: Dialect) -> str:
    hint = did_you_mean(unknown, valid)
    if unknown.lower() in dialect.key_like:
        return (hint or " - did you mean 'api_key_env'?") + dialect.key_hint
    return hint or f" (valid fields: {', '.join(valid)})"


_WORDS: dict[Any, str] = {float: "a number", int: "an integer", str: "a string", bool: "true/false"}
_PLURALS: dict[Any, str] = {str: "strings"}


def _expected(owner: type[BaseModel], name: str, dialect: Dialect) -> str:
    """'a number from 0 to 2', 'a non-empty list of turns', ... from the field's declaration."""
    info = owner.model_fields[name]
    annotation, optional = _unwrap_optional(info.annotation)
    bounds = {
        bound: getattr(meta, bound)
        for meta in info.metadata
        for bound in ("ge", "gt", "le", "min_length")
        if getattr(meta, bound, None) is not None
    }
    if get_origin(annotation) is list:
        item = get_args(annotation)[0]
        entry = (dialect.entries or {}).get(name)
        plural = entry.plural if entry is not None and entry.plural else _PLURALS.get(item, "items")
        words = f"a list of {plural}"
        if bounds.get("min_length"):
            words = "a non-empty " + words[2:]
    elif get_origin(annotation) is Literal:  # e.g. reasoning_effort: the valid values, spelled out
        words = "one of " + ", ".join(f"'{value}'" for value in get_args(annotation))
    elif get_origin(annotation) is dict or (
        inspect.isclass(annotation) and issubclass(annotation, BaseModel)
    ):
        words = "a mapping"
    else:
        words = _WORDS.get(annotation, "a value")
        if bounds.get("min_length"):
            words = "a non-empty string"
    if "ge" in bounds and "le" in bounds:
        words += f" from {bounds['ge']:g} to {bounds['le']:g}"
    elif "gt" in bounds:
        words += f" greater than {bounds['gt']:g}"
    elif "ge" in bounds:
        words += f" of at least {bounds['ge']:g}"
    return words + (" (or leave the field out)" if optional else "")


def _dotted(rest: list[int | str]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest).lstrip(".")


# The RUBRIC dialect: dotted paths with the items' names, pydantic's description of the problem


def _path_line(error: Any, root: type[BaseModel], data: Any, dialect: Dialect) -> tuple[str, str]:
    loc = list(error["loc"])
    kind = error["type"]
    if kind == "value_error":
        return _path(loc, data), str(error["ctx"]["error"])
    _, parent, _ = _walk(loc[:-1], root, data, lambda key: True)
    if kind == "extra_forbidden":
        unknown = str(loc[-1])
        valid = list(parent.model_fields)
        hint = did_you_mean(unknown, valid) or f" (valid: {', '.join(valid)})"
        return _path(loc[:-1], data), f"unknown field '{unknown}'{hint}"
    if kind == "missing":
        return _path(loc, data), f"missing required field{_about(parent, str(loc[-1]))}"
    return _path(loc, data), f"{_lower_first(error['msg'])}, got {dialect.words.shown(error.get('input'))}"


def _path(loc: list[int | str], data: Any) -> str:
    """`response.criteria[2] ('prose').scale.max`: the dotted field, with a list item's name."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            if isinstance(name, str) and name:
                out += f" ('{name}')"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out
