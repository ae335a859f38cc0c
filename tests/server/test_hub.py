"""`"gguf": "hf:..."` model files: parsing with the config's validation, resolution through
huggingface_hub against a stand-in hub on 127.0.0.1 (`HF_ENDPOINT`), the cache, a dropped
download that resumes, the error messages, and `storybench-serve --check` / `--download`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from server import hub
from server.cli import main
from server.config import load_config
from server.errors import ServerConfigError
from tests.support.hub_standin import COMMIT, StandinHub, sha256_of
from tests.support.servers import find_free_port

REPO_ID = "storybench/SmolLM2-GGUF"
Q4_1 = "SmolLM2-135M-Instruct.Q4_1.gguf"
Q8_0 = "more/SmolLM2-135M-Instruct.Q8_0.gguf"  # a file in a folder
Q4_0 = "SmolLM2-135M-Instruct.Q4_0.gguf"


@pytest.fixture
def standin(bundled_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandinHub]:
    """A stand-in hub serving the bundled GGUF under several names; HF_* pointed at it."""
    readme = tmp_path / "README.md"
    readme.write_text("# SmolLM2 GGUF\n")
    files = {Q4_1: bundled_gguf, Q8_0: bundled_gguf, Q4_0: bundled_gguf, "README.md": readme}
    running = StandinHub(repos={REPO_ID: files, "storybench/gated-GGUF": {Q4_1: bundled_gguf}},
                         gated={"storybench/gated-GGUF"}).start()  # fmt: skip
    monkeypatch.setenv("HF_ENDPOINT", running.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    yield running
    running.stop()


def config(tmp_path: Path, gguf: str, **extra: Any) -> Path:
    path = tmp_path / "local_models.json"
    entry = {"name": "hubbed", "gguf": gguf, "n_ctx": 512, "n_threads": 1, "use_extra_bufts": False}
    path.write_text(json.dumps({"models": [{**entry, **extra}]}))
    return path


def resolve(source: str, mode: hub.Mode = "download") -> Path:
    return hub.resolve(hub.parse(source), mode)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


# --- parsing, with the rest of the config's validation ----------------------------------------


def test_parse_accepts_the_documented_forms() -> None:
    assert hub.parse("hf:org/repo/a/b/model.Q4_K_M.gguf") == hub.HubRef(
        "org/repo", filename="a/b/model.Q4_K_M.gguf"
    )
    assert hub.parse("hf:org/repo:Q4_K_M") == hub.HubRef("org/repo", quant="Q4_K_M")
    assert hub.parse("hf:org/repo@v1.0/m.gguf") == hub.HubRef("org/repo", filename="m.gguf", revision="v1.0")
    assert hub.parse("hf:org/repo@main:q8_0") == hub.HubRef("org/repo", quant="q8_0", revision="main")
    assert str(hub.parse("hf:org/repo@main:q8_0")) == "hf:org/repo@main:q8_0"


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("hf:repo-only", "needs an organisation"),
        ("hf:org/repo", "no file and no quantization tag"),
        ("hf:org/repo/model.bin", "is not a .gguf file"),
        ("hf:org/repo/../x.gguf", '".." part'),
        ("hf:org/re po/x.gguf", 'repository name "re po"'),
        ("hf:org/repo:Q4 K", 'quantization tag "Q4 K"'),
        ("hf:org/repo@:Q4", 'revision ""'),
    ],
)
def test_a_bad_reference_is_a_config_error_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, why: str
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{find_free_port()}")  # nothing listens
    path = config(tmp_path, source)
    with pytest.raises(ServerConfigError) as exc:
        load_config(path, check_files=False)
    message = str(exc.value)
    assert message.startswith(f"Invalid config {path}:")
    assert (
        f'model "hubbed" (models[0]), field "gguf": "{source}" is not a valid Hugging Face reference'
        in message
    )
    assert why in message and '"hf:ORG/REPO/FILE.gguf" or "hf:ORG/REPO:QUANT"' in message


def test_plain_validation_never_touches_the_network(standin: StandinHub, tmp_path: Path) -> None:
    path = config(tmp_path, f"hf:{REPO_ID}/{Q4_1}")
    load_config(path, check_files=False)
    with pytest.raises(ServerConfigError) as exc:
        load_config(path)  # the cache only: not downloaded yet
    assert f'field "gguf": "hf:{REPO_ID}/{Q4_1}" is not in the Hugging Face cache' in str(exc.value)
    assert "storybench-serve --download" in str(exc.value)
    assert standin.requests == []


# --- resolution --------------------------------------------------------------------------------


def test_file_form_downloads_into_the_cache_and_a_second_resolution_downloads_nothing(
    standin: StandinHub, tmp_path: Path, bundled_gguf: Path
) -> None:
    path = config(tmp_path, f"hf:{REPO_ID}/{Q4_1}")
    cfg = load_config(path, hub_mode="download")
    model = cfg.models[0]
    cache = tmp_path / "hf-home" / "hub" / "models--storybench--SmolLM2-GGUF"
    assert model.path == cache / "snapshots" / COMMIT / Q4_1
    assert sha256_of(model.path.resolve()) == sha256_of(bundled_gguf)
    assert model.info.architecture == "llama"
    assert len(standin.gets()) == 1

    again = load_config(path, hub_mode="download")  # asks the hub for metadata only
    assert again.models[0].path == model.path
    assert len(standin.gets()) == 1
    before = len(standin.requests)
    assert load_config(path).models[0].path == model.path  # the cache alone
    assert len(standin.requests) == before


def test_quantization_shorthand_picks_the_one_matching_file(standin: StandinHub, tmp_path: Path) -> None:
    got = resolve(f"hf:{REPO_ID}:q8_0")  # case-insensitive; the file is in a folder
    assert got.parts[-2:] == ("more", "SmolLM2-135M-Instruct.Q8_0.gguf")
    assert [r.path for r in standin.gets()] == [f"/{REPO_ID}/resolve/main/{Q8_0}"]
    assert any(r.path == f"/api/models/{REPO_ID}" for r in standin.requests)
    # An earlier revision's listing is asked for at that revision.
    assert resolve(f"hf:{REPO_ID}@{COMMIT}:Q8_0").resolve() == got.resolve()
    assert any(r.path == f"/api/models/{REPO_ID}/revision/{COMMIT}" for r in standin.requests)


def test_quantization_shorthand_with_several_or_no_match_names_repo_tag_and_files(
    standin: StandinHub,
) -> None:
    with pytest.raises(ServerConfigError) as several:
        resolve(f"hf:{REPO_ID}:Q4")
    message = str(several.value)
    assert f'2 .gguf files of repository {REPO_ID} have "Q4" in their names' in message
    assert Q4_0 in message and Q4_1 in message and Q8_0 not in message
    with pytest.raises(ServerConfigError) as none:
        resolve(f"hf:{REPO_ID}:Q5_K_M")
    message = str(none.value)
    assert f'no .gguf file of repository {REPO_ID} has "Q5_K_M" in its name' in message
    assert f"{Q4_0}, {Q4_1}, {Q8_0}" in message and "README.md" not in message
    assert standin.gets() == []


def test_a_dropped_download_resumes_with_a_range_request(
    standin: StandinHub, bundled_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cut = 40_000_000  # beyond huggingface_hub's first chunks (10 MiB each), so some are on disk
    standin.cut_first_get_after = cut
    got = resolve(f"hf:{REPO_ID}/{Q4_1}")
    first, second = standin.gets()
    assert first.range is None
    assert second.range is not None and second.range.startswith("bytes=")
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut
    assert sha256_of(got.resolve()) == sha256_of(bundled_gguf)
    assert "Trying to resume download" in caplog.text


def test_a_missing_file_names_the_repository_the_file_and_the_endpoint(standin: StandinHub) -> None:
    with pytest.raises(ServerConfigError) as exc:
        resolve(f"hf:{REPO_ID}/SmolLM2-135M-Instruct.Q4_K_M.gguf")
    message = str(exc.value)
    assert f"repository {REPO_ID} on {standin.url} has no file SmolLM2-135M-Instruct.Q4_K_M.gguf" in message
    assert f"its .gguf files: {Q4_0}, {Q4_1}, {Q8_0}" in message


def test_a_missing_repository_names_it_the_file_and_the_endpoint(standin: StandinHub) -> None:
    with pytest.raises(ServerConfigError) as exc:
        resolve("hf:storybench/no-such-repo/model.gguf")
    message = str(exc.value)
    assert "cannot fetch model.gguf from repository storybench/no-such-repo" in message
    assert f"repository storybench/no-such-repo not found on {standin.url} (HF_ENDPOINT)" in message
    with pytest.raises(ServerConfigError) as listing:
        resolve("hf:storybench/no-such-repo:Q4_K_M")
    assert "the file list of repository storybench/no-such-repo" in str(listing.value)


def test_a_gated_repository_asks_for_hf_token_and_never_shows_it(
    standin: StandinHub, monkeypatch: pytest.MonkeyPatch, bundled_gguf: Path
) -> None:
    with pytest.raises(ServerConfigError) as exc:
        resolve(f"hf:storybench/gated-GGUF/{Q4_1}")
    assert "storybench/gated-GGUF" in str(exc.value) and "is gated" in str(exc.value)
    assert "set HF_TOKEN" in str(exc.value) and "HF_TOKEN is not set" in str(exc.value)
    secret = "hf_standin_secret_token_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    got = resolve(f"hf:storybench/gated-GGUF/{Q4_1}")
    assert sha256_of(got.resolve()) == sha256_of(bundled_gguf)
    assert standin.gets()[-1].authorization


def test_without_network_the_message_names_hf_endpoint_and_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{find_free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for source in (f"hf:{REPO_ID}/{Q4_1}", f"hf:{REPO_ID}:Q4_1"):
        with pytest.raises(ServerConfigError) as exc:
            resolve(source)
        message = str(exc.value)
        assert f"cannot reach the Hugging Face Hub at {dead} (HF_ENDPOINT)" in message
        assert "run `storybench-serve --download` on a connected machine" in message


def test_a_cached_file_is_used_when_the_hub_is_unreachable(standin: StandinHub) -> None:
    by_file = resolve(f"hf:{REPO_ID}/{Q4_1}")
    by_tag = resolve(f"hf:{REPO_ID}:Q4_1")
    assert by_tag == by_file
    standin.stop()
    assert resolve(f"hf:{REPO_ID}/{Q4_1}") == by_file
    assert resolve(f"hf:{REPO_ID}:Q4_1") == by_file  # the listing comes from the cached snapshot


def test_hf_hub_offline_uses_the_cache_only(standin: StandinHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ServerConfigError) as exc:
        resolve(f"hf:{REPO_ID}/{Q4_1}")
    assert "HF_HUB_OFFLINE is set" in str(exc.value)
    assert standin.requests == []


# --- storybench-serve --check / --download ------------------------------------------------------


def test_check_says_not_downloaded_then_download_fetches_then_check_passes(
    standin: StandinHub, tmp_path: Path
) -> None:
    path = config(tmp_path, f"hf:{REPO_ID}:Q4_1")
    code, out = cli("--config", str(path), "--check")
    assert code == 1, out
    assert f'"hf:{REPO_ID}:Q4_1" is not downloaded yet: {Q4_1}, 98.4 MB is on {standin.url}' in out
    assert "`storybench-serve --download` fetches it" in out and "Traceback" not in out
    assert standin.gets() == []  # --check asks for metadata only

    code, out = cli("--config", str(path), "--download")
    assert code == 0, out
    cached = tmp_path / "hf-home" / "hub" / "models--storybench--SmolLM2-GGUF" / "snapshots" / COMMIT / Q4_1
    assert f"hubbed: hf:{REPO_ID}:Q4_1 -> {cached} (98.4 MB)" in out
    assert out.rstrip().endswith("OK: 1 model file(s) ready; nothing served (--download).")
    assert len(standin.gets()) == 1

    code, out = cli("--config", str(path), "--check")
    assert code == 0, out
    assert f"gguf            {cached} (98.4 MB, llama, Q4_1)" in out
    assert out.rstrip().endswith("OK: 1 model(s) ready to serve.")
    assert len(standin.gets()) == 1


def test_download_of_a_missing_file_exits_1_with_the_message(standin: StandinHub, tmp_path: Path) -> None:
    path = config(tmp_path, f"hf:{REPO_ID}/absent.gguf")
    code, out = cli("--config", str(path), "--download")
    assert code == 1, out
    where = 'model "hubbed" (models[0]), field "gguf"'
    assert f"{where}: repository {REPO_ID} on {standin.url} has no file absent.gguf" in out
    assert "Traceback" not in out
    code, out = cli("--config", str(path), "--check")
    assert code == 1 and "has no file absent.gguf" in out


def test_starting_the_server_downloads_first(
    standin: StandinHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[Path] = []

    def fake_serve(cfg: Any, api_key: str | None, log_level: str = "info") -> int:
        served.extend(m.path for m in cfg.models)
        return 0

    monkeypatch.setattr("server.cli.serve", fake_serve)  # resolution is the point, not serving
    code, out = cli("--config", str(config(tmp_path, f"hf:{REPO_ID}:Q4_1")))
    assert code == 0, out
    assert served == [
        tmp_path / "hf-home" / "hub" / "models--storybench--SmolLM2-GGUF" / "snapshots" / COMMIT / Q4_1
    ]
    assert len(standin.gets()) == 1
