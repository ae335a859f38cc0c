"""The config schema: defaults, translation to llama-cpp-python settings, and every bad input.

Each bad-input test asserts what the person fixing the file needs: the file, the model, the
field, and what would be valid.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from server import llama_settings
from server.config import DEFAULT_CONFIG, ServerConfigError, load_config
from server.gguf_info import file_sha256, read_info

from .conftest import REPO, model_entry, write_config


def cfg_file(tmp_path: Path, models: list[dict[str, Any]], **top: Any) -> Path:
    return write_config(tmp_path / "local_models.json", models, **top)


def error_of(path: Path) -> str:
    with pytest.raises(ServerConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message  # every message names the file
    return message


# --- valid configs -------------------------------------------------------------------------


def test_default_config_serves_the_bundled_model_on_the_cpu() -> None:
    cfg = load_config(REPO / DEFAULT_CONFIG)
    assert cfg.host == "127.0.0.1"
    assert cfg.model_names == ["smollm2-135m"]
    assert cfg.disabled == ["qwen2.5-7b-instruct"]  # the GPU example: validated, not served
    model = cfg.models[0]
    assert model.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model.info.architecture == "llama"
    assert model.info.quantization == "Q4_1"
    assert model.n_ctx == 8192


def test_defaults_are_explicit(tmp_path: Path) -> None:
    cfg = load_config(cfg_file(tmp_path, [{"name": "m", "gguf": "bundled:smollm2-135m"}]))
    e = cfg.models[0].entry
    assert (e.n_ctx, e.n_batch, e.n_ubatch) == (4096, 512, 512)
    # A CPU-only build here: no offload, no flash attention by default.
    import llama_cpp

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    assert e.n_gpu_layers == (-1 if gpu else 0)
    assert e.flash_attn is gpu
    assert e.use_mlock is False and e.use_mmap is True and e.use_extra_bufts is True
    assert (cfg.host, cfg.port, cfg.api_key_env) == ("127.0.0.1", 8080, None)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, bundled_gguf: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").symlink_to(bundled_gguf)
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    cfg = load_config(cfg_file(elsewhere, [{"name": "m", "gguf": "../models/m.gguf"}]))
    assert cfg.models[0].path == bundled_gguf.resolve()


def test_disabled_model_needs_no_file(tmp_path: Path) -> None:
    cfg = load_config(
        cfg_file(
            tmp_path,
            [model_entry("a"), {"name": "gpu", "gguf": "missing.gguf", "enabled": False}],
        )
    )
    assert cfg.model_names == ["a"] and cfg.disabled == ["gpu"]


def test_llama_cpp_settings_fix_upstream_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Upstream's settings classes read env vars named like their fields; ours must not.
    for name, value in {"N_CTX": "99", "API_KEY": "leak", "CACHE": "true", "VERBOSE": "true"}.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(cfg_file(tmp_path, [model_entry("m", type_k="q8_0", flash_attn=True)]))
    ms = llama_settings.model_settings(cfg.models[0])
    assert ms.logits_all is False
    assert ms.n_ctx == 2048 and ms.cache is False and ms.verbose is False
    assert ms.model_alias == "m" and ms.type_k == 8 and ms.type_v is None
    ss = llama_settings.server_settings(cfg)
    assert ss.interrupt_requests is False
    assert ss.api_key is None
    assert llama_settings.extra_model_params(cfg.models[0]) == {"use_extra_bufts": False}


def test_gguf_metadata_and_sha256(bundled_gguf: Path) -> None:
    info = read_info(bundled_gguf)
    assert (info.architecture, info.quantization, info.file_type) == ("llama", "Q4_1", 3)
    assert info.context_length == 8192 and info.block_count == 30
    assert info.chat_template and "<|im_start|>" in info.chat_template
    expected = hashlib.sha256(bundled_gguf.read_bytes()).hexdigest()
    assert file_sha256(bundled_gguf) == expected
    assert file_sha256(bundled_gguf) == expected  # cached


# --- bad input -----------------------------------------------------------------------------


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{\n  "models": [\n    {"name": "a" "gguf": "x"}\n  ]\n}\n')
    msg = error_of(path)
    assert "invalid JSON at line 3, column 18" in msg
    assert "Expecting ',' delimiter" in msg
    assert '{"name": "a" "gguf": "x"}' in msg and "^" in msg


def test_json_comments_get_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{\n  // my models\n  "models": []\n}\n')
    msg = error_of(path)
    assert "line 2, column 3" in msg and '"enabled": false' in msg


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("[]")
    assert 'must be a JSON object with a "models" list, got an array' in error_of(path)


def test_missing_config_file(tmp_path: Path) -> None:
    assert "config file not found" in error_of(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("field", "suggestion"),
    [("n_cxt", "n_ctx"), ("flash_attention", "flash_attn"), ("n_gpu_layer", "n_gpu_layers")],
)
def test_unknown_model_field_suggests_the_closest(tmp_path: Path, field: str, suggestion: str) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("story", **{field: 1})]))
    assert f'model "story" (models[0]), field "{field}": unknown field' in msg
    assert f'did you mean "{suggestion}"?' in msg


def test_unknown_field_without_close_match_lists_valid_fields(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("story", zzz=1)]))
    assert 'field "zzz": unknown field; valid fields: name, gguf, enabled' in msg


def test_unknown_top_level_field(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry()], api_key="secret"))
    assert 'top level, field "api_key": unknown field; did you mean "api_key_env"?' in msg


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("n_ctx", "2048", 'field "n_ctx": must be a valid integer, got "2048"'),
        ("n_ctx", -1, 'field "n_ctx": must be greater than or equal to 0, got -1'),
        ("flash_attn", 1, 'field "flash_attn": must be a valid boolean, got 1'),
        ("n_gpu_layers", -2, 'field "n_gpu_layers": must be greater than or equal to -1'),
        ("split_mode", "rows", "field \"split_mode\": must be 'none', 'layer' or 'row', got"),
        ("type_k", "q8", "field \"type_k\": must be 'f32', 'f16', 'bf16', 'q8_0'"),
        ("tensor_split", [1, "a"], 'field "tensor_split"[1]: must be a valid number'),
    ],
)
def test_wrong_types_and_values(tmp_path: Path, field: str, value: Any, expected: str) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("story", **{field: value})]))
    assert f'model "story" (models[0]), {expected}' in msg


def test_bad_model_name(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("has space")]))
    assert 'model "has space" (models[0]), field "name": must match pattern' in msg


def test_wrong_top_level_type(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry()], port="8080"))
    assert 'top level, field "port": must be a valid integer, got "8080"' in msg
    msg = error_of(cfg_file(tmp_path, [model_entry()], port=70000))
    assert "must be less than or equal to 65535" in msg


def test_models_must_be_a_non_empty_list_of_objects(tmp_path: Path) -> None:
    assert 'field "models": must have at least 1 item' in error_of(cfg_file(tmp_path, []))
    msg = error_of(cfg_file(tmp_path, ["smollm2"]))
    assert "models[0]: must be a JSON object, got a string" in msg


def test_missing_required_fields(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [{"n_ctx": 512}]))
    assert 'models[0], field "name": required field is missing' in msg
    assert 'models[0], field "gguf": required field is missing' in msg


def test_missing_gguf_file(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("story", gguf="models/none.gguf")]))
    assert 'model "story" (models[0]), field "gguf": file not found:' in msg
    assert str(tmp_path / "models" / "none.gguf") in msg
    assert "relative paths resolve against the config file's folder" in msg


def test_gguf_path_is_a_directory(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("story", gguf=str(tmp_path))]))
    assert "is not a file; expected a .gguf model file" in msg


def test_not_a_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"PK\x03\x04rest of a zip")
    msg = error_of(cfg_file(tmp_path, [model_entry("story", gguf="model.safetensors")]))
    assert 'model "story" (models[0]), field "gguf":' in msg
    assert "is not a GGUF file (it starts with b'PK\\x03\\x04'" in msg
    assert "a GGUF file starts with b'GGUF'" in msg


def test_truncated_gguf_header(tmp_path: Path) -> None:
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x01\x02")
    msg = error_of(cfg_file(tmp_path, [model_entry("story", gguf="cut.gguf")]))
    assert "has a GGUF magic but an unreadable header" in msg


def test_unknown_bundled_model(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("story", gguf="bundled:smollm2-135")]))
    assert 'unknown bundled model "bundled:smollm2-135"' in msg
    assert 'did you mean "bundled:smollm2-135m"?' in msg


def test_duplicate_model_names(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("a"), model_entry("b"), model_entry("a")]))
    assert 'model "a" (models[2]), field "name": duplicate model name, already used by models[0]' in msg


def test_n_ubatch_larger_than_n_batch(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("a", n_batch=256, n_ubatch=512)]))
    assert 'model "a" (models[0]), field "n_ubatch": 512 is larger than n_batch (256)' in msg
    assert "n_ubatch must be <= n_batch" in msg


def test_quantized_v_cache_needs_flash_attention(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("a", type_v="q8_0", flash_attn=False)]))
    assert 'field "type_v": a quantized V cache ("q8_0") needs "flash_attn": true' in msg


def test_unknown_chat_format(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("a", chat_format="chatm")]))
    assert 'model "a" (models[0]), field "chat_format": unknown chat format "chatm"' in msg
    assert 'did you mean "chatml"?' in msg and "template stored in the GGUF" in msg


def test_chat_template_name_missing_from_the_gguf(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("a", chat_format="chat_template.tool_use")]))
    assert "names a template this GGUF does not contain; it has: chat_template.default" in msg


def test_no_enabled_model(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("a", enabled=False)]))
    assert 'no model is enabled: set "enabled": true' in msg


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry("a", n_cxt=1), model_entry("b", n_batch="x")]))
    assert msg.count("\n  - ") == 2 and "docs/local_models.md" in msg


def test_api_key_env_must_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SB_TEST_KEY_UNSET", raising=False)
    cfg = load_config(cfg_file(tmp_path, [model_entry()], api_key_env="SB_TEST_KEY_UNSET"))
    with pytest.raises(ServerConfigError) as info:
        cfg.api_key()
    assert "SB_TEST_KEY_UNSET, which is not set" in str(info.value)
    monkeypatch.setenv("SB_TEST_KEY_UNSET", "k")
    assert cfg.api_key() == "k"


def test_api_key_env_must_be_a_variable_name(tmp_path: Path) -> None:
    msg = error_of(cfg_file(tmp_path, [model_entry()], api_key_env="my key"))
    assert 'field "api_key_env": must match pattern' in msg


def test_docs_cover_every_field() -> None:
    from server.config import ConfigFile, LocalModelEntry

    docs = (REPO / "docs" / "local_models.md").read_text()
    for name in [*ConfigFile.model_fields, *LocalModelEntry.model_fields]:
        assert f"`{name}`" in docs, name
    json.loads((REPO / DEFAULT_CONFIG).read_text())  # the shipped file stays valid JSON
