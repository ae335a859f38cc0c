"""`storybench-serve`: validate the config, then serve it (or just report it with --check, or
fetch its Hugging Face model files with --download)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import click
import httpx
import uvicorn
from sse_starlette.sse import AppStatus

from server.app import StoryBenchApp
from server.check import check_report
from server.config import DEFAULT_CONFIG, ServerConfig, load_config
from server.errors import ServerConfigError

log = logging.getLogger("storybench.server")

# How long SIGINT/SIGTERM wait for answers in flight before cancelling them.
GRACEFUL_SHUTDOWN_S = 10


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _announce_when_ready(
    app: StoryBenchApp, server: uvicorn.Server, api_key: str | None, outcome: dict[str, int]
) -> None:
    """Print the base URL once /v1/models answers; stop the server if the model failed."""
    while not app.settled.wait(0.2):
        if server.should_exit:
            return
    if app.state != "ready":
        click.echo(f"Error: {app.error}", err=True)
        outcome["rc"] = 1
        server.should_exit = True
        return
    cfg = app.cfg
    base = f"http://{_client_host(cfg.host)}:{cfg.port}/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    while not server.should_exit:
        try:
            if httpx.get(f"{base}/models", headers=headers, timeout=5).status_code == 200:
                names = ", ".join(cfg.model_names)
                click.echo(f"Serving on http://{cfg.host}:{cfg.port}/v1 (models: {names})")
                sys.stdout.flush()
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def serve(cfg: ServerConfig, api_key: str | None, log_level: str = "info") -> int:
    """Run uvicorn in this process until SIGINT/SIGTERM; returns the exit code."""
    # sse-starlette ends every open stream the moment uvicorn starts shutting down. Let them
    # finish instead, within uvicorn's graceful-shutdown timeout (StoryBenchApp.close() sets
    # should_exit once the connections are gone).
    AppStatus.disable_automatic_graceful_drain()
    app = StoryBenchApp(cfg, api_key, verbose=log_level == "debug")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            lifespan="on",
            log_level=log_level,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )
    outcome = {"rc": 0}
    watcher = threading.Thread(target=_announce_when_ready, args=(app, server, api_key, outcome), daemon=True)
    watcher.start()

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal for the
    # previous handler. Make that handler a no-op so a requested shutdown exits 0.
    def _ignore(signum: int, frame: FrameType | None) -> None:
        pass

    previous = {s: signal.signal(s, _ignore) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not server.started and outcome["rc"] == 0:
        return 1  # could not bind: uvicorn logged why
    log.info("shut down")
    return outcome["rc"]


def downloaded_report(cfg: ServerConfig) -> str:
    """What --download prints: where each enabled model's file is."""
    lines = [f"Config {cfg.file}: every enabled model file is present"]
    for model in cfg.models:
        size = model.path.stat().st_size / 1e6
        lines.append(f"  {model.name}: {model.entry.gguf} -> {model.path} ({size:,.1f} MB)")
    lines.append(f"OK: {len(cfg.models)} model file(s) ready; nothing served (--download).")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_CONFIG,
    show_default=True,
    envvar="STORYBENCH_SERVER_CONFIG",
    help="The models to serve (see docs/local_models.md). Env: STORYBENCH_SERVER_CONFIG.",
)
@click.option("--host", help="Listen address (overrides the config; default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (overrides the config).")
@click.option(
    "--check",
    is_flag=True,
    help="Validate the config and model files, print the effective settings, exit 0 or 1.",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch every enabled model's hf: file into the Hugging Face cache, say where each file "
    "is, exit 0 or 1; serves nothing.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
def main(
    config_path: Path, host: str | None, port: int | None, check: bool, download: bool, log_level: str
) -> None:
    """Serve local GGUF models through llama-cpp-python's OpenAI-compatible API.

    Prints "Serving on http://HOST:PORT/v1 (models: ...)" once requests are answered. Model
    files named "hf:ORG/REPO/FILE.gguf" or "hf:ORG/REPO:QUANT" are downloaded first (into the
    Hugging Face cache; HF_HOME, HF_TOKEN, HF_ENDPOINT apply).
    Exit codes: 0 clean shutdown (SIGINT/SIGTERM), --check passed or --download fetched every
    file; 1 --check or --download failed or a model could not be loaded; 2 invalid configuration.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the readiness probe
    try:
        # --check looks in the cache and asks the hub only for metadata; the rest downloads.
        cfg = load_config(config_path, hub_mode="check" if check and not download else "download")
        if host is not None:
            cfg.host = host
        if port is not None:
            cfg.port = port
        if check:
            report, ok = check_report(cfg)
            click.echo(report)
            sys.exit(0 if ok else 1)
        if download:
            click.echo(downloaded_report(cfg))
            sys.exit(0)
        api_key = cfg.api_key()
    except ServerConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1 if check or download else 2)
    sys.exit(serve(cfg, api_key, log_level))
