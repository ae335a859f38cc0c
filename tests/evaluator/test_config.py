"""evaluator.config: the shipped files load, and every configuration mistake has a clear message."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

import evaluator.config as config
from evaluator.config import (
    ConfigError,
    EvalSettings,
    ModelEntry,
    PromptTurn,
    Sequence,
    load_models,
    load_prompts,
    select,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS_YAML = ROOT / "config" / "models.yaml"
PROMPTS_JSON = ROOT / "config" / "prompts.json"
DOCS = ROOT / "docs" / "configuration.md"

NAME_RULE = "may only use letters, digits, '.', '_' and '-' (names become result keys)"
ENTRY = "  - name: a\n    base_url: http://127.0.0.1:8080/v1\n    model: m\n"


def write(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def models_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_models(path)
    error = info.value
    assert error.__cause__ is None, "a ConfigError must not chain another traceback"
    assert error.__context__ is None or error.__suppress_context__
    return path, str(info.value)


def prompts_doc(*sequences: dict[str, object]) -> str:
    return json.dumps({"sequences": list(sequences)})


def prompts_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text, "prompts.json")
    with pytest.raises(ConfigError) as info:
        load_prompts(path)
    return path, str(info.value)


def seq(name: str = "s", turns: object = None, **extra: object) -> dict[str, object]:
    return {"name": name, "turns": [{"name": "t", "text": "x"}] if turns is None else turns, **extra}


# The shipped files


def test_default_models_file_points_at_the_local_server() -> None:
    models, settings = load_models(MODELS_YAML)
    assert [m.name for m in models] == ["smollm2-local"]
    local = models[0]
    assert local.base_url == "http://127.0.0.1:8080/v1"
    assert local.model == "smollm2-135m"
    assert local.api_key_env is None and local.api_key() is None
    assert (local.temperature, local.top_p, local.max_tokens, local.seed) == (0.7, 0.95, 400, 1234)
    assert local.context_window is None
    assert settings == EvalSettings()


def test_commented_examples_in_models_file_are_valid(tmp_path: Path) -> None:
    # Uncommenting an example ("  # - name:" -> "  - name:") must give a valid entry.
    lines = MODELS_YAML.read_text(encoding="utf-8").splitlines()
    examples = [line[:2] + line[4:] for line in lines if re.match(r"^  # (- |  +[a-z_]+:)", line)]
    models, _ = load_models(write(tmp_path, "models:\n" + "\n".join(examples) + "\n"))
    by_url = {m.base_url: m for m in models}
    # 6 providers' examples + the o4-mini and gpt-5-mini reasoning entries + the replicas entry
    assert len(models) == 9
    replicas = by_url["http://10.0.0.11:8080/v1"]
    assert replicas.replica_urls == ["http://10.0.0.11:8080/v1", "http://10.0.0.12:8080/v1"]
    for url, env in [
        ("https://api.openai.com/v1", "OPENAI_API_KEY"),
        ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        ("https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
        ("https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
    ]:
        entry = by_url[url]
        assert entry.api_key_env == env
        assert entry.context_window and entry.price_input_per_mtok and entry.price_output_per_mtok


def test_default_prompts_are_our_creative_writing_set() -> None:
    sequences = load_prompts(PROMPTS_JSON)
    assert len(sequences) >= 5
    assert any(len(s.turns) == 5 for s in sequences)
    assert len({s.content_hash for s in sequences}) == len(sequences)
    for sequence in sequences:
        assert 3 <= len(sequence.turns) <= 5, sequence.name
        for turn in sequence.turns:
            sentences = len(re.findall(r"[.!?](\s|$)", turn.text))
            assert 1 <= sentences <= 4, (sequence.name, turn.name)


def test_docs_describe_every_field() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    for cls in (ModelEntry, EvalSettings, Sequence, PromptTurn):
        for field in cls.model_fields:
            assert f"`{field}`" in docs, f"{cls.__name__}.{field} is not documented"


def test_public_api() -> None:
    assert set(config.__all__) >= {
        "ConfigError", "ModelEntry", "Sequence", "PromptTurn", "EvalSettings",
        "load_models", "load_prompts", "select",
    }  # fmt: skip


# models.yaml: files and syntax


def test_missing_models_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_models(path)
    message = str(info.value)
    assert message.startswith(f"{path}: models file not found")
    assert "docs/configuration.md" in message and "config/models.yaml" in message


def test_models_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory; expected the models file"):
        load_models(tmp_path)


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path, message = models_error(tmp_path, "models:\n  - name: a\n   base_url: x\n")
    assert message.startswith(f"{path}: invalid YAML at line 3, column 4: ")


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path, message = models_error(tmp_path, "models:\n" + ENTRY + "    model: n\n")
    assert message == (
        f"{path}: invalid YAML at line 5, column 5: duplicate key 'model' (first at line 4); remove one"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty; it needs a 'models:' list"),
        ("- a\n", "the top level must be a mapping with a 'models:' list"),
        ("models: []\n", "models: expected a non-empty list of model entries, got an empty list"),
        ("models: 3\n", "models: expected a non-empty list of model entries, got 3"),
    ],
)
def test_models_top_level_shape(tmp_path: Path, text: str, expected: str) -> None:
    path, message = models_error(tmp_path, text)
    assert message.startswith(f"{path}: {expected}")


def test_unknown_top_level_field(tmp_path: Path) -> None:
    path, message = models_error(tmp_path, "model:\n" + ENTRY)
    assert f"{path}: unknown top-level field 'model' - did you mean 'models'?" in message.splitlines()


# models.yaml: fields


def test_unknown_field_suggests_the_closest(tmp_path: Path) -> None:
    text = "models:\n" + ENTRY + ENTRY.replace("name: a", "name: gpt4") + "    temprature: 1\n"
    path, message = models_error(tmp_path, text)
    assert (
        message == f"{path}: model 'gpt4' (entry 2): unknown field 'temprature' - did you mean 'temperature'?"
    )


def test_unknown_field_without_a_close_match_lists_valid_fields(tmp_path: Path) -> None:
    _, message = models_error(tmp_path, "models:\n" + ENTRY + "    flavour: 1\n")
    assert "unknown field 'flavour' (valid fields: name, base_url, model, api_key_env," in message


def test_an_api_key_in_the_file_is_refused_and_not_echoed(tmp_path: Path) -> None:
    _, message = models_error(tmp_path, "models:\n" + ENTRY + "    api_key: sk-verysecret\n")
    assert "unknown field 'api_key' - did you mean 'api_key_env'?" in message
    assert "environment variable" in message
    assert "sk-verysecret" not in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "temperature: hot",
            'temperature: expected a number from 0 to 2 (or leave the field out), got "hot" (a string)',
        ),
        ("temperature: 2.5", "temperature: expected a number from 0 to 2 (or leave the field out), got 2.5"),
        ("top_p: 1.5", "top_p: expected a number from 0 to 1 (or leave the field out), got 1.5"),
        ("max_tokens: 0", "max_tokens: expected an integer greater than 0, got 0"),
        ("max_tokens: true", "max_tokens: expected an integer greater than 0, got true"),
        ("max_tokens: 10.5", "max_tokens: expected an integer greater than 0, got 10.5"),
        ("seed: '7'", 'seed: expected an integer (or leave the field out), got "7" (a string)'),
        ("stop: [1]", "stop[0]: input should be a valid string, got 1"),
        ("extra_body: 5", "extra_body: expected a mapping, got a number"),
        (
            "context_window: -1",
            "context_window: expected an integer greater than 0 (or leave the field out), got -1",
        ),
        (
            "max_concurrency: 0",
            "max_concurrency: expected an integer of at least 1 (or leave the field out), got 0",
        ),
        (
            "price_input_per_mtok: -1",
            "price_input_per_mtok: expected a number of at least 0 (or leave the field out), got -1",
        ),
        ("request_timeout_s: 0", "request_timeout_s: expected a number greater than 0, got 0"),
        ("model: ''", 'model: expected a non-empty string, got "" (a string)'),
    ],
)
def test_wrong_type_or_range(tmp_path: Path, line: str, expected: str) -> None:
    text = "models:\n" + ENTRY.replace("    model: m\n", "") + f"    {line}\n"
    if not line.startswith("model:"):
        text += "    model: m\n"
    path, message = models_error(tmp_path, text)
    assert message == f"{path}: model 'a' (entry 1): {expected}"


def test_missing_required_field(tmp_path: Path) -> None:
    path, message = models_error(tmp_path, "models:\n  - name: a\n    model: m\n")
    assert message == (
        f"{path}: model 'a' (entry 1): missing required field 'base_url' "
        "(the endpoint's OpenAI-compatible URL, e.g. .../v1)"
    )


def test_every_problem_is_reported_on_its_own_line(tmp_path: Path) -> None:
    path, message = models_error(
        tmp_path, "models:\n  - name: a\n    temperature: 9\n  - name: b\n    modle: x\n"
    )
    lines = message.splitlines()
    assert all(line.startswith(f"{path}: model '") for line in lines)
    assert len(lines) == 6  # a: base_url, model, temperature; b: base_url, model, modle


def test_entry_that_is_not_a_mapping(tmp_path: Path) -> None:
    path, message = models_error(tmp_path, "models:\n  - just-a-name\n")
    assert message.startswith(f"{path}: model entry 1: expected a mapping of fields (name, base_url")
    assert message.endswith("got a string")


def test_duplicate_model_names(tmp_path: Path) -> None:
    path, message = models_error(tmp_path, "models:\n" + ENTRY + ENTRY)
    assert message == (
        f"{path}: model name 'a' is used by entries 1 and 2; names must be unique - rename one"
    )


@pytest.mark.parametrize("url", ["ftp://secret-host/v1", "10.0.0.9:8080/v1", "http:///v1"])
def test_base_url_must_be_http(tmp_path: Path, url: str) -> None:
    path, message = models_error(tmp_path, "models:\n" + ENTRY.replace("http://127.0.0.1:8080/v1", url))
    assert message == (
        f"{path}: model 'a' (entry 1): base_url: must be an http:// or https:// URL with a host, "
        "e.g. http://127.0.0.1:8080/v1"
    )
    assert url not in message


def test_base_url_must_not_include_the_route(tmp_path: Path) -> None:
    text = "models:\n" + ENTRY.replace("/v1", "/v1/chat/completions")
    _, message = models_error(tmp_path, text)
    assert message.endswith("base_url: must stop before /chat/completions (the client appends it)")


def test_base_url_trailing_slash_is_dropped(tmp_path: Path) -> None:
    models, _ = load_models(write(tmp_path, "models:\n" + ENTRY.replace("/v1", "/v1/")))
    assert models[0].base_url == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "my model",
            f"name 'my model' {NAME_RULE}, e.g. 'my-model'",
        ),
        ("''", "name must not be empty"),
        (
            "a/b",
            f"name 'a/b' {NAME_RULE}, e.g. 'a-b'",
        ),
    ],
)
def test_model_names_become_keys(tmp_path: Path, name: str, expected: str) -> None:
    _, message = models_error(tmp_path, "models:\n" + ENTRY.replace("name: a", f"name: {name}"))
    assert message.endswith(expected)


def test_api_key_env_must_be_a_variable_name_and_is_not_echoed(tmp_path: Path) -> None:
    text = "models:\n" + ENTRY + "    api_key_env: sk-proj-abc123\n"
    path, message = models_error(tmp_path, text)
    assert message == (
        f"{path}: model 'a' (entry 1): api_key_env must be the NAME of an environment variable "
        "(letters, digits and '_'), e.g. OPENAI_API_KEY - never the key itself"
    )


def test_min_output_tokens_must_fit_max_tokens(tmp_path: Path) -> None:
    path, message = models_error(tmp_path, "models:\n" + ENTRY + "    max_tokens: 32\n")
    assert message == (
        f"{path}: model 'a' (entry 1): min_output_tokens (64) is larger than max_tokens (32): "
        "every turn would stop as context_exhausted; lower min_output_tokens or raise max_tokens"
    )


def test_single_stop_string_becomes_a_list(tmp_path: Path) -> None:
    models, _ = load_models(write(tmp_path, "models:\n" + ENTRY + "    stop: END\n"))
    assert models[0].stop == ["END"]


def test_models_file_may_be_json(tmp_path: Path) -> None:
    doc = {"models": [{"name": "a", "base_url": "http://h/v1", "model": "m"}]}
    models, _ = load_models(write(tmp_path, json.dumps(doc), "models.json"))
    assert models[0].max_tokens == 512 and models[0].request_timeout_s == 600


# models.yaml: settings


def test_settings_defaults_and_overrides(tmp_path: Path) -> None:
    _, settings = load_models(write(tmp_path, "models:\n" + ENTRY + "settings:\n"))
    assert settings == EvalSettings()
    assert (settings.retry_max_attempts, settings.retry_max_wait_s, settings.retry_initial_s) == (
        6, 300, 1,
    )  # fmt: skip
    assert (settings.retry_max_backoff_s, settings.default_runs, settings.concurrency) == (60, 3, 8)
    text = "models:\n" + ENTRY + "settings:\n  default_runs: 5\n  concurrency: 2\n"
    _, settings = load_models(write(tmp_path, text))
    assert (settings.default_runs, settings.concurrency) == (5, 2)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("  concurency: 2", "settings: unknown field 'concurency' - did you mean 'concurrency'?"),
        ("  retry_max_attempts: 0", "settings: retry_max_attempts: expected an integer of at least 1, got 0"),
        (
            "  default_runs: two",
            'settings: default_runs: expected an integer of at least 1, got "two" (a string)',
        ),
        (
            "  retry_initial_s: 90",
            "settings: retry_initial_s (90) is larger than retry_max_backoff_s (60); "
            "lower one or raise the other",
        ),
    ],
)
def test_settings_errors(tmp_path: Path, block: str, expected: str) -> None:
    path, message = models_error(tmp_path, "models:\n" + ENTRY + "settings:\n" + block + "\n")
    assert message == f"{path}: {expected}"


# ModelEntry behaviour


def entry(**fields: object) -> ModelEntry:
    return ModelEntry.model_validate({"name": "a", "base_url": "http://h/v1", "model": "m", **fields})


def test_api_key_reads_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_KEY", " sk-123 \n")
    assert entry(api_key_env="SB_TEST_KEY").api_key() == "sk-123"
    assert entry().api_key() is None


@pytest.mark.parametrize(("value", "state"), [(None, "is not set"), ("  ", "is empty")])
def test_api_key_missing_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str | None, state: str
) -> None:
    if value is None:
        monkeypatch.delenv("SB_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("SB_TEST_KEY", value)
    with pytest.raises(ConfigError) as info:
        entry(api_key_env="SB_TEST_KEY").api_key()
    assert str(info.value) == (
        f"config/models.yaml: model 'a': environment variable SB_TEST_KEY (api_key_env) {state}. "
        "Set it, e.g. `export SB_TEST_KEY=...`, or remove api_key_env for an endpoint without "
        "authentication."
    )


def test_api_key_error_names_the_file_it_was_loaded_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SB_TEST_KEY", raising=False)
    path = write(tmp_path, "models:\n" + ENTRY + "    api_key_env: SB_TEST_KEY\n")
    models, _ = load_models(path)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: model 'a': environment variable")):
        models[0].api_key()


def test_fingerprint_holds_only_what_determines_an_answer() -> None:
    base = entry(temperature=0.5, seed=1, stop=["x"], extra_body={"top_k": 4})
    assert base.fingerprint() == {
        "model": "m", "base_url": "http://h/v1", "temperature": 0.5, "top_p": None,
        "max_tokens": 512, "seed": 1, "stop": ["x"], "extra_body": {"top_k": 4},
    }  # fmt: skip
    same = entry(
        temperature=0.5, seed=1, stop=["x"], extra_body={"top_k": 4}, api_key_env="K",
        price_input_per_mtok=1.0, max_concurrency=3, request_timeout_s=5.0, context_window=999,
    )  # fmt: skip
    assert same.fingerprint() == base.fingerprint()
    assert entry(temperature=0.6).fingerprint() != entry(temperature=0.5).fingerprint()


def test_generation_params_leave_out_unset_values_and_vary_the_seed_per_run() -> None:
    assert entry().generation_params() == {"max_tokens": 512}
    full = entry(temperature=0.7, top_p=0.9, seed=1234, stop="END", extra_body={"top_k": 40})
    params = full.generation_params(run_index=2)
    assert params == {
        "max_tokens": 512, "temperature": 0.7, "top_p": 0.9, "seed": 1236,
        "stop": ["END"], "extra_body": {"top_k": 40},
    }  # fmt: skip
    params["extra_body"]["top_k"] = 1
    assert full.extra_body == {"top_k": 40}
    assert full.seed_for_run(0) == 1234 and entry().seed_for_run(3) is None


def test_cost_needs_both_prices() -> None:
    priced = entry(price_input_per_mtok=3.0, price_output_per_mtok=15.0)
    assert priced.cost_usd(1_000_000, 2_000) == pytest.approx(3.03)
    assert entry(price_input_per_mtok=3.0).cost_usd(10, 10) is None


def test_model_entry_is_frozen_and_hashable() -> None:
    one = entry(extra_body={"a": 1})
    with pytest.raises(ValidationError):
        one.max_tokens = 5  # type: ignore[misc]
    assert len({one, entry(extra_body={"a": 1})}) == 1


# prompts.json


def test_missing_prompts_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    with pytest.raises(ConfigError) as info:
        load_prompts(path)
    assert str(info.value).startswith(f"{path}: prompts file not found")
    assert "config/prompts.json" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 'the file is empty; it needs {"sequences": [...]}'),
        (
            '{"sequences": [\n  {"name": "s",}\n]}',
            "invalid JSON at line 2, column 16: Expecting property name enclosed in double quotes "
            "(JSON allows no comments and no trailing commas)",
        ),
        ('{"sequences": [], "sequences": []}', 'duplicate key "sequences" in one object'),
        ("[]", 'the top level must be an object with a "sequences" list, got an empty list'),
        ('{"sequences": []}', "sequences: expected a non-empty list of sequences, got an empty list"),
        ('{"sequence": []}', "missing required field 'sequences' (the prompt sequences)"),
    ],
)
def test_prompts_file_shape(tmp_path: Path, text: str, expected: str) -> None:
    path, message = prompts_error(tmp_path, text)
    assert message.startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        (
            seq(turns=[]),
            "sequence 's' (entry 1): turns: expected a non-empty list of turns, got an empty list",
        ),
        (
            seq(turns=[{"name": "t", "text": " \n"}]),
            "sequence 's' (entry 1), turn 't' (turn 1): text: must not be empty",
        ),
        (
            seq(turns=[{"name": "t"}]),
            "sequence 's' (entry 1), turn 't' (turn 1): missing required field 'text' "
            "(what the user says this turn)",
        ),
        (
            seq(turns=[{"name": "t", "text": "x", "txt": "y"}]),
            "sequence 's' (entry 1), turn 't' (turn 1): unknown field 'txt' - did you mean 'text'?",
        ),
        (
            seq(turns=["hello"]),
            "sequence 's' (entry 1), turn 1: expected a mapping of fields (name, text), got a string",
        ),
        (
            seq(turns=[{"name": "t", "text": 5}]),
            "sequence 's' (entry 1), turn 't' (turn 1): text: expected a string, got 5",
        ),
        (
            seq(system=""),
            "sequence 's' (entry 1): system: must not be empty; leave the field out for no system prompt",
        ),
        (seq(sytem="be kind"), "sequence 's' (entry 1): unknown field 'sytem' - did you mean 'system'?"),
        (
            seq(name="two words"),
            f"sequence 'two words' (entry 1): name 'two words' {NAME_RULE}, e.g. 'two-words'",
        ),
        (
            seq(turns=[{"name": "t", "text": "a"}, {"name": "t", "text": "b"}]),
            "sequence 's' (entry 1): turn name 't' is used by turns 1 and 2; "
            "names must be unique in a sequence - rename one",
        ),
    ],
)
def test_sequence_errors(tmp_path: Path, sequence: dict[str, object], expected: str) -> None:
    path, message = prompts_error(tmp_path, prompts_doc(sequence))
    assert message == f"{path}: {expected}"


def test_duplicate_sequence_names(tmp_path: Path) -> None:
    path, message = prompts_error(tmp_path, prompts_doc(seq(), seq()))
    assert message == (
        f"{path}: sequence name 's' is used by entries 1 and 2; names must be unique - rename one"
    )


def test_content_hash_is_sha256_of_canonical_system_and_turns(tmp_path: Path) -> None:
    doc = seq("story", [{"name": "premise", "text": "Once"}], system="Be brief.", description="d")
    (loaded,) = load_prompts(write(tmp_path, prompts_doc(doc), "prompts.json"))
    canonical = '{"system":"Be brief.","turns":[{"name":"premise","text":"Once"}]}'
    assert loaded.content_hash == hashlib.sha256(canonical.encode()).hexdigest()

    def variant(**changes: object) -> str:
        data = {"name": "story", "system": "Be brief.", "turns": [PromptTurn(name="premise", text="Once")]}
        return Sequence.model_validate({**data, **changes}).content_hash

    assert variant() == loaded.content_hash
    assert variant(name="renamed", description="other") == loaded.content_hash
    assert variant(system=None) != loaded.content_hash
    assert variant(turns=[PromptTurn(name="premise", text="Once.")]) != loaded.content_hash
    assert variant(turns=[PromptTurn(name="opening", text="Once")]) != loaded.content_hash


# select


def test_select_keeps_all_or_the_named_in_order() -> None:
    items = [entry(), entry(name="b"), entry(name="c")]
    assert select(items, None, "model", "config/models.yaml") == items
    chosen = select(items, " c, a ,c,", "model", "config/models.yaml")
    assert [m.name for m in chosen] == ["c", "a"]


def test_select_names_unknown_items_and_lists_valid_ones() -> None:
    items = [entry(name="gpt-4o"), entry(name="smollm2-local")]
    with pytest.raises(ConfigError) as info:
        select(items, "gpt4o,nope", "model", "config/models.yaml")
    assert str(info.value) == (
        "unknown model 'gpt4o' - did you mean 'gpt-4o'?\n"
        "unknown model 'nope'\n"
        "models defined in config/models.yaml: gpt-4o, smollm2-local"
    )
    with pytest.raises(ConfigError, match="no sequence names given"):
        select(items, " , ", "sequence", "config/prompts.json")
