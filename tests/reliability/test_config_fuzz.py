"""Property-based fuzzing (hypothesis) of every config loader.

`evaluator.config.load_models` (config/models.yaml), `evaluator.config.load_prompts`
(config/prompts.json) and `server.config.load_config` (config/local_models.json, model files
included): any input yields either a valid config or a ConfigError whose message names the file
(and the field, when one field is wrong); never another exception, never pydantic's raw text,
never a secret. Through the CLIs: exit 0 or 2 and no traceback, and a bad config contacts
neither the model endpoint nor the database.

Inputs: arbitrary text and bytes, arbitrary YAML/JSON documents, and valid configs with random
mutations (a field set to a random value, removed, or an unknown field added). GGUF headers are
fuzzed too (the server reads them while validating its config).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from evaluator.cli import cli as eval_cli
from evaluator.config import (
    ConfigError,
    EvalSettings,
    ModelEntry,
    PromptTurn,
    Sequence,
    load_models,
    load_prompts,
)
from tests.support.servers import model_entry

# Examples per property (the CLI properties run a third); STORYBENCH_FUZZ_CASES raises it, and
# STORYBENCH_FUZZ_RANDOM=1 draws new examples instead of the fixed, reproducible ones.
CASES = int(os.environ.get("STORYBENCH_FUZZ_CASES", "300"))
# What Python prints for an uncaught exception. Not just "Traceback": fuzzed configs may use that
# word as a field name, and the error message rightly names the unknown field.
TRACEBACK = "Traceback (most recent call last)"
FUZZ = settings(
    max_examples=CASES, deadline=None, database=None,
    derandomize=os.environ.get("STORYBENCH_FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
SECRET = "SECRETCANARY"

MARKUP = st.sampled_from(["[/]", "[/bold] x", "[red]", "[link=file:///etc/passwd]x"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=24) | MARKUP,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)

VALID_MODELS: dict[str, Any] = {
    "settings": {"retry_max_attempts": 3, "retry_initial_s": 0.5, "default_runs": 2},
    "models": [
        {"name": "local", "base_url": "http://127.0.0.1:9/v1", "model": "smollm2", "max_tokens": 64,
         "min_output_tokens": 16, "temperature": 0.7, "seed": 1},
        {"name": "hosted", "base_url": "https://api.example.test/v1", "model": "gpt-x",
         "api_key_env": "STORYBENCH_FUZZ_KEY", "stop": ["\n\n"], "extra_body": {"top_k": 20},
         "price_input_per_mtok": 1.0, "price_output_per_mtok": 2.0},
    ],
}  # fmt: skip
VALID_PROMPTS: dict[str, Any] = {
    "description": "fuzz",
    "sequences": [
        {"name": "lighthouse", "system": "You are a novelist.",
         "turns": [{"name": "premise", "text": "A keeper finds a key."},
                   {"name": "poem", "text": "Now a poem."}]},
        {"name": "garden", "turns": [{"name": "one", "text": "Write a scene."}]},
    ],
}  # fmt: skip
FIGURES: dict[str, int] = {}
MARKUP_IN_VALUE = b'models:\n  - {name: m, base_url: "http://127.0.0.1:9/v1", model: x, max_tokens: "[/]"}\n'


@pytest.fixture(scope="module", autouse=True)
def _report(figures: dict[str, Any]) -> Iterator[None]:
    yield
    figures["config_fuzz_cases"] = dict(sorted(FIGURES.items()))


def _count(name: str) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + 1


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], lists: dict[str, list[str]]) -> tuple[Any, str | None]:
    """A deep copy of `base` with 1-3 random edits; returns (doc, the field of a single edit on
    a list item, else None). `lists` maps a list's key to the field names of its items."""
    doc = copy.deepcopy(base)
    edits = draw(st.integers(1, 3))
    touched: str | None = None
    for _ in range(edits):
        where = draw(st.sampled_from([*lists, "top"]))
        if where == "top" or not isinstance(doc.get(where), list) or not doc[where]:
            key = draw(st.sampled_from([*base, "extra"]))
            if draw(st.booleans()):
                doc.pop(key, None)
            else:
                doc[key] = draw(json_values)
            continue
        item = draw(st.sampled_from(doc[where]))
        if not isinstance(item, dict):
            continue
        key = draw(
            st.sampled_from(lists[where]) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,9}", fullmatch=True)
        )
        if draw(st.integers(0, 4)) == 0:
            item.pop(key, None)
        elif key in ("base_url", "extra_body"):
            item[key] = draw(st.sampled_from([f"http://{SECRET}:pw@h/v1", {"k": SECRET}, f"ftp://{SECRET}"]))
        else:
            item[key] = draw(json_values)
        touched = key if edits == 1 else None
    return doc, touched


def _dump(draw: st.DrawFn, doc: Any, yaml_ok: bool) -> str:
    style = draw(st.sampled_from(["yaml", "json"] if yaml_ok else ["json"]))
    if style == "yaml":
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    return json.dumps(doc, ensure_ascii=False)


@st.composite
def file_contents(draw: st.DrawFn, base: dict[str, Any], lists: dict[str, list[str]], yaml_ok: bool) -> Any:
    """(bytes, field touched by a single edit or None)."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "document", "text", "bytes"]))
    if kind == "mutated":
        doc, touched = draw(mutated(base, lists))
        return _dump(draw, doc, yaml_ok).encode("utf-8"), touched
    if kind == "document":
        return _dump(draw, draw(json_values), yaml_ok).encode("utf-8"), None
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8"), None
    return draw(st.binary(max_size=200)), None


MODEL_LISTS = {"models": list(ModelEntry.model_fields)}
PROMPT_LISTS = {"sequences": list(Sequence.model_fields)}


def _check_message(exc: Exception, path: Path, touched: str | None) -> None:
    message = str(exc)
    assert message.strip()
    assert str(path) in message.splitlines()[0], message
    assert "errors.pydantic.dev" not in message and TRACEBACK not in message, message
    assert SECRET not in message, message
    if touched is not None and "\n" not in message:
        assert touched.rstrip("s") in message, (touched, message)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sb-fuzz-") as tmp:
        yield Path(tmp)


@FUZZ
@given(case=file_contents(VALID_MODELS, MODEL_LISTS, yaml_ok=True))
def test_load_models_gives_a_config_or_a_config_error(scratch: Path, case: tuple[bytes, str | None]) -> None:
    raw, touched = case
    path = scratch / "models.yaml"
    path.write_bytes(raw)
    try:
        models, settings_ = load_models(path)
    except ConfigError as exc:
        _count("load_models_errors")
        _check_message(exc, path, touched)
        return
    _count("load_models_valid")
    assert models and all(isinstance(m, ModelEntry) for m in models)
    assert isinstance(settings_, EvalSettings)


@FUZZ
@given(case=file_contents(VALID_PROMPTS, PROMPT_LISTS, yaml_ok=False))
def test_load_prompts_gives_sequences_or_a_config_error(
    scratch: Path, case: tuple[bytes, str | None]
) -> None:
    raw, touched = case
    path = scratch / "prompts.json"
    path.write_bytes(raw)
    try:
        sequences = load_prompts(path)
    except ConfigError as exc:
        _count("load_prompts_errors")
        _check_message(exc, path, touched)
        return
    _count("load_prompts_valid")
    assert sequences and all(isinstance(s, Sequence) and s.turns for s in sequences)
    assert all(isinstance(t, PromptTurn) and t.text.strip() for s in sequences for t in s.turns)


class _Listener:
    """A TCP port that counts connections: stands for the model endpoint and the database."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[_Listener]:
    lst = _Listener()
    yield lst
    lst.sock.close()


@settings(FUZZ, max_examples=max(CASES // 3, 1))
@given(
    models_case=file_contents(VALID_MODELS, MODEL_LISTS, yaml_ok=True),
    prompts_case=file_contents(VALID_PROMPTS, PROMPT_LISTS, yaml_ok=False),
)
# Found by this property: a value shown in the error message was read as console markup.
@example(models_case=(MARKUP_IN_VALUE, "max_tokens"), prompts_case=(json.dumps(VALID_PROMPTS).encode(), None))
def test_the_cli_refuses_a_bad_config_before_contacting_anything(
    scratch: Path,
    listener: _Listener,
    models_case: tuple[bytes, str | None],
    prompts_case: tuple[bytes, str | None],
) -> None:
    models, prompts = scratch / "cli-models.yaml", scratch / "cli-prompts.json"
    # Every endpoint of the fuzzed file points at the listener.
    text = models_case[0].replace(b"127.0.0.1:9", b"127.0.0.1:%d" % listener.port)
    text = text.replace(b"api.example.test", b"127.0.0.1:%d" % listener.port)
    models.write_bytes(text)
    prompts.write_bytes(prompts_case[0])
    try:
        load_models(models)
        load_prompts(prompts)
        return  # a valid pair would start a real run: covered by the fault tests
    except ConfigError:
        pass
    before = listener.connections
    result = CliRunner().invoke(
        eval_cli,
        ["run", "--config", str(models), "--prompts", str(prompts),
         "--mongo-uri", f"mongodb://127.0.0.1:{listener.port}/"],
        env={"STORYBENCH_FUZZ_KEY": "k" * 20},
    )  # fmt: skip
    _count("eval_cli_bad_configs")
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert TRACEBACK not in result.output
    assert str(models) in result.output or str(prompts) in result.output, result.output
    assert listener.connections == before, "a bad config reached the endpoint or the database"


# -- the server's config ------------------------------------------------------------------------


def _server_lists() -> dict[str, list[str]]:
    from server.config import LocalModelEntry as ServerModel

    return {"models": list(ServerModel.model_fields)}


VALID_SERVER: dict[str, Any] = {
    "description": "fuzz", "host": "127.0.0.1", "port": 8080,
    "models": [model_entry("smollm2"), model_entry("alt", n_ctx=1024, enabled=False)],
}  # fmt: skip


GGUF_KEYS = ["general.architecture", "general.name", "general.file_type", "llama.context_length",
             "llama.block_count", "tokenizer.chat_template", "tokenizer.chat_template.tool_use"]  # fmt: skip


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw


@st.composite
def gguf_value(draw: st.DrawFn) -> bytes:
    """A well-formed (type, value) pair of any GGUF type: the key may get an unexpected type."""
    kind = draw(st.sampled_from(["u32", "i32", "f32", "bool", "string", "u64", "array"]))
    if kind == "string":
        return struct.pack("<I", 8) + _gguf_string(
            draw(st.text(max_size=12) | st.sampled_from(["llama", "12"]))
        )
    if kind == "array":
        items = draw(st.lists(st.integers(0, 2**32 - 1), max_size=4))
        return struct.pack("<IIQ", 9, 4, len(items)) + b"".join(struct.pack("<I", i) for i in items)
    code, fmt, values = {
        "u32": (4, "<I", st.integers(0, 2**32 - 1)), "i32": (5, "<i", st.integers(-(2**31), 2**31 - 1)),
        "f32": (6, "<f", st.floats(width=32)), "bool": (7, "<?", st.booleans()),
        "u64": (10, "<Q", st.integers(0, 2**64 - 1)),
    }[kind]  # fmt: skip
    return struct.pack("<I", code) + struct.pack(fmt, draw(values))


@st.composite
def gguf_headers(draw: st.DrawFn) -> bytes:
    """GGUF-looking headers: the right magic, then any version and counts, and keys whose values
    are well-formed but of any type, or raw garbage (lengths up to 2**64 - 1, unknown types)."""
    if draw(st.integers(0, 4)) == 0:
        return b"GGUF" + draw(st.binary(max_size=120))
    out = b"GGUF" + struct.pack("<I", draw(st.sampled_from([3, 3, 3, 2, 1, 2**32 - 1])))
    n = draw(st.integers(0, 6))
    arch = draw(st.booleans())  # most real headers name their architecture first
    out += struct.pack("<QQ", draw(st.integers(0, 2**64 - 1)), n + arch)
    if arch:
        out += _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("llama")
    for _ in range(n):
        key = draw(st.sampled_from(GGUF_KEYS)) if draw(st.integers(0, 3)) else draw(st.text(max_size=20))
        if draw(st.integers(0, 3)):
            out += _gguf_string(key) + draw(gguf_value())
            continue
        raw_key = key.encode("utf-8", "surrogatepass")
        length = draw(st.sampled_from([len(raw_key), 0, 2**63, 2**64 - 1]))
        out += struct.pack("<Q", length) + raw_key + struct.pack("<I", draw(st.integers(0, 14)))
        out += draw(st.binary(max_size=24))
    return out


@st.composite
def server_contents(draw: st.DrawFn, models_dir: Path) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(["mutated", "mutated", "gguf", "document", "text", "bytes"]))
    if kind == "gguf":
        header = models_dir / "fuzz.gguf"
        header.write_bytes(draw(gguf_headers()))
        doc = copy.deepcopy(VALID_SERVER)
        doc["models"][0]["gguf"] = str(header)
        doc["models"][0]["n_ctx"] = draw(st.sampled_from([0, 512]))
        return json.dumps(doc).encode(), None
    if kind == "mutated":
        doc, touched = draw(mutated(VALID_SERVER, _server_lists()))
        for entry in doc.get("models", []) if isinstance(doc.get("models"), list) else []:
            if isinstance(entry, dict) and "gguf" in entry and not isinstance(entry["gguf"], str):
                continue
            if isinstance(entry, dict) and entry.get("gguf") not in (None, model_entry()["gguf"]):
                choices = ["missing.gguf", str(models_dir), str(models_dir / "x.txt"), "bundled:nope"]
                entry["gguf"] = draw(st.sampled_from([*choices, model_entry()["gguf"]]))
        return json.dumps(doc).encode(), touched
    if kind == "document":
        return json.dumps(draw(json_values)).encode(), None
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8"), None
    return draw(st.binary(max_size=200)), None


@pytest.fixture(scope="module")
def models_dir(scratch: Path) -> Path:
    folder = scratch / "server-models"
    folder.mkdir()
    (folder / "x.txt").write_text("not a model")
    # Found by this fuzzing: a string where the context length belongs broke --check (n_ctx 0
    # reads it) with a TypeError.
    kvs = [("general.architecture", "llama"), ("llama.context_length", "many")]
    header = b"".join(_gguf_string(k) + struct.pack("<I", 8) + _gguf_string(v) for k, v in kvs)
    (folder / "typed.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + header)
    return folder


def _typed_gguf_config(models_dir: Path) -> bytes:
    doc = copy.deepcopy(VALID_SERVER)
    doc["models"][0].update(gguf=str(models_dir / "typed.gguf"), n_ctx=0)
    return json.dumps(doc).encode()


def test_server_config_loader_gives_a_config_or_a_config_error(scratch: Path, models_dir: Path) -> None:
    from server.check import check_report
    from server.config import ServerConfig, load_config
    from server.errors import ServerConfigError

    @FUZZ
    @given(case=server_contents(models_dir))
    @example(case=(_typed_gguf_config(models_dir), None))
    def check(case: tuple[bytes, str | None]) -> None:
        raw, touched = case
        path = scratch / "local_models.json"
        path.write_bytes(raw)
        try:
            cfg = load_config(path)
        except ServerConfigError as exc:
            _count("server_config_errors")
            message = str(exc)
            assert str(path) in message.splitlines()[0], message
            assert "errors.pydantic.dev" not in message and TRACEBACK not in message, message
            if touched is not None and "\n  - " in message and message.count("\n  - ") == 1:
                assert touched in message or "models" in message, (touched, message)
            return
        _count("server_config_valid")
        assert isinstance(cfg, ServerConfig) and cfg.models
        report, _ = check_report(cfg)  # what --check prints for it: must not raise either
        assert f"Config {path}: valid" in report

    check()


def test_serve_check_cli_never_shows_a_traceback(scratch: Path, models_dir: Path) -> None:
    from server.cli import main as serve_main

    @settings(FUZZ, max_examples=max(CASES // 3, 1))
    @given(case=server_contents(models_dir))
    @example(case=(_typed_gguf_config(models_dir), None))
    def check(case: tuple[bytes, str | None]) -> None:
        path = scratch / "cli_local_models.json"
        path.write_bytes(case[0])
        result = CliRunner().invoke(serve_main, ["--config", str(path), "--check"])
        _count("serve_check_cli")
        assert result.exit_code in (0, 1), (result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert TRACEBACK not in result.output

    check()
