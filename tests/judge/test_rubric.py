"""config/rubric.json: the shipped file is valid, its version tracks its content, and every
problem is one line naming the file, the field (with the criterion) and the fix."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evaluator.config import ConfigError
from evaluator.judge.rubric import load_rubric
from tests.judge.conftest import REPO, ObservedStore, flat, invoke, judge_args, shipped_rubric


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "rubric.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def edited(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(shipped_rubric())
    change(data)
    return data


def test_the_shipped_rubric_is_valid() -> None:
    rubric = load_rubric(REPO / "config" / "rubric.json")
    assert rubric.kinds == ["response", "sequence"]
    assert re.fullmatch(r"2-[0-9a-f]{8}", rubric.version_id)
    assert all(c.min == 1 and c.max == 10 for kind in rubric.kinds for c in rubric.criteria(kind))
    assert "{{answer}}" in rubric.template("response") and "\n" in rubric.template("response")


def version(tmp_path: Path, data: dict[str, Any]) -> str:
    return load_rubric(write(tmp_path, data)).version_id


def test_the_version_changes_with_what_changes_a_judgement_only(tmp_path: Path) -> None:
    base = version(tmp_path, shipped_rubric())
    # Not part of a judgement: no new version.
    assert version(tmp_path, edited(lambda d: d.update(description="reworded"))) == base
    assert version(tmp_path, edited(lambda d: d.update(judge="someone"))) == base
    assert version(tmp_path, edited(lambda d: d.update(max_tokens=512))) == base  # the default spelled out
    joined = edited(lambda d: d["response"].update(template="\n".join(d["response"]["template"])))
    assert version(tmp_path, joined) == base  # a list of lines is the same template
    # Anything else judges afresh.
    changes: list[Callable[[dict[str, Any]], None]] = [
        lambda d: d.update(version="3"),
        lambda d: d.update(seed=1),
        lambda d: d["pairwise"]["scale"].__setitem__(0, "A far better"),
        lambda d: d["pairwise"]["criteria"][0].update(description="Something else."),
        lambda d: d.update(response_format="json_object"),
        lambda d: d["response"]["criteria"][0].update(description="Something else."),
        lambda d: d["sequence"]["criteria"][0].update(scale={"min": 0, "max": 5}),
        lambda d: d["response"]["template"].append("Be kind."),
    ]
    versions = {version(tmp_path, edited(change)) for change in changes}
    assert base not in versions and len(versions) == len(changes)
    assert version(tmp_path, edited(changes[0])).startswith("3-")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["response"]["criteria"][1].update(scal={"min": 1, "max": 5}),
            "response.criteria[1] ('continuity'): unknown field 'scal' - did you mean 'scale'?",
        ),
        (
            lambda d: d["sequence"]["criteria"][2].update(scale={"min": 5, "max": 5}),
            "sequence.criteria[2] ('character_consistency').scale: min (5) must be below max (5)",
        ),
        (
            lambda d: d["response"]["criteria"][0].update(scale={"min": 1, "max": "10"}),
            "response.criteria[0] ('instruction_following').scale.max: input should be a valid integer",
        ),
        (lambda d: d.pop("version"), "version: missing required field"),
        (lambda d: d.update(version="one two"), "version: string should match pattern"),
        (lambda d: d.update(response_format="json"), "response_format: input should be 'json_schema'"),
        (lambda d: d.update(max_tokens=0), "max_tokens: input should be greater than 0"),
        (lambda d: d.update(temperature=0.2), "unknown field 'temperature'"),
        (
            lambda d: d["response"]["criteria"].append(dict(d["response"]["criteria"][0])),
            "response: criteria: the name 'instruction_following' is used by criteria 1 and 5",
        ),
        (lambda d: d["sequence"].update(criteria=[]), "sequence.criteria: list should have at least 1 item"),
        (
            lambda d: d["response"]["criteria"][3].update(description="  "),
            "response.criteria[3] ('creativity').description: must not be empty",
        ),
        (
            lambda d: d["response"]["template"].append("{{answr}}"),
            "response.template: unknown placeholder {{answr}} - did you mean {{answer}}?",
        ),
        (
            lambda d: d["sequence"].update(template="Judge {{conversation}} please."),
            "sequence.template: must contain {{format}}",
        ),
        (lambda d: d["sequence"]["template"].append("{{answer}}"), "unknown placeholder {{answer}}"),
        (lambda d: (d.pop("response"), d.pop("sequence"), d.pop("pairwise")), "the rubric judges nothing"),
        (lambda d: d["pairwise"]["scale"].pop(), "pairwise.scale: needs an odd number of labels"),
        (lambda d: d["pairwise"]["scale"].__setitem__(1, "a MUCH better"), "the labels must differ"),
        (
            lambda d: d["pairwise"].update(template="Compare {{conversation_a}}. {{format}}"),
            "{{conversation_b}}",
        ),
    ],
)
def test_problems_name_the_file_and_the_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    path = write(tmp_path, edited(change))
    with pytest.raises(ConfigError) as caught:
        load_rubric(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert expected.lower() in message.lower(), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"version": "1",}', "invalid JSON at line 1, column 17"),
        ('{"version": "1", "version": "2"}', 'duplicate key "version"'),
        ("[]", "the top level must be an object"),
        ("  ", "the file is empty"),
    ],
)
def test_file_level_problems(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        load_rubric(path)
    assert str(caught.value).startswith(str(path))


def test_a_missing_rubric_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rubric file not found") as caught:
        load_rubric(tmp_path / "nope.json")
    assert "docs/judging.md" in str(caught.value)


def test_the_command_exits_2_with_the_message(memory_store: ObservedStore, tmp_path: Path) -> None:
    path = write(tmp_path, edited(lambda d: d["response"]["criteria"][1].update(scal=3)))
    result = invoke(*judge_args(tmp_path, rubric=path))
    assert result.exit_code == 2
    out = flat(result.output)
    assert str(path) in out and "response.criteria[1] ('continuity'): unknown field 'scal'" in out
    with pytest.raises(ConfigError) as caught:
        load_rubric(path)
    assert flat(str(caught.value)) in out  # the loader's whole message, fix included
    assert memory_store.saves == 0
