"""evaluator.config_messages on fixed inputs: small models of its own, so these tests pin how a
problem is worded, independently of the shipped config files (tests/evaluator/test_config.py and
tests/judge/test_rubric.py check the messages of those)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from evaluator.config_messages import (
    CONFIG,
    RUBRIC,
    ConfigError,
    Dialect,
    Entry,
    did_you_mean,
    parse_json,
    parse_yaml,
    read_text,
    validate,
)

FILE = Path("box.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Step(_Strict):
    name: str = Field(description="the step's key")
    seconds: float = Field(default=1.0, gt=0)


class Part(_Strict):
    name: str = Field(pattern=r"^[a-z]+$", description="the part's key")
    size: int = Field(default=1, ge=1)
    url: str | None = Field(default=None, pattern=r"^https?://")
    steps: list[Step] = Field(default_factory=list)


class Lid(_Strict):
    colour: str


class Box(_Strict):
    label: str = Field(description="what is in the box")
    parts: list[Part] = Field(min_length=1)
    lid: Lid | None = None


ENTRIES = Dialect(
    words=CONFIG.words,
    entries={
        "parts": Entry("part", "parts"),
        "steps": Entry("step", "steps", unit="step"),
        "lid": Entry("lid"),
    },
    sensitive=frozenset({"url"}),
    key_like=frozenset({"token"}),
    key_hint=" Keys never go in this file.",
    pattern_hints={"name": lambda value: f"name {value!r} must be lower-case letters"},
)


def problems(data: Any, dialect: Dialect = ENTRIES) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(Box, data, FILE, dialect)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    return str(caught.value).splitlines()


def box(*parts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"label": "tools", "parts": list(parts) or [{"name": "a"}], **fields}


def test_a_valid_document_is_returned_as_the_model() -> None:
    assert validate(Box, box({"name": "a", "size": 2}), FILE, ENTRIES) == Box(
        label="tools", parts=[Part(name="a", size=2)]
    )


# Entry-style locations (the CONFIG dialect's)


def test_entries_are_named_by_name_else_by_number_and_each_problem_is_a_line() -> None:
    assert problems(box({"name": "a", "size": 0}, {"nme": "b"})) == [
        "box.yaml: part 'a' (entry 1): size: expected an integer of at least 1, got 0",
        "box.yaml: part entry 2: missing required field 'name' (the part's key)",
        "box.yaml: part entry 2: unknown field 'nme' - did you mean 'name'?",
    ]


def test_nested_entries_use_their_own_unit() -> None:
    steps = [{"name": "cut", "seconds": -1}, {"seconds": 2}]
    assert problems(box({"name": "a", "steps": steps})) == [
        "box.yaml: part 'a' (entry 1), step 'cut' (step 1): "
        "seconds: expected a number greater than 0, got -1",
        "box.yaml: part 'a' (entry 1), step 2: missing required field 'name' (the step's key)",
    ]


def test_a_block_is_named_by_its_noun() -> None:
    assert problems(box(lid={"color": "red"})) == [
        "box.yaml: lid: missing required field 'colour'",
        "box.yaml: lid: unknown field 'color' - did you mean 'colour'?",
    ]


def test_top_level_problems_carry_no_entry() -> None:
    assert problems({"label": "x", "parts": [], "lable": 1}) == [
        "box.yaml: parts: expected a non-empty list of parts, got an empty list",
        "box.yaml: unknown top-level field 'lable' - did you mean 'label'?",
    ]
    assert problems({"parts": [{"name": "a"}], "colour": "red"}) == [
        "box.yaml: missing required field 'label' (what is in the box)",
        "box.yaml: unknown top-level field 'colour' (valid fields: label, parts, lid)",
    ]


def test_an_entry_that_is_not_a_mapping_lists_its_fields() -> None:
    assert problems({"label": "x", "parts": ["just-a-name"]}) == [
        "box.yaml: part entry 1: expected a mapping of fields (name, size, url, steps), got a string"
    ]


def test_a_sensitive_value_is_never_shown() -> None:
    lines = problems(box({"name": "a", "url": "ftp://user:SECRET@host"}))
    assert lines == [
        "box.yaml: part 'a' (entry 1): url: expected a string (or leave the field out), got a string"
    ]


def test_a_key_like_unknown_field_points_at_the_environment() -> None:
    assert problems(box({"name": "a", "token": "sk-123"})) == [
        "box.yaml: part 'a' (entry 1): unknown field 'token' - did you mean 'api_key_env'? "
        "Keys never go in this file."
    ]


def test_a_pattern_hint_replaces_the_regex() -> None:
    assert problems(box({"name": "Big A"})) == [
        "box.yaml: part 'Big A' (entry 1): name 'Big A' must be lower-case letters"
    ]


def test_problems_beyond_the_cap_are_summed_up() -> None:
    lines = problems(box(*[{"name": "a", "size": 0}] * 20))
    assert len(lines) == 16
    assert lines[14] == "box.yaml: part 'a' (entry 15): size: expected an integer of at least 1, got 0"
    assert lines[15] == "... and 5 more problems"


# Dotted-path locations (the RUBRIC dialect's)


def test_paths_name_list_items_and_keep_pydantics_description() -> None:
    assert problems(box({"name": "a", "size": 0}, {"nme": "b"}), RUBRIC) == [
        "box.yaml: parts[0] ('a').size: input should be greater than or equal to 1, got 0",
        "box.yaml: parts[1].name: missing required field (the part's key)",
        "box.yaml: parts[1]: unknown field 'nme' - did you mean 'name'?",
    ]
    assert problems({"label": None, "parts": [{"name": "a"}], "x": 1}, RUBRIC) == [
        "box.yaml: label: input should be a valid string, got null",
        "box.yaml: unknown field 'x' (valid: label, parts, lid)",
    ]


def test_rubric_words_show_booleans_and_objects_as_json_does() -> None:
    assert problems(box({"name": "a", "size": True, "steps": {}}), RUBRIC) == [
        "box.yaml: parts[0] ('a').size: input should be a valid integer, got true (true/false)",
        "box.yaml: parts[0] ('a').steps: input should be a valid list, got an object",
    ]
    assert problems(box({"name": "a", "size": True})) == [
        "box.yaml: part 'a' (entry 1): size: expected an integer of at least 1, got true"
    ]


# Words


@pytest.mark.parametrize(
    ("value", "config_words", "json_words"),
    [
        (None, "an empty value", "null"),
        (True, "true", "true (true/false)"),
        (2.5, "2.5", "2.5"),
        ("hot", '"hot" (a string)', '"hot" (a string)'),
        ("x" * 50, '"' + "x" * 36 + "... (a string)", '"' + "x" * 36 + "... (a string)"),
        ([], "an empty list", "a list"),
        ([1], "a list", "a list"),
        ({"a": 1}, "a mapping", "an object"),
    ],
)
def test_values_are_shown_in_each_files_words(value: Any, config_words: str, json_words: str) -> None:
    assert CONFIG.words.shown(value) == config_words
    assert RUBRIC.words.shown(value) == json_words


def test_a_sensitive_value_shows_only_its_kind() -> None:
    assert CONFIG.words.shown("sk-secret", sensitive=True) == "a string"


def test_did_you_mean() -> None:
    assert did_you_mean("temprature", ["temperature", "top_p"]) == " - did you mean 'temperature'?"
    assert did_you_mean("flavour", ["temperature", "top_p"]) == ""


# Parsing and reading


def test_json_errors_give_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_json(FILE, '{"a": 1,\n "b": 2,}')
    assert str(caught.value) == (
        "box.yaml: invalid JSON at line 2, column 9: Expecting property name enclosed in double "
        "quotes (JSON allows no comments and no trailing commas)"
    )
    with pytest.raises(ConfigError) as caught:
        parse_json(FILE, '{"a": {"b": 1, "b": 2}}')
    assert str(caught.value) == (
        'box.yaml: duplicate key "b" in one object (JSON would keep only the last); remove or rename one'
    )
    assert parse_json(FILE, '{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


def test_yaml_errors_give_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(FILE, "a:\n  - b: 1\n   c: 2\n")
    message = str(caught.value)
    assert message.startswith("box.yaml: invalid YAML at line 3, column 4: ")
    assert message.endswith("(check the indentation, and quote values that contain ': ' or start with '#')")
    with pytest.raises(ConfigError) as caught:
        parse_yaml(FILE, "a: 1\nb: 2\na: 3\n")
    assert str(caught.value) == (
        "box.yaml: invalid YAML at line 3, column 1: duplicate key 'a' (first at line 1); remove one"
    )
    assert parse_yaml(FILE, "a: [1, {b: ~}]\n") == {"a": [1, {"b": None}]}


def test_reading_names_the_file_and_the_way_out(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as caught:
        read_text(
            missing,
            "box",
            docs="docs/box.md",
            default=Path("config/box.json"),
            alternative=" - or pass --box",
        )
    assert str(caught.value) == (
        f"{missing}: box file not found (looked in {missing.resolve()}). Create it - docs/box.md "
        "describes the format and the repository ships a default config/box.json - or pass --box."
    )
    with pytest.raises(ConfigError, match="is a directory; expected the box file"):
        read_text(tmp_path, "box", docs="d", default=Path("x"))
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "caf\xe9"}')
    with pytest.raises(ConfigError) as caught:
        read_text(latin, "box", docs="d", default=Path("x"))
    assert str(caught.value) == f"{latin}: not UTF-8 text (bad byte at offset 10)"
    latin.write_text("ok", encoding="utf-8")
    assert read_text(latin, "box", docs="d", default=Path("x")) == "ok"
