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

It also plays the rubric judge: a prompt without the two conversation sections is scored, every
criterion the format line asks for, as round(quality + shared + own) clipped to the scale, where
`shared` is noise drawn from the target alone (the same for every judge with the same
`shared_seed`, so two judges agree as much as `shared_noise` and `score_noise` say) and `own` is
drawn from the request, its seed included (so `--repeat` changes it). `length_preference` adds
that many log-odds per unit of log(words in A / words in B) to A, a judge that likes length.
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
SCORE_FORMAT = re.compile(r'"([A-Za-z0-9._-]+)": <integer (\d+)-(\d+)>')
WORD = re.compile(r"\w+")


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
    length_preference: float = 0.0  # log-odds per unit of log(words A / words B)
    qualities: dict[str, float] = field(default_factory=dict)  # model -> true rubric score
    score_noise: float = 0.0  # sd of each request's own noise on a rubric score
    shared_noise: float = 0.0  # sd of the target's noise that every judge shares
    shared_seed: int = 0
    requests: int = 0
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def scores(self, prompt: str, request_seed: object = None) -> str:
        """A rubric judgement: every criterion of the format line, around the model's quality."""
        found = MARKER.search(prompt)
        criteria = SCORE_FORMAT.findall(prompt)
        if found is None or not criteria:
            return "I cannot grade this."
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        shared = random.Random(f"shared:{self.shared_seed}:{digest}")
        own = random.Random(f"{self.seed}:{request_seed}:{digest}")
        quality = self.qualities.get(found.group(1), 5.0)
        out = {}
        for name, low, high in criteria:
            value = quality + shared.gauss(0, self.shared_noise) + own.gauss(0, self.score_noise)
            out[name] = min(int(high), max(int(low), round(value)))
        return json.dumps({"scores": out, "rationale": "simulated"})

    def verdict(self, prompt: str, request_seed: object = None) -> str:
        """The reply's text for one prompt: a JSON verdict (or scores for a rubric prompt), or
        prose for a broken model."""
        models = {}
        words = {}
        for side, pattern in SECTION.items():
            section = pattern.search(prompt)
            found = MARKER.search(section.group(1)) if section else None
            if section is None:
                return self.scores(prompt, request_seed)
            if found is None:
                return "I cannot tell these conversations apart."
            models[side] = found.group(1)
            words[side] = max(1, len(WORD.findall(section.group(1))))
        if models["a"] in self.broken or models["b"] in self.broken:
            return "Both stories are lovely in their own way!"
        rng = random.Random(f"{self.seed}:{request_seed}:{hashlib.sha256(prompt.encode()).hexdigest()}")
        theta_a = self.strengths[models["a"]] + self.position_bias
        theta_a += self.length_preference * math.log(words["a"] / words["b"])
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
                self._send(200, _sse(judge.verdict(prompt, body.get("seed"))), "text/event-stream")

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
