"""Reasoning models (OpenAI o-series, gpt-5): the config switch, the request body checked at the
HTTP transport (respx), reasoning tokens stored and priced once; and `run --limit N`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import respx
from click.testing import CliRunner

from evaluator.cli import cli
from evaluator.client import read_usage, wire_params
from evaluator.config import ConfigError, EvalSettings, ModelEntry, PromptTurn, Sequence, load_models
from evaluator.endpoint import Endpoint
from evaluator.evaluate import Evaluation, evaluate
from evaluator.plan import build_plan
from evaluator.runner import Runner
from evaluator.store import Store
from tests.judge.reasoning_stream import reasoning_sse
from tests.support.memory_store import memory_store
from tests.support.sse import sse

BASE = "http://hosted.test/v1"
CHAT = f"{BASE}/chat/completions"
FAST_SETTINGS = EvalSettings(retry_max_attempts=2, retry_initial_s=0.01, retry_max_backoff_s=0.02)


def reasoner(**kw: Any) -> ModelEntry:
    fields: dict[str, Any] = {
        "name": "o-mini",
        "base_url": BASE,
        "model": "o4-mini",
        "reasoning": True,
        "reasoning_effort": "low",
        "max_tokens": 4000,
        "seed": 7,
        "min_output_tokens": 16,
        "price_input_per_mtok": 1.0,
        "price_output_per_mtok": 4.0,
    }
    fields.update(kw)
    return ModelEntry(**fields)


def saga(n_turns: int = 2, name: str = "saga") -> Sequence:
    return Sequence(
        name=name,
        system="You are a novelist.",
        turns=[PromptTurn(name=f"t{i}", text=f"Write part {i} of the story.") for i in range(n_turns)],
    )


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


def stored(store: Store) -> list[dict[str, Any]]:
    return sorted(store.db["responses"].find({}), key=lambda d: (d["run_index"], d["turn_index"]))


def play(entry: ModelEntry, store: Store, n_turns: int = 2) -> None:
    from evaluator.client import RetryPolicy

    policy = RetryPolicy(max_attempts=2, max_total_wait_s=5, initial_backoff_s=0.01, max_backoff_s=0.02)
    runner = Runner(build_plan([entry], [saga(n_turns)], 1), store, "run-r", {}, policy, 4)
    asyncio.run(runner.run())


# -- the config switch ------------------------------------------------------------------------


def write_models(tmp_path: Path, entry: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  - name: o-mini\n    base_url: {BASE}\n    model: o4-mini\n{entry}")
    return path


@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_sampling_parameters_on_a_reasoning_entry_are_an_error_naming_the_field_and_the_fix(
    tmp_path: Path, field: str
) -> None:
    path = write_models(tmp_path, f"    reasoning: true\n    {field}: 0.5\n")
    with pytest.raises(ConfigError) as caught:
        load_models(path)
    assert str(caught.value) == (
        f"{path}: model 'o-mini' (entry 1): {field}: a reasoning model (reasoning: true) takes no "
        f"{field}; remove {field}, or set reasoning: false if this model samples"
    )


def test_reasoning_effort_needs_a_reasoning_entry_and_a_known_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_models(write_models(tmp_path, "    reasoning_effort: low\n"))
    assert "reasoning_effort is only sent to reasoning models; add reasoning: true" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_models(write_models(tmp_path, "    reasoning: true\n    reasoning_effort: extreme\n"))
    assert "reasoning_effort" in str(caught.value) and "'minimal'" in str(caught.value)
    models, _ = load_models(write_models(tmp_path, "    reasoning: true\n    reasoning_effort: minimal\n"))
    assert models[0].reasoning and models[0].reasoning_effort == "minimal"


def test_the_reasoning_switch_joins_the_fingerprint_only_when_on() -> None:
    plain = ModelEntry(name="m", base_url=BASE, model="gpt-4.1-mini", max_tokens=300)
    assert "reasoning" not in plain.fingerprint()  # results stored before the switch keep their hash
    low, high = reasoner(), reasoner(reasoning_effort="high")
    assert low.fingerprint()["reasoning"] is True
    assert low.fingerprint() != high.fingerprint()  # another effort is another experiment


def test_generation_params_name_the_reasoning_limit_and_effort() -> None:
    assert reasoner().generation_params(2) == {
        "max_completion_tokens": 4000,
        "reasoning_effort": "low",
        "seed": 9,
    }
    plain = ModelEntry(name="m", base_url=BASE, model="m", temperature=0.7, max_tokens=300)
    assert plain.generation_params() == {"max_tokens": 300, "temperature": 0.7}


def test_wire_params_sends_the_budget_cap_as_max_completion_tokens() -> None:
    capped = {"max_completion_tokens": 4000, "max_tokens": 900, "temperature": 0.3, "top_p": 1, "seed": 1}
    assert wire_params(capped) == {"max_completion_tokens": 900, "seed": 1}
    plain = {"max_tokens": 900, "temperature": 0.3}
    assert wire_params(plain) == plain


# -- the request body and what is stored (respx at the transport) -----------------------------


@respx.mock
def test_a_reasoning_turn_sends_max_completion_tokens_and_effort_and_no_sampling() -> None:
    route = respx.post(CHAT).mock(
        side_effect=lambda req: reasoning_sse(
            "The keeper climbs.", prompt_tokens=1000, completion_tokens=700, reasoning_tokens=640
        )
    )
    store = memory_store()
    # The context window caps the answer: the cap must arrive as max_completion_tokens.
    play(reasoner(context_window=3000), store)

    sent = bodies(route)
    assert len(sent) == 2
    for body in sent:
        assert body["reasoning_effort"] == "low" and body["seed"] == 7
        assert 0 < body["max_completion_tokens"] < 3000
        assert not {"max_tokens", "temperature", "top_p"} & set(body)
    docs = stored(store)
    assert [d["outcome"] for d in docs] == ["ok", "ok"]
    first = docs[0]
    assert first["max_tokens_sent"] == sent[0]["max_completion_tokens"]
    assert first["params"] == {
        "max_completion_tokens": sent[0]["max_completion_tokens"],
        "reasoning_effort": "low",
        "seed": 7,
    }
    assert first["reasoning_tokens"] == 640
    assert first["completion_tokens"] == 700  # OpenAI's count already holds the reasoning
    # 1000 prompt tokens at $1/M + 700 completion tokens (reasoning included once) at $4/M
    assert first["cost_usd"] == pytest.approx((1000 * 1.0 + 700 * 4.0) / 1e6)


@respx.mock
def test_reasoning_reported_apart_from_completion_tokens_is_priced_as_output_once() -> None:
    respx.post(CHAT).mock(
        side_effect=lambda req: reasoning_sse(
            "The keeper climbs.", prompt_tokens=1000, completion_tokens=60, reasoning_tokens=640, apart=True
        )
    )
    store = memory_store()
    play(reasoner(), store, n_turns=1)
    (doc,) = stored(store)
    assert doc["reasoning_tokens"] == 640 and doc["completion_tokens"] == 700
    assert doc["cost_usd"] == pytest.approx((1000 * 1.0 + 700 * 4.0) / 1e6)


def test_read_usage_keeps_openais_meaning() -> None:
    class Details:
        reasoning_tokens = 30

    class Usage:
        prompt_tokens, completion_tokens, total_tokens = 10, 50, 60
        completion_tokens_details = Details()

    usage = read_usage(Usage())
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens) == (10, 50, 30)
    Usage.total_tokens = 90  # a gateway that counts the reasoning beside the answer
    assert read_usage(Usage()).completion_tokens == 80
    assert read_usage(None).completion_tokens is None


@respx.mock
def test_an_ordinary_entry_still_sends_max_tokens_and_its_temperature() -> None:
    route = respx.post(CHAT).mock(side_effect=lambda req: sse("An answer."))
    store = memory_store()
    play(ModelEntry(name="m", base_url=BASE, model="m-1", temperature=0.7, max_tokens=80), store, 1)
    (body,) = bodies(route)
    assert body["max_tokens"] == 80 and body["temperature"] == 0.7
    assert "max_completion_tokens" not in body and "reasoning_effort" not in body
    assert stored(store)[0]["reasoning_tokens"] is None


# -- run --limit N ----------------------------------------------------------------------------


def test_limit_keeps_the_first_conversations_in_plan_order() -> None:
    a, b = reasoner(name="a"), reasoner(name="b")
    plan = build_plan([a, b], [saga(2, "s1"), saga(3, "s2")], runs=2, limit=3)
    assert [(i.model.name, i.sequence.name, i.run_index) for i in plan.items] == [
        ("a", "s1", 0),
        ("a", "s1", 1),
        ("a", "s2", 0),
    ]
    assert [m.name for m in plan.models] == ["a"]  # b plays nothing: it is not in the plan
    assert plan.total_turns == 2 + 2 + 3
    assert len(build_plan([a, b], [saga(2, "s1")], runs=2).items) == 4  # no limit: everything
    with pytest.raises(ValueError):
        build_plan([a], [saga()], runs=1, limit=0)


@respx.mock
def test_run_limit_2_plays_two_conversations_and_the_snapshot_says_so() -> None:
    route = respx.post(CHAT).mock(side_effect=lambda req: sse("An answer."))
    entry = ModelEntry(name="m", base_url=BASE, model="m-1", max_tokens=50, min_output_tokens=16)
    chosen = Evaluation([entry], [saga(2)], FAST_SETTINGS, runs=3, concurrency=2, heartbeat_s=60, limit=2)
    store = memory_store()
    result = evaluate(store, chosen, {"m": Endpoint(entry)})

    assert result.exit_code == 0 and route.call_count == 4  # 2 conversations x 2 turns
    assert sorted({d["run_index"] for d in stored(store)}) == [0, 1]
    run = store.get_run(result.run_id)
    assert run is not None and run.config_snapshot["limit"] == 2 and run.planned_turns == 4
    assert run.status == "completed"


def test_run_limit_on_the_command_line_shows_in_the_dry_run(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  - name: m\n    base_url: {BASE}\n    model: m-1\n    max_tokens: 100\n")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"sequences": [saga(2).model_dump(exclude_none=True)]}))
    args = ["run", "--config", str(models), "--prompts", str(prompts), "--runs", "3", "--dry-run"]
    full = CliRunner().invoke(cli, args, catch_exceptions=False)
    limited = CliRunner().invoke(cli, [*args, "--limit", "2"], catch_exceptions=False)
    assert full.exit_code == limited.exit_code == 0
    assert "= 6 requests" in " ".join(full.output.split())
    assert "= 4 requests" in " ".join(limited.output.split())
    refused = CliRunner().invoke(cli, [*args, "--limit", "0"])
    assert refused.exit_code == 2 and "--limit" in refused.output


def test_the_shipped_reasoning_examples_are_reasoning_entries(tmp_path: Path) -> None:
    import re

    shipped = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
    lines = shipped.read_text(encoding="utf-8").splitlines()
    examples = [line[:2] + line[4:] for line in lines if re.match(r"^  # (- |  +[a-z_]+:)", line)]
    path = tmp_path / "examples.yaml"
    path.write_text("models:\n" + "\n".join(examples) + "\n")
    models, _ = load_models(path)
    reasoning = {m.name: m for m in models if m.reasoning}
    assert sorted(reasoning) == ["gpt-5-mini", "o4-mini"]
    for entry in reasoning.values():
        params = entry.generation_params()
        assert "max_completion_tokens" in params and params["reasoning_effort"]
        assert entry.temperature is None and entry.top_p is None
