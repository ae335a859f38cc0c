"""Adaptive concurrency against a provider that refuses what it cannot take: a stand-in OpenAI
server (a real HTTP server on 127.0.0.1) answers 429 whenever more than K requests are in flight.
The run starts at 16 in flight, settles at no more than K, and completes with every turn ok.

The bound on 429s: each halving answers one burst, and a burst is at most the requests in
flight when it starts (16, 8, ...), so reaching K = 3 from 16 costs at most 16 + 8 + 4 refusals;
growing back past K (one slot per K successes) costs one refusal each time it happens. We
assert fewer than 16 + 8 + 4 + one per 10 turns."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from evaluator.store.embedded import EmbeddedServer
from tests.reliability.conftest import (
    child_env,
    eval_cmd,
    models_yaml,
    prompts_json,
    responses,
    run_cli,
    runs,
)

K = 3
SEQUENCES, TURNS = 16, 3


class Crowded:
    """Answers after `delay_s`; 429 (with a small Retry-After) beyond K requests in flight."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.served: list[int] = []  # in flight when each answered request was taken
        self.refused = 0
        self.lock = threading.Lock()
        crowded = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in {"content-type": kind, "content-length": str(len(body)),
                                   "connection": "close", **(extra or {})}.items():  # fmt: skip
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self._send(404, b'{"error": {"message": "no such route"}}', "application/json")

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                with crowded.lock:
                    crowded.in_flight += 1
                    now = crowded.in_flight
                    refuse = now > K
                    if refuse:
                        crowded.refused += 1
                    else:
                        crowded.served.append(now)
                try:
                    if refuse:
                        error = b'{"error": {"message": "rate limited", "type": "rate_limit_error"}}'
                        self._send(429, error, "application/json", {"retry-after-ms": "20"})
                        return
                    time.sleep(crowded.delay_s)
                    turn = sum(1 for m in body["messages"] if m["role"] == "user")
                    self._send(
                        200,
                        _sse(f"Part {turn}: the lighthouse keeper climbs the stairs."),
                        "text/event-stream",
                    )
                finally:
                    with crowded.lock:
                        crowded.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Crowded:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def _sse(text: str) -> bytes:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "standin-1"}
    events = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}},
    ]
    return ("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode()


def test_the_run_settles_under_the_providers_limit_and_completes(
    mongo: EmbeddedServer, db_name: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    with Crowded() as crowded:
        models = models_yaml(
            tmp_path / "models.yaml", crowded.base_url, max_concurrency=16,
            settings={"retry_max_attempts": 12, "concurrency": 16},
        )  # fmt: skip
        prompts = prompts_json(tmp_path / "prompts.json", n_sequences=SEQUENCES, n_turns=TURNS)
        result = run_cli(
            eval_cmd(models, prompts, "--runs", "1", "--mongo-uri", mongo.uri, "--db", db_name), child_env()
        )
    assert result.returncode == 0, result.stdout + result.stderr
    docs = responses(mongo.uri, db_name)
    assert len(docs) == SEQUENCES * TURNS and all(d["outcome"] == "ok" for d in docs)
    planned = SEQUENCES * TURNS
    assert crowded.refused < 16 + 8 + 4 + planned // 10, crowded.refused
    # Settled: the second half of the answered requests never saw more than K in flight (by
    # construction nothing above K is answered; the limit got there and stayed near it).
    assert max(crowded.served) <= K
    flow = next(iter(runs(mongo.uri, db_name)[-1].flow_control.values()))
    assert flow["decreases"] >= 2 and flow["lowest"] <= K and flow["maximum"] == 16
    figures["adaptive_concurrency"] = {
        "provider_limit_in_flight": K, "start_in_flight": 16, "turns": planned,
        "refused_429": crowded.refused, "limit_at_end": flow["limit"], "lowest_limit": flow["lowest"],
        "halvings": flow["decreases"],
    }  # fmt: skip
