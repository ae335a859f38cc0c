"""The CLI edge: messages instead of tracebacks, exit codes, and --check's report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from server.cli import main

from .conftest import REPO, model_entry, write_config


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_invalid_config_exits_2_without_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json", [model_entry("a", n_cxt=1)])
    code, out = invoke("--config", str(config))
    assert code == 2
    assert f"Invalid config {config}" in out and 'did you mean "n_ctx"?' in out
    assert "Traceback" not in out


def test_invalid_config_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"models": [}')
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid JSON at line 1, column 13" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    code, out = invoke("--config", str(tmp_path / "none.json"))
    assert code == 2 and "config file not found" in out and "Traceback" not in out


def test_missing_api_key_env_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json", [model_entry()], api_key_env="SB_NOT_SET_ANYWHERE")
    code, out = invoke("--config", str(config))
    assert code == 2 and "SB_NOT_SET_ANYWHERE, which is not set" in out


def test_check_reports_effective_settings() -> None:
    code, out = invoke("--config", str(REPO / "config" / "local_models.json"), "--check")
    assert code == 0, out
    assert "smollm2-135m  (default model)" in out
    assert "SmolLM2-135M-Instruct.Q4_1.gguf (98.4 MB, llama, Q4_1)" in out
    assert "n_ctx 8192; trained for 8192" in out
    assert "GPU layers      0 of 30" in out
    assert "n_batch 512, n_ubatch 512" in out
    assert "chat template   GGUF-embedded (tokenizer.chat_template)" in out
    assert "Disabled (shape validated, file not checked): qwen2.5-7b-instruct" in out
    assert out.rstrip().endswith("OK: 1 model(s) ready to serve.")


def test_check_names_a_builtin_chat_format(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json", [model_entry("a", chat_format="chatml")])
    code, out = invoke("--config", str(config), "--check")
    assert code == 0 and 'named chat_format "chatml" (llama-cpp-python built-in)' in out


def test_check_fails_with_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json", [model_entry("a", gguf="gone.gguf")])
    code, out = invoke("--config", str(config), "--check")
    assert code == 1 and "file not found" in out and "Traceback" not in out
    config = write_config(tmp_path / "k.json", [model_entry()], api_key_env="SB_NOT_SET_ANYWHERE")
    code, out = invoke("--config", str(config), "--check")
    assert code == 1 and "FAILED: the server would not start." in out


def test_check_warns_about_gpu_layers_on_a_cpu_build(tmp_path: Path) -> None:
    import llama_cpp

    config = write_config(tmp_path / "c.json", [model_entry("a", n_gpu_layers=-1)])
    code, out = invoke("--config", str(config), "--check")
    assert code == 0
    if not llama_cpp.llama_supports_gpu_offload():
        assert "warning: a: n_gpu_layers is -1 but this llama-cpp-python build has no GPU" in out
