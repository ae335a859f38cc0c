"""A stand-in Hugging Face Hub: a real HTTP server on 127.0.0.1 that answers what
`huggingface_hub` asks for when `HF_ENDPOINT` points at it, so downloads are tested without a
network.

It serves, from local files (the bundled GGUF), what huggingface_hub's file_download.py and
hf_api.py read:
- `HEAD|GET /{repo_id}/resolve/{revision}/{path}`: the file with `X-Repo-Commit`, `ETag` (the
  SHA-256, as the Hub gives LFS files) and `Content-Length`; `Range: bytes=N-` answered 206
  with `Content-Range`. Errors carry the Hub's `X-Error-Code` (`RepoNotFound`,
  `RevisionNotFound`, `EntryNotFound`, `GatedRepo`), from which huggingface_hub picks its
  exception class.
- `GET /api/models/{repo_id}` and `/api/models/{repo_id}/revision/{revision}`: `siblings`, the
  repository's files (what the quantization shorthand lists).

`cut_first_get_after` makes the first GET of a file send its full `Content-Length` but only
that many bytes before closing the connection: a dropped download. Every request is recorded
(`requests`) so tests can see which were made and with which Range.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    authorization: bool


@functools.cache
def sha256_of(path: Path) -> str:
    """The file's SHA-256 (computed once per path: the bundled GGUF is 98 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class StandinHub:
    # repo_id -> {path in the repository: local file}
    repos: dict[str, dict[str, Path]]
    gated: set[str] = field(default_factory=set)  # repos that need a token
    cut_first_get_after: int | None = None
    requests: list[Seen] = field(default_factory=list)
    _cut_done: bool = False
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def gets(self, suffix: str = ".gguf") -> list[Seen]:
        """The GET requests of files (not of the API)."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]

    def start(self) -> StandinHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _record(self) -> None:
                hub.requests.append(
                    Seen(
                        self.command,
                        unquote(urlsplit(self.path).path),
                        self.headers.get("Range"),
                        "Authorization" in self.headers,
                    )
                )

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                if code == "EntryNotFound":  # the Hub names the commit it looked in
                    self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, repo_id: str, revision: str | None) -> dict[str, Path] | None:
                files = hub.repos.get(repo_id)
                if files is None:
                    self._error(401, "RepoNotFound", "Repository not found")
                    return None
                if repo_id in hub.gated and "Authorization" not in self.headers:
                    self._error(401, "GatedRepo", "Access to this model is restricted")
                    return None
                if revision not in (None, "main", COMMIT):
                    self._error(404, "RevisionNotFound", "Invalid rev id")
                    return None
                return files

            def do_HEAD(self) -> None:  # noqa: N802 - the http.server API
                self._serve()

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self._serve()

            def _serve(self) -> None:
                self._record()
                path = unquote(urlsplit(self.path).path).strip("/")
                parts = path.split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo_id = "/".join(parts[2:4])
                    revision = parts[5] if len(parts) == 6 and parts[4] == "revision" else None
                    files = self._repo(repo_id, revision)
                    if files is not None:
                        siblings = [{"rfilename": name} for name in sorted(files)]
                        self._json({"id": repo_id, "modelId": repo_id, "sha": COMMIT, "siblings": siblings})
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    files = self._repo(repo_id, revision)
                    if files is None:
                        return
                    if name not in files:
                        self._error(404, "EntryNotFound", f"{name} does not exist on main")
                        return
                    self._file(files[name])
                    return
                self._error(404, "NotFound", "no such route")

            def _file(self, file: Path) -> None:
                size = file.stat().st_size
                start = 0
                ranged = self.headers.get("Range")
                if ranged and self.command == "GET":
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{sha256_of(file)}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                with hub._lock:
                    cut = hub.cut_first_get_after if not hub._cut_done else None
                    hub._cut_done = hub._cut_done or cut is not None
                sent = 0
                with file.open("rb") as f:
                    f.seek(start)
                    while chunk := f.read(CHUNK):
                        if cut is not None and sent + len(chunk) >= cut:
                            self.wfile.write(chunk[: cut - sent])
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(2)  # SHUT_RDWR: the peer sees the body end early
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
