"""`storybench-eval run` as a user meets it: the plan, clear errors, nothing sent when it must not be."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
import respx
from click.testing import CliRunner

from evaluator.cli import cli
from evaluator.endpoint import EndpointError, probe

MODELS = """
models:
  - name: hosted
    base_url: http://hosted.test/v1
    model: m-1
    api_key_env: STORYBENCH_TEST_KEY
    max_tokens: 100
    min_output_tokens: 16
    price_input_per_mtok: 1.0
    price_output_per_mtok: 2.0
"""

PROMPTS = {
    "sequences": [
        {
            "name": "lighthouse",
            "system": "You are a novelist.",
            "turns": [
                {"name": "premise", "text": "A keeper finds a key."},
                {"name": "scene", "text": "The key opens a door."},
                {"name": "poem", "text": "Retell it as a poem."},
            ],
        }
    ]
}


def write_configs(tmp_path: Path, models: str = MODELS) -> tuple[Path, Path]:
    models_path = tmp_path / "models.yaml"
    prompts_path = tmp_path / "prompts.json"
    models_path.write_text(models)
    prompts_path.write_text(json.dumps(PROMPTS))
    return models_path, prompts_path


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@respx.mock
def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    route = respx.route(host="hosted.test")
    models, prompts = write_configs(tmp_path)
    result = invoke(
        "run", "--config", str(models), "--prompts", str(prompts), "--runs", "2", "--dry-run",
        env={"STORYBENCH_TEST_KEY": "sk-test"},
    )
    assert result.exit_code == 0, result.output
    assert "1 model(s) x 1 sequence(s) (3 turns) x 2 run(s) = 6 requests" in result.output
    assert "hosted" in result.output and "$" in result.output  # a cost estimate from the prices
    assert route.call_count == 0


def test_missing_api_key_names_the_variable_and_exits_cleanly(tmp_path: Path) -> None:
    models, prompts = write_configs(tmp_path)
    result = invoke(
        "run", "--config", str(models), "--prompts", str(prompts), "--dry-run",
        env={"STORYBENCH_TEST_KEY": ""},
    )
    assert result.exit_code == 2
    assert "STORYBENCH_TEST_KEY" in result.output
    assert "Traceback" not in result.output


def test_broken_config_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    models, prompts = write_configs(tmp_path, MODELS.replace("max_tokens", "max_tokenz"))
    result = invoke("run", "--config", str(models), "--prompts", str(prompts), "--dry-run")
    assert result.exit_code == 2
    assert "max_tokenz" in result.output and "max_tokens" in result.output
    assert "Traceback" not in result.output


def test_unknown_sequence_selection_lists_the_valid_ones(tmp_path: Path) -> None:
    models, prompts = write_configs(tmp_path)
    result = invoke(
        "run", "--config", str(models), "--prompts", str(prompts), "--sequences", "nope",
        "--dry-run", env={"STORYBENCH_TEST_KEY": "k"},
    )
    assert result.exit_code == 2
    assert "nope" in result.output and "lighthouse" in result.output


@respx.mock
def test_unreachable_database_fails_fast_before_any_model_request(tmp_path: Path) -> None:
    route = respx.route(host="hosted.test").mock(return_value=httpx.Response(500))
    models, prompts = write_configs(tmp_path)
    started = time.monotonic()
    result = invoke(
        "run", "--config", str(models), "--prompts", str(prompts),
        "--mongo-uri", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1000",
        env={"STORYBENCH_TEST_KEY": "k"},
    )
    assert time.monotonic() - started < 15
    assert result.exit_code == 1
    assert "127.0.0.1:9" in result.output
    assert route.call_count == 0


def test_local_server_not_running_says_how_to_start_it(free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}/v1"
    with pytest.raises(EndpointError) as caught:
        asyncio.run(probe(url, "m-1", None))
    assert "make serve" in str(caught.value) and url in str(caught.value)
