"""`storybench-eval judge` as a user meets it, with the judge endpoint mocked at the HTTP
transport (respx) and the in-memory store: what is stored, what is sent, what is skipped."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import click
import httpx
import respx
from click.testing import CliRunner

from evaluator.judge.cli import judge_command
from evaluator.judge.rubric import load_rubric
from evaluator.records import sequence_run_id
from tests.judge.conftest import (
    EXP,
    JUDGE_BASE,
    REPO,
    RUN_ID,
    SYSTEM,
    ObservedStore,
    criteria_of,
    flat,
    good_judge,
    invoke,
    judge_args,
    models_yaml,
    no_storybench_server,
    rubric_file,
    sse_text,
    verdict,
)

CHAT = f"{JUDGE_BASE}/chat/completions"
VERSION = load_rubric(REPO / "config" / "rubric.json").version_id
RESPONSE_IDS = [f"{EXP}:writer:lighthouse:r0:t{t}" for t in range(3)] + [f"{EXP}:writer:lighthouse:r1:t0"]
SEQUENCE_ID = sequence_run_id(EXP, "writer", "lighthouse", 0)


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


@respx.mock
def test_scores_are_stored_once_per_target_with_the_judge_and_rubric_version(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=good_judge)
    result = invoke(*judge_args(tmp_path))
    assert result.exit_code == 0, result.output

    assert route.call_count == 5  # 4 ok turns + 1 complete sequence run
    assert sorted(memory_store.evals) == sorted(f"{t}|judge|{VERSION}" for t in [*RESPONSE_IDS, SEQUENCE_ID])
    rubric = load_rubric(REPO / "config" / "rubric.json")
    for doc in memory_store.evals.values():
        kind = doc["target_kind"]
        assert doc["judge_model"] == "judge" and doc["rubric_version"] == VERSION
        assert doc["scores"] == {c.name: 7 for c in rubric.criteria(kind)}
        assert doc["rationale"] == "Consistent and vivid."
        assert doc["run_id"] == RUN_ID
        assert doc["details"]["judge_model_id"] == "judge-1" and doc["details"]["attempts"] == 1
    assert memory_store.evals[f"{SEQUENCE_ID}|judge|{VERSION}"]["target_kind"] == "sequence"

    out = flat(result.output)
    assert "4 to judge" not in out and "5 to judge" in out
    assert "not judged (response): 1 x turn outcome empty" in out
    assert "not judged (sequence): 1 x sequence run incomplete" in out


@respx.mock
def test_requests_are_deterministic_structured_and_carry_the_context(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=good_judge)
    assert invoke(*judge_args(tmp_path, "--kind", "response", "--concurrency", "1")).exit_code == 0
    sent = bodies(route)
    assert all(b["temperature"] == 0 and b["seed"] == 1234 and b["model"] == "judge-1" for b in sent)
    assert all(b["max_tokens"] == 512 and b["stream"] is True for b in sent)
    fmt = sent[0]["response_format"]
    assert fmt["type"] == "json_object"
    scores = fmt["schema"]["properties"]["scores"]
    assert scores["required"] == ["instruction_following", "continuity", "prose", "creativity"]
    assert scores["properties"]["prose"] == {"type": "integer", "enum": list(range(1, 11))}

    third = next(b for b in sent if "turn 3 of 3" in b["messages"][-1]["content"])
    assert third["messages"][0]["role"] == "system"
    prompt = third["messages"][-1]["content"]
    # The two earlier turns of the same run as context, then the judged turn's request and answer.
    assert "Answer 1 of run 0" in prompt and "Answer 2 of run 0" in prompt and "Answer 3 of run 0" in prompt
    assert prompt.index("Answer 2 of run 0") < prompt.index("Retell the story as a ballad.")
    assert SYSTEM in prompt and "Answer 1 of run 1" not in prompt
    first = next(b for b in sent if "turn 1 of 3" in b["messages"][-1]["content"])
    assert "(none: this is the first turn)" in first["messages"][-1]["content"]


@respx.mock
def test_a_second_judge_run_makes_no_model_calls(memory_store: ObservedStore, tmp_path: Path) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=good_judge)
    assert invoke(*judge_args(tmp_path)).exit_code == 0
    calls, saved = route.call_count, dict(memory_store.evals)

    again = invoke(*judge_args(tmp_path))
    assert again.exit_code == 0, again.output
    assert route.call_count == calls  # everything is judged: nothing is sent
    assert memory_store.evals == saved
    assert "0 to judge, 5 already judged" in flat(again.output)


@respx.mock
def test_an_edited_rubric_judges_afresh_and_keeps_the_old_judgements(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=good_judge)
    assert invoke(*judge_args(tmp_path)).exit_code == 0
    edited = rubric_file(tmp_path, seed=99)
    assert invoke(*judge_args(tmp_path, rubric=edited)).exit_code == 0
    assert route.call_count == 10
    versions = {d["rubric_version"] for d in memory_store.evals.values()}
    assert versions == {VERSION, load_rubric(edited).version_id} and len(memory_store.evals) == 10


@respx.mock
def test_invalid_json_is_retried_once_then_counted_failed_and_not_stored(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=lambda req: sse_text("I think it is quite good, maybe 8."))
    result = invoke(*judge_args(tmp_path, "--model", "writer", "--kind", "sequence"))
    assert result.exit_code == 3, result.output
    assert route.call_count == 2  # the answer, then one retry
    assert memory_store.evals == {}
    first, retry = bodies(route)
    assert retry["seed"] == first["seed"] + 1  # and the prompt says what was wrong:
    assert retry["messages"][-1]["content"].startswith(first["messages"][-1]["content"])
    assert "could not be used: no JSON object in the answer" in retry["messages"][-1]["content"]
    out = flat(result.output)
    assert "no valid judgement in two answers" in out and "failed and were not stored" in out


@respx.mock
def test_an_invalid_answer_followed_by_a_valid_one_is_stored(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    answers = iter(["```json\n{not json at all}\n```"])

    def judge(request: httpx.Request) -> httpx.Response:
        try:
            return sse_text(next(answers))
        except StopIteration:
            return good_judge(request)

    respx.post(CHAT).mock(side_effect=judge)
    result = invoke(*judge_args(tmp_path, "--kind", "sequence"))
    assert result.exit_code == 0, result.output
    (doc,) = memory_store.evals.values()
    assert doc["details"]["attempts"] == 2 and "no JSON object" in doc["details"]["retried_after"]
    assert doc["details"]["seed"] == 1235


@respx.mock
def test_an_out_of_range_score_is_rejected(memory_store: ObservedStore, tmp_path: Path) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(
        side_effect=lambda req: sse_text(verdict(criteria_of(json.loads(req.content)), score=11))
    )
    result = invoke(*judge_args(tmp_path, "--kind", "sequence"))
    assert result.exit_code == 3
    assert route.call_count == 2 and memory_store.evals == {}
    assert "coherence = 11 is outside its scale 1-10" in flat(result.output)


@respx.mock
def test_429_with_retry_after_is_honoured_through_the_client(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    answers = iter([httpx.Response(429, headers={"retry-after": "0.4"}, json={"error": {"message": "slow"}})])

    def judge(request: httpx.Request) -> httpx.Response:
        try:
            return next(answers)
        except StopIteration:
            return good_judge(request)

    route = respx.post(CHAT).mock(side_effect=judge)
    started = time.monotonic()
    result = invoke(*judge_args(tmp_path, "--kind", "sequence"))
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 0.4
    assert route.call_count == 2
    (doc,) = memory_store.evals.values()
    assert doc["details"]["attempts"] == 2


@respx.mock
def test_401_stops_judging_without_sending_the_rest(memory_store: ObservedStore, tmp_path: Path) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(
        return_value=httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})
    )
    result = invoke(*judge_args(tmp_path, "--concurrency", "1"))
    assert result.exit_code == 3
    assert route.call_count == 1 and memory_store.evals == {}
    out = flat(result.output)
    assert "Incorrect API key provided" in out and "5 judgement(s) failed" in out


@respx.mock
def test_dry_run_makes_no_calls_and_stores_nothing(memory_store: ObservedStore, tmp_path: Path) -> None:
    route = respx.route(host="judge.test")
    result = invoke(*judge_args(tmp_path, "--dry-run"))
    assert result.exit_code == 0, result.output
    assert route.call_count == 0 and memory_store.evals == {} and memory_store.saves == 0
    out = flat(result.output)
    assert "dry run: nothing sent" in out and "responses" in out and "sequence runs" in out
    assert "2,048" in out  # completion tokens (max): 4 responses x 512


@respx.mock
def test_latest_filters_and_selection_errors(memory_store: ObservedStore, tmp_path: Path) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=good_judge)
    args = judge_args(tmp_path)[1:]  # without RUN_ID
    assert invoke("--latest", *args, "--sequence", "lighthouse", "--kind", "response").exit_code == 0
    assert route.call_count == 4

    both = invoke(RUN_ID, "--latest", *args)
    assert both.exit_code == 2 and "give a RUN_ID or --latest" in both.output
    neither = invoke(*args)
    assert neither.exit_code == 2

    unknown = invoke(*judge_args(tmp_path, "--model", "writr"))
    assert unknown.exit_code == 2
    assert "no model 'writr' - did you mean 'writer'?" in flat(unknown.output)
    missing = invoke("nope", *args)
    assert missing.exit_code == 1 and "no run 'nope'" in missing.output
    prefix = invoke(RUN_ID[:10], *args, "--kind", "response")  # a unique prefix works like the id
    assert prefix.exit_code == 0 and route.call_count == 4  # and these are all judged already


def test_judge_option_errors_name_the_source(memory_store: ObservedStore, tmp_path: Path) -> None:
    bad = invoke(*judge_args(tmp_path, "--judge", "jugde"))
    assert bad.exit_code == 2 and "--judge" in bad.output and "did you mean 'judge'?" in flat(bad.output)
    from_rubric = invoke(*judge_args(tmp_path, rubric=rubric_file(tmp_path, judge="nobody")))
    assert from_rubric.exit_code == 2 and "rubric.json: judge: unknown model 'nobody'" in flat(
        from_rubric.output
    )


@respx.mock
def test_the_judge_defaults_to_the_rubrics_then_the_first_model(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    respx.get("http://other.test/storybench/models").mock(return_value=httpx.Response(404))
    other = respx.post("http://other.test/v1/chat/completions").mock(side_effect=good_judge)
    rubric = rubric_file(tmp_path, judge="other")
    result = invoke(*judge_args(tmp_path, "--kind", "sequence", rubric=rubric))
    assert result.exit_code == 0, result.output
    assert other.call_count == 1
    (doc,) = memory_store.evals.values()
    assert doc["judge_model"] == "other"


def test_a_missing_judge_key_names_the_variable(memory_store: ObservedStore, tmp_path: Path) -> None:
    models = models_yaml(tmp_path, api_key_env="STORYBENCH_JUDGE_KEY")
    result = invoke(*judge_args(tmp_path, models=models), env={"STORYBENCH_JUDGE_KEY": ""})
    assert result.exit_code == 2 and "STORYBENCH_JUDGE_KEY" in result.output
    assert isinstance(result.exception, SystemExit)  # the message and exit code, not a crash


@respx.mock
def test_an_api_key_is_sent_but_never_stored_or_printed(memory_store: ObservedStore, tmp_path: Path) -> None:
    key = "sk-judge-canary-0123456789"
    no_storybench_server()
    answers = iter([httpx.Response(400, json={"error": {"message": f"bad request for key {key}"}})])

    def judge(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {key}"
        try:
            return next(answers)
        except StopIteration:
            return good_judge(request)

    respx.post(CHAT).mock(side_effect=judge)
    models = models_yaml(tmp_path, api_key_env="STORYBENCH_JUDGE_KEY")
    result = invoke(
        *judge_args(tmp_path, "--concurrency", "1", models=models), env={"STORYBENCH_JUDGE_KEY": key}
    )
    assert result.exit_code == 3  # the first judgement failed (400), the rest were stored
    assert key not in result.output and "bad request for key ***" in flat(result.output)
    assert len(memory_store.evals) == 4 and key not in json.dumps(
        list(memory_store.evals.values()), default=str
    )


@respx.mock
def test_a_store_failure_stops_judging_with_exit_1(memory_store: ObservedStore, tmp_path: Path) -> None:
    from evaluator.store import StoreUnavailableError

    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=good_judge)
    memory_store.fail_saves_with = StoreUnavailableError("the database at x stopped answering")
    result = invoke(*judge_args(tmp_path, "--concurrency", "1"))
    assert result.exit_code == 1
    assert "stopped answering" in result.output and route.call_count == 1


@respx.mock
def test_ctrl_c_keeps_what_was_judged_and_exits_130(memory_store: ObservedStore, tmp_path: Path) -> None:
    no_storybench_server()
    calls = {"n": 0}

    def judge(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 3:  # the user presses Ctrl-C while the third judgement is on its way
            signal.raise_signal(signal.SIGINT)
        return good_judge(request)

    respx.post(CHAT).mock(side_effect=judge)
    result = invoke(*judge_args(tmp_path, "--concurrency", "1"))
    assert result.exit_code == 130, result.output
    kept = len(memory_store.evals)
    assert 2 <= kept < 5 and "re-run the same command" in flat(result.output)
    respx.post(CHAT).mock(side_effect=good_judge)
    resumed = invoke(*judge_args(tmp_path))
    assert resumed.exit_code == 0 and f"{5 - kept} to judge, {kept} already judged" in flat(resumed.output)
    assert len(memory_store.evals) == 5


def test_unreachable_database_fails_fast_before_any_model_request(tmp_path: Path) -> None:
    with respx.mock:
        route = respx.route(host="judge.test")
        started = time.monotonic()
        result = invoke(
            *judge_args(tmp_path), "--mongo-uri", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1000"
        )
    assert time.monotonic() - started < 15
    assert result.exit_code == 1 and "127.0.0.1:9" in result.output
    assert route.call_count == 0


def test_the_command_registers_on_a_group_and_explains_itself() -> None:
    group = click.Group("storybench-eval")
    group.add_command(judge_command)
    result = CliRunner().invoke(group, ["judge", "--help"])
    assert result.exit_code == 0
    for option in ("--latest", "--model", "--sequence", "--judge", "--rubric", "--concurrency", "--dry-run"):
        assert option in result.output
