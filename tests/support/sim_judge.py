"""A simulated pairwise judge with known truth: a real HTTP server on 127.0.0.1 that answers the
OpenAI chat API (streamed, like a hosted endpoint) with verdicts drawn from set model strengths.

Which models it compares it reads from the prompt itself: the stored answers of the test's
conversations carry a marker `[writer:<model>]`, and the prompt shows conversation A between
`<conversation_a>` tags and B between `<conversation_b>` tags (config/rubric.json's template).
The verdict follows Davidson's model (ratings.py's, so the truth is known on the rating scale)
with the first-shown conversation's log-strength raised by `position_bias`, and noise from a
random draw seeded by the prompt: the same prompt always gets the same verdict, so a resumed
comparison is reproducible. `broken` models make it answer text that is not a verdict, which
is how a judge that cannot follow the schema looks.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MARKER = re.compile(r"\[writer:([^\]]+)\]")
SECTION = {"a": re.compile(r"<conversation_a>(.*?)</conversation_a>", re.S),
           "b": re.compile(r"<conversation_b>(.*?)</conversation_b>", re.S)}  # fmt: skip
LABELS = ("A much better", "A better", "tie", "B better", "B much better")


def davidson(theta_a: float, theta_b: float, nu: float) -> tuple[float, float, float]:
    """(P(A wins), P(tie), P(B wins)) with log-strengths theta and tie parameter nu."""
    pa, pb = math.exp(theta_a), math.exp(theta_b)
    tie = nu * math.sqrt(pa * pb)
    d = pa + pb + tie
    return pa / d, tie / d, pb / d


@dataclass
class SimJudge:
    strengths: dict[str, float]  # model -> log-strength (natural log odds)
    position_bias: float = 0.0  # added to the first-shown conversation's log-strength
    nu: float = 0.5  # Davidson's tie parameter
    seed: int = 0
    broken: set[str] = field(default_factory=set)  # models whose comparisons get no verdict
    requests: int = 0
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def verdict(self, prompt: str) -> str:
        """The reply's text for one prompt: a JSON verdict, or prose for a broken model."""
        models = {}
        for side, pattern in SECTION.items():
            section = pattern.search(prompt)
            found = MARKER.search(section.group(1)) if section else None
            if found is None:
                return "I cannot tell these conversations apart."
            models[side] = found.group(1)
        if models["a"] in self.broken or models["b"] in self.broken:
            return "Both stories are lovely in their own way!"
        rng = random.Random(f"{self.seed}:{hashlib.sha256(prompt.encode()).hexdigest()}")
        theta_a = self.strengths[models["a"]] + self.position_bias
        theta_b = self.strengths[models["b"]]
        p_a, p_tie, _ = davidson(theta_a, theta_b, self.nu)
        u = rng.random()
        if u < p_a:
            label = LABELS[0] if rng.random() < 0.3 else LABELS[1]
        elif u < p_a + p_tie:
            label = LABELS[2]
        else:
            label = LABELS[4] if rng.random() < 0.3 else LABELS[3]
        return json.dumps({"rationale": f"{models['a']} vs {models['b']}", "verdict": label})

    def start(self) -> SimJudge:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self._send(404, b'{"error": {"message": "no such route"}}', "application/json")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
                with judge._lock:
                    judge.requests += 1
                self._send(200, _sse(judge.verdict(prompt)), "text/event-stream")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="sim-judge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SimJudge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sse(text: str) -> bytes:
    base = {"id": "sim", "object": "chat.completion.chunk", "created": 1, "model": "sim-judge"}
    events = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        },
    ]
    return ("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode()
