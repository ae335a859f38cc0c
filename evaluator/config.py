"""The evaluator's configuration: the models to evaluate and the prompt sequences to play.

`load_models` reads `config/models.yaml`, `load_prompts` reads `config/prompts.json`. Both
validate everything on load: any problem is a `ConfigError` whose message names the file, the
entry, the field, what is valid and how to fix it, and never echoes a secret. Pydantic models sit
at the boundary; `_explain` turns their errors into those messages. docs/configuration.md
documents both files.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_MODELS_PATH",
    "DEFAULT_PROMPTS_PATH",
    "ConfigError",
    "EvalSettings",
    "ModelEntry",
    "Sequence",
    "Turn",
    "load_models",
    "load_prompts",
    "select",
]

DEFAULT_MODELS_PATH = Path("config/models.yaml")
DEFAULT_PROMPTS_PATH = Path("config/prompts.json")
_DOCS = "docs/configuration.md"
_NAME_RE = r"^[A-Za-z0-9._-]+$"
_ENV_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Values of these fields (and anything under them) are never shown in messages.
_SENSITIVE = frozenset({"api_key_env", "base_url", "extra_body"})
_KEY_LIKE = frozenset({"api_key", "apikey", "key", "token", "api_token", "secret", "authorization"})
_MAX_PROBLEMS = 15


class ConfigError(Exception):
    """A configuration problem. `str(error)` is the complete message for the user."""


Name = Annotated[str, Field(pattern=_NAME_RE)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelEntry(_Strict):
    """One model to evaluate: an OpenAI-compatible endpoint, a model id and its parameters."""

    name: Name = Field(description="unique key for this entry, used in results and --models")
    base_url: str = Field(description="the endpoint's OpenAI-compatible URL, e.g. .../v1")
    model: str = Field(min_length=1, description="the model id the endpoint expects")
    api_key_env: str | None = Field(default=None, pattern=_ENV_RE)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int = Field(default=512, gt=0)
    seed: int | None = None
    stop: list[str] | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)
    context_window: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    price_input_per_mtok: float | None = Field(default=None, ge=0)
    price_output_per_mtok: float | None = Field(default=None, ge=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    min_output_tokens: int = Field(default=64, ge=1)
    _source: str = PrivateAttr(default=str(DEFAULT_MODELS_PATH))

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080/v1")
        if parts.path.rstrip("/").endswith("/chat/completions"):
            raise ValueError("must stop before /chat/completions (the client appends it)")
        return value.rstrip("/")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("extra_body", mode="before")
    @classmethod
    def _no_extra_body(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _check_budget(self) -> ModelEntry:
        if self.min_output_tokens > self.max_tokens:
            raise ValueError(
                f"min_output_tokens ({self.min_output_tokens}) is larger than max_tokens "
                f"({self.max_tokens}): every turn would stop as context_exhausted; "
                "lower min_output_tokens or raise max_tokens"
            )
        if self.context_window is not None and self.min_output_tokens >= self.context_window:
            raise ValueError(
                f"min_output_tokens ({self.min_output_tokens}) must be below context_window "
                f"({self.context_window})"
            )
        return self

    def __hash__(self) -> int:
        return hash((self.name, self.base_url, self.model))

    def api_key(self) -> str | None:
        """The key from the environment variable named by `api_key_env`; None when there is none.

        Callers must pass a placeholder to the OpenAI client when this is None: the client
        otherwise falls back to OPENAI_API_KEY and would send it to this endpoint.
        """
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            state = "is empty" if self.api_key_env in os.environ else "is not set"
            raise ConfigError(
                f"{self._source}: model '{self.name}': environment variable "
                f"{self.api_key_env} (api_key_env) {state}. Set it, e.g. "
                f"`export {self.api_key_env}=...`, or remove api_key_env for an endpoint "
                "without authentication."
            )
        return value

    def seed_for_run(self, run_index: int) -> int | None:
        """Run k uses seed + k, so runs differ from each other but repeat exactly."""
        return None if self.seed is None else self.seed + run_index

    def fingerprint(self) -> dict[str, Any]:
        """What determines an answer; prices, limits, timeouts and the key's name do not."""
        return self.model_dump(include=_FINGERPRINT)

    def generation_params(self, run_index: int = 0) -> dict[str, Any]:
        """Keyword arguments for `chat.completions.create`, recorded with each turn.

        Unset parameters are left out (the endpoint's default applies); `extra_body` is
        included only when non-empty. The runner may lower `max_tokens` to fit the context.
        """
        params = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed_for_run(run_index),
            "stop": list(self.stop) if self.stop else None,
            "extra_body": json.loads(json.dumps(self.extra_body)) if self.extra_body else None,
        }
        return {key: value for key, value in params.items() if value is not None}

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Cost from the per-million-token prices; None unless both prices are set."""
        if self.price_input_per_mtok is None or self.price_output_per_mtok is None:
            return None
        return (
            prompt_tokens * self.price_input_per_mtok + completion_tokens * self.price_output_per_mtok
        ) / 1e6


_FINGERPRINT = {
    "model",
    "base_url",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "extra_body",
}


class EvalSettings(_Strict):
    """The `settings:` block of models.yaml: retries and run defaults."""

    retry_max_attempts: int = Field(default=6, ge=1)
    retry_max_wait_s: float = Field(default=300.0, ge=0)
    retry_initial_s: float = Field(default=1.0, ge=0)
    retry_max_backoff_s: float = Field(default=60.0, ge=0)
    default_runs: int = Field(default=3, ge=1)
    concurrency: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _check_backoff(self) -> EvalSettings:
        if self.retry_initial_s > self.retry_max_backoff_s:
            raise ValueError(
                f"retry_initial_s ({self.retry_initial_s:g}) is larger than "
                f"retry_max_backoff_s ({self.retry_max_backoff_s:g}); lower one or raise the other"
            )
        return self


class Turn(_Strict):
    """One user message of a sequence."""

    name: Name = Field(description="unique within its sequence, e.g. 'premise'")
    text: str = Field(description="what the user says this turn")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class Sequence(_Strict):
    """A named conversation: an optional system prompt and turns played in order."""

    name: Name = Field(description="unique key for this sequence, used in results and --sequences")
    description: str | None = None
    system: str | None = None
    turns: list[Turn] = Field(min_length=1, description="the user turns, in order")

    @field_validator("system")
    @classmethod
    def _system_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty; leave the field out for no system prompt")
        return value

    @model_validator(mode="after")
    def _unique_turns(self) -> Sequence:
        _check_unique([turn.name for turn in self.turns], "turn name", "turns", "in a sequence")
        return self

    def __hash__(self) -> int:
        return hash((self.name, self.content_hash))

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of the system prompt and the turns (names and text)."""
        payload = {
            "system": self.system,
            "turns": [{"name": turn.name, "text": turn.text} for turn in self.turns],
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _ModelsFile(_Strict):
    models: list[ModelEntry] = Field(min_length=1, description="the models to evaluate")
    settings: EvalSettings = EvalSettings()

    @field_validator("settings", mode="before")
    @classmethod
    def _empty_settings(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _unique_models(self) -> _ModelsFile:
        _check_unique([entry.name for entry in self.models], "model name", "entries", "")
        return self


class _PromptsFile(_Strict):
    description: str | None = None
    sequences: list[Sequence] = Field(min_length=1, description="the prompt sequences")

    @model_validator(mode="after")
    def _unique_sequences(self) -> _PromptsFile:
        _check_unique([seq.name for seq in self.sequences], "sequence name", "entries", "")
        return self


def _check_unique(names: list[str], what: str, unit: str, scope: str) -> None:
    for name in dict.fromkeys(names):
        places = [str(i + 1) for i, other in enumerate(names) if other == name]
        if len(places) > 1:
            raise ValueError(
                f"{what} '{name}' is used by {unit} {' and '.join(places)}; names must be "
                f"unique{' ' + scope if scope else ''} - rename one"
            )


# Loading


def load_models(path: Path) -> tuple[list[ModelEntry], EvalSettings]:
    """Read and validate a models file (YAML; JSON is valid YAML too)."""
    path = Path(path)
    data = _parse_yaml(path, _read(path, "models"))
    if data is None:
        raise ConfigError(f"{path}: the file is empty; it needs a 'models:' list - see {_DOCS}")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping with a 'models:' list (and an optional "
            f"'settings:' block), got {_kind(data)} - see {_DOCS}"
        )
    parsed = _validate(_ModelsFile, data, path)
    for entry in parsed.models:
        entry._source = str(path)
    return list(parsed.models), parsed.settings


def load_prompts(path: Path) -> list[Sequence]:
    """Read and validate a prompts file (JSON)."""
    path = Path(path)
    text = _read(path, "prompts")
    if not text.strip():
        raise ConfigError(f'{path}: the file is empty; it needs {{"sequences": [...]}} - see {_DOCS}')
    data = _parse_json(path, text)
    if not isinstance(data, dict):
        raise ConfigError(
            f'{path}: the top level must be an object with a "sequences" list, got {_kind(data)}'
            f" - see {_DOCS}"
        )
    return list(_validate(_PromptsFile, data, path).sequences)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def select(items: list[N], names_csv: str | None, kind: str, path: Path | str) -> list[N]:
    """The items named in a comma-separated list, in that order; all of them for None.

    `kind` is the singular noun for messages ("model", "sequence"); `path` the file that
    defines the items.
    """
    if names_csv is None:
        return list(items)
    wanted = list(dict.fromkeys(n.strip() for n in names_csv.split(",") if n.strip()))
    valid = [item.name for item in items]
    if not wanted:
        raise ConfigError(
            f"no {kind} names given; pass a comma-separated list of names from {path}: " + ", ".join(valid)
        )
    unknown = [name for name in wanted if name not in valid]
    if unknown:
        lines = [f"unknown {kind} '{name}'{_did_you_mean(name, valid)}" for name in unknown]
        lines.append(f"{kind}s defined in {path}: {', '.join(valid)}")
        raise ConfigError("\n".join(lines))
    by_name = {item.name: item for item in items}
    return [by_name[name] for name in wanted]


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        default = DEFAULT_MODELS_PATH if what == "models" else DEFAULT_PROMPTS_PATH
        raise ConfigError(
            f"{path}: {what} file not found (looked in {path.resolve()}). Create it - "
            f"{_DOCS} describes the format and the repository ships a default {default}."
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


def _parse_yaml(path: Path, text: str) -> Any:
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


def _parse_json(path: Path, text: str) -> Any:
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


# Turning pydantic's errors into ours

M = TypeVar("M", bound=BaseModel)
# field name -> (noun for one item, model of one item)
_NESTED: dict[str, tuple[str, type[BaseModel]]] = {
    "models": ("model", ModelEntry),
    "settings": ("settings", EvalSettings),
    "sequences": ("sequence", Sequence),
    "turns": ("turn", Turn),
}
_PLURALS: dict[Any, str] = {
    str: "strings",
    ModelEntry: "model entries",
    Sequence: "sequences",
    Turn: "turns",
}
_WORDS: dict[Any, str] = {float: "a number", int: "an integer", str: "a string", bool: "true/false"}


def _validate(cls: type[M], data: dict[str, Any], path: Path) -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, cls, data, path)) from None


def _explain(exc: ValidationError, root: type[BaseModel], data: Any, path: Path) -> str:
    lines = []
    for error in exc.errors():
        where, owner, rest = _locate(error["loc"], root, data)
        prefix = f"{path}: {where}: " if where else f"{path}: "
        lines.append(prefix + _describe(error, owner, rest, top=not where))
    if len(lines) > _MAX_PROBLEMS:
        lines[_MAX_PROBLEMS:] = [f"... and {len(lines) - _MAX_PROBLEMS} more problems"]
    return "\n".join(lines)


def _locate(
    loc: tuple[int | str, ...], root: type[BaseModel], data: Any
) -> tuple[str, type[BaseModel], list[int | str]]:
    """Split an error location into a readable entry ("model 'x' (entry 2)"), the model that
    owns the field, and the rest of the path."""
    parts: list[str] = []
    owner, node, i = root, data, 0
    while i < len(loc):
        key = loc[i]
        if not (isinstance(key, str) and key in _NESTED and key in owner.model_fields):
            break
        noun, sub = _NESTED[key]
        child = node.get(key) if isinstance(node, dict) else None
        if key == "settings":
            parts.append("settings")
            owner, node, i = sub, child, i + 1
            continue
        if i + 1 >= len(loc) or not isinstance(loc[i + 1], int):
            break
        index = int(loc[i + 1])
        item = child[index] if isinstance(child, list) and index < len(child) else None
        name = item.get("name") if isinstance(item, dict) else None
        unit = "turn" if noun == "turn" else "entry"
        if isinstance(name, str) and name:
            parts.append(f"{noun} '{name}' ({unit} {index + 1})")
        else:
            parts.append(f"turn {index + 1}" if noun == "turn" else f"{noun} entry {index + 1}")
        owner, node, i = sub, item, i + 2
    return ", ".join(parts), owner, list(loc[i:])


def _describe(error: Any, owner: type[BaseModel], rest: list[int | str], top: bool) -> str:
    kind = error["type"]
    field = str(rest[0]) if rest else ""
    dotted = _dotted(rest)
    if kind == "extra_forbidden":
        unknown = str(rest[-1])
        where = "top-level field" if top and len(rest) == 1 else "field"
        return f"unknown {where} '{unknown}'" + _unknown_hint(unknown, list(owner.model_fields))
    if kind == "missing":
        info = owner.model_fields.get(field)
        about = f" ({info.description})" if info is not None and info.description else ""
        return f"missing required field '{dotted}'{about}"
    if kind == "value_error":
        message = str(error["ctx"]["error"])
        return f"{dotted}: {message}" if dotted else message
    if kind == "string_pattern_mismatch" and field == "api_key_env":
        return (
            "api_key_env must be the NAME of an environment variable (letters, digits and '_'), "
            "e.g. OPENAI_API_KEY - never the key itself"
        )
    if kind == "string_pattern_mismatch" and field == "name":
        value = str(error["input"])
        if not value:
            return "name must not be empty"
        fixed = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-") or "my-name"
        return (
            f"name '{value}' may only use letters, digits, '.', '_' and '-' "
            f"(names become result keys), e.g. '{fixed}'"
        )
    if not rest:
        fields = ", ".join(owner.model_fields)
        return f"expected a mapping of fields ({fields}), got {_kind(error['input'])}"
    sensitive = any(str(part) in _SENSITIVE for part in rest)
    got = _shown(error["input"], sensitive)
    if len(rest) == 1 and field in owner.model_fields:
        return f"{field}: expected {_expected(owner, field)}, got {got}"
    return f"{dotted}: {error['msg'][0].lower()}{error['msg'][1:]}, got {got}"


def _unknown_hint(unknown: str, valid: list[str]) -> str:
    hint = _did_you_mean(unknown, valid)
    if unknown.lower() in _KEY_LIKE:
        return (
            (hint or " - did you mean 'api_key_env'?")
            + " Keys never go in this file: put the key in an environment variable and set "
            "api_key_env to that variable's name."
        )
    return hint or f" (valid fields: {', '.join(valid)})"


def _did_you_mean(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f" - did you mean '{close[0]}'?" if close else ""


def _expected(owner: type[BaseModel], field: str) -> str:
    """'a number from 0 to 2', 'a non-empty list of turns', ... from the field's declaration."""
    info = owner.model_fields[field]
    annotation: Any = info.annotation
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        optional, annotation = len(args) < len(get_args(annotation)), args[0]
    bounds = {
        name: getattr(meta, name)
        for meta in info.metadata
        for name in ("ge", "gt", "le", "min_length")
        if getattr(meta, name, None) is not None
    }
    if get_origin(annotation) is list:
        item = get_args(annotation)[0]
        words = f"a list of {_PLURALS.get(item, 'items')}"
        if bounds.get("min_length"):
            words = "a non-empty " + words[2:]
    elif get_origin(annotation) is dict or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
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


def _kind(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _shown(value: Any, sensitive: bool) -> str:
    if sensitive or value is None or isinstance(value, (list, dict)):
        return _kind(value)
    text = json.dumps(value, default=str, ensure_ascii=False)
    text = text if len(text) <= 40 else text[:37] + "..."
    return text if isinstance(value, (int, float)) else f"{text} ({_kind(value)})"
