"""Models on the Hugging Face Hub, addressed in the config as `"gguf": "hf:ORG/REPO/FILE.gguf"`
or `"hf:ORG/REPO:Q4_K_M"` (the repository's one .gguf file whose name holds that tag).

Files are fetched by `huggingface_hub`, so its conventions hold: the cache (`$HF_HOME/hub`, or
`$HF_HUB_CACHE`) shared with every other Hugging Face tool, the token (`$HF_TOKEN` or
`hf auth login`), the endpoint (`$HF_ENDPOINT`, a mirror), its progress bar and its resumption of
a dropped connection (an HTTP Range request from the last byte received). huggingface_hub reads
those variables once, when it is imported; they are read here at each call and passed to it, so
what the environment says when the server starts is what counts.

Parsing (`parse`) is pure and part of config validation; nothing touches the network until
`resolve` is called, which happens when the server starts, or with `--download` / `--check`.
Messages never contain the token: they only say whether HF_TOKEN is set.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from server.errors import ServerConfigError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

PREFIX = "hf:"
DEFAULT_ENDPOINT = "https://huggingface.co"
FORMS = (
    '"hf:ORG/REPO/FILE.gguf" or "hf:ORG/REPO:QUANT" (e.g. "hf:ORG/REPO:Q4_K_M"), '
    'with an optional "@REVISION" after REPO'
)

# "cache": only the local cache (plain validation); "check": the cache, else ask the hub whether
# the file is there (no download); "download": fetch what is missing (server start, --download).
Mode = Literal["cache", "check", "download"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HubRef:
    """One parsed `hf:` reference: a file path in the repository, or a quantization tag."""

    repo_id: str
    filename: str | None = None
    quant: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        tail = f"/{self.filename}" if self.filename else f":{self.quant}"
        return f"{PREFIX}{self.repo_id}{rev}{tail}"

    @property
    def described(self) -> str:
        """The repository (and revision) in words, for messages."""
        return f"repository {self.repo_id}" + (f" at revision {self.revision}" if self.revision else "")


def is_hub(source: str) -> bool:
    return source.startswith(PREFIX)


def parse(source: str) -> HubRef:
    """The reference behind `hf:...`; ValueError saying what is wrong and what is valid."""

    def bad(why: str) -> ValueError:
        return ValueError(f'"{source}" is not a valid Hugging Face reference: {why}; write {FORMS}')

    parts = source[len(PREFIX) :].split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise bad("it needs an organisation (or user) and a repository")
    org, repo, path = parts[0], parts[1], (parts[2] if len(parts) == 3 else None)
    quant: str | None = None
    if path is None:
        if ":" not in repo:
            raise bad("it names a repository but no file and no quantization tag")
        repo, quant = repo.split(":", 1)
        if not _QUANT.match(quant):
            raise bad(f'the quantization tag "{quant}" must be letters, digits and ._- (e.g. Q4_K_M)')
    revision: str | None = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not _REVISION.match(revision):
            raise bad(f'the revision "{revision}" must be a branch, tag or commit (letters, digits, ._-)')
    for kind, name in (("organisation", org), ("repository", repo)):
        if not _NAME.match(name) or ".." in name or "--" in name or len(name) > 96:
            raise bad(f'the {kind} name "{name}" must be up to 96 letters, digits and ._- (no "--" or "..")')
    if path is not None:
        segments = path.split("/")
        if any(s in ("", ".", "..") for s in segments) or "\\" in path:
            raise bad(f'the file path "{path}" has an empty, "." or ".." part')
        if not path.lower().endswith(".gguf"):
            raise bad(f'the file "{path}" is not a .gguf file (llama.cpp loads GGUF only)')
    return HubRef(repo_id=f"{org}/{repo}", filename=path, quant=quant, revision=revision)


# --- the environment, read at each call -----------------------------------------------------


def endpoint() -> str:
    """`$HF_ENDPOINT` or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """huggingface_hub's cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub` (`~/.cache/huggingface/hub`)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def offline() -> bool:
    """`$HF_HUB_OFFLINE` set to a true value: the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _token_note() -> str:
    set_or_not = "is set" if os.environ.get("HF_TOKEN") else "is not set"
    return f"HF_TOKEN {set_or_not}"


def _api() -> HfApi:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint())


# --- resolution -----------------------------------------------------------------------------


def resolve(ref: HubRef, mode: Mode) -> Path:
    """The local path of the file behind `ref`, fetched first in "download" mode.

    ServerConfigError (without the config's location, which the caller adds) when the file is
    not cached in "cache"/"check" mode, or cannot be found or fetched.
    """
    if mode != "download" or offline():
        path = cached(ref)
        if path is not None:
            return path
        raise ServerConfigError(_not_cached(ref, mode))
    try:
        filename = ref.filename or _pick(ref, _list_gguf(ref))
    except ServerConfigError as exc:
        if not isinstance(exc.__cause__, _ConnectionProblem):
            raise
        path = cached(ref)  # offline, but an earlier download of this revision is there
        if path is None:
            raise
        return path
    return _download(ref, filename)


def cached(ref: HubRef) -> Path | None:
    """The cached file of `ref`'s revision (default "main"), without the network."""
    from huggingface_hub import try_to_load_from_cache

    if ref.filename is not None:
        found = try_to_load_from_cache(
            ref.repo_id, ref.filename, cache_dir=cache_dir(), revision=ref.revision, repo_type="model"
        )
        return Path(found) if isinstance(found, str) else None
    files = _cached_files(ref)
    if files is None:
        return None
    snapshot, names = files
    return snapshot / _pick(ref, [n for n in names if n.lower().endswith(".gguf")])


def _cached_files(ref: HubRef) -> tuple[Path, list[str]] | None:
    """The snapshot folder of `ref`'s revision in the cache and the files it holds."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir())
    except (CacheNotFound, OSError):
        return None
    wanted = ref.revision or "main"
    for repo in info.repos:
        if repo.repo_id != ref.repo_id or repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            if wanted in rev.refs or rev.commit_hash == wanted:
                names = [f.file_path.relative_to(rev.snapshot_path).as_posix() for f in rev.files]
                return rev.snapshot_path, sorted(names)
    return None


def _pick(ref: HubRef, ggufs: list[str]) -> str:
    """The one .gguf file whose name contains the quantization tag (case-insensitive)."""
    assert ref.quant is not None
    tag = ref.quant.lower()
    matches = [f for f in ggufs if tag in f.rsplit("/", 1)[-1].lower()]
    if len(matches) == 1:
        return matches[0]
    found = ", ".join(ggufs) if ggufs else "none"
    if not matches:
        raise ServerConfigError(
            f'no .gguf file of {ref.described} has "{ref.quant}" in its name (.gguf files found: '
            f"{found}); use a tag from one of those names, or name the file: "
            f'"{PREFIX}{ref.repo_id}/FILE.gguf"'
        )
    raise ServerConfigError(
        f'{len(matches)} .gguf files of {ref.described} have "{ref.quant}" in their names: '
        f"{', '.join(matches)}; use a longer tag that matches one, or name the file: "
        f'"{PREFIX}{ref.repo_id}/{matches[0]}" (split GGUFs, -00001-of-0000N, are not supported)'
    )


class _ConnectionProblem(Exception):
    """Marks a ServerConfigError caused by an unreachable hub (then the cache may still do)."""


def _list_gguf(ref: HubRef) -> list[str]:
    """The repository's .gguf files, from the hub's model API (`siblings`)."""
    try:
        info = _api().model_info(ref.repo_id, revision=ref.revision)
    except Exception as exc:
        raise _explain(exc, ref, None) from _cause(exc)
    return sorted(s.rfilename for s in info.siblings or [] if s.rfilename.lower().endswith(".gguf"))


def _download(ref: HubRef, filename: str) -> Path:
    """hf_hub_download, after one metadata request without retries: offline, huggingface_hub
    would retry for about 25 s (with a warning each time) before falling back to the cache."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    url = hf_hub_url(ref.repo_id, filename, revision=ref.revision, endpoint=endpoint())
    try:
        get_hf_file_metadata(url, endpoint=endpoint())
    except Exception as exc:
        if not _is_connection_problem(exc):
            raise _explain(exc, ref, filename) from None
        found = cached(HubRef(ref.repo_id, filename=filename, revision=ref.revision))
        if found is None:
            raise _explain(exc, ref, filename) from _cause(exc)
        return found
    try:
        path = hf_hub_download(
            ref.repo_id,
            filename,
            revision=ref.revision,
            cache_dir=cache_dir(),
            endpoint=endpoint(),
            repo_type="model",
        )
    except Exception as exc:
        raise _explain(exc, ref, filename) from _cause(exc)
    return Path(path)


def probe(ref: HubRef) -> tuple[str, int | None]:
    """The file `ref` names on the hub and its size, asking only for metadata (no download)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    filename = ref.filename or _pick(ref, _list_gguf(ref))
    url = hf_hub_url(ref.repo_id, filename, revision=ref.revision, endpoint=endpoint())
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint())
    except Exception as exc:
        raise _explain(exc, ref, filename) from _cause(exc)
    return filename, meta.size


def _not_cached(ref: HubRef, mode: Mode) -> str:
    where = f"not in the Hugging Face cache ({cache_dir()})"
    if offline():
        return (
            f'"{ref}" is {where} and HF_HUB_OFFLINE is set, so nothing is downloaded: unset it, '
            "or run `storybench-serve --download` on a machine with network and copy the cache here"
        )
    if mode == "cache":
        return f'"{ref}" is {where}; `storybench-serve --download` fetches it'
    try:
        filename, size = probe(ref)
    except ServerConfigError as exc:
        return f'"{ref}" is {where}, and the hub cannot provide it: {exc}'
    shown = "" if size is None else f", {size / 1e6:,.1f} MB"
    return (
        f'"{ref}" is not downloaded yet: {filename}{shown} is on {endpoint()} but {where}; '
        "`storybench-serve --download` fetches it (starting the server does too)"
    )


# --- errors ---------------------------------------------------------------------------------


def _cause(exc: Exception) -> Exception | None:
    return _ConnectionProblem() if _is_connection_problem(exc) else None


def _is_connection_problem(exc: Exception) -> bool:
    import httpx
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(
        exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.TransportError, ConnectionError)
    )


def _explain(exc: Exception, ref: HubRef, filename: str | None) -> ServerConfigError:
    """A message naming the repository, the file and the endpoint, and what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint()
    what = f"{filename} from {ref.described}" if filename else f"the file list of {ref.described}"
    if isinstance(exc, GatedRepoError):
        return ServerConfigError(
            f"{ref.repo_id} on {where} is gated: accept its conditions on {where}/{ref.repo_id} "
            f"with your account, then set HF_TOKEN to a token of that account ({_token_note()})"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ServerConfigError(
            f"cannot fetch {what}: repository {ref.repo_id} not found on {where} (HF_ENDPOINT); "
            f"check the name, or if it is private set HF_TOKEN to a token that can read it ({_token_note()})"
        )
    if isinstance(exc, RevisionNotFoundError):
        return ServerConfigError(
            f"cannot fetch {what}: {ref.repo_id} on {where} has no revision {ref.revision}"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return ServerConfigError(f"{ref.described} on {where} has no file {filename}{_listing_hint(ref)}")
    if _is_connection_problem(exc):
        return ServerConfigError(
            f"cannot reach the Hugging Face Hub at {where} (HF_ENDPOINT) to fetch {what}, and it is "
            f"not in the cache ({cache_dir()}): connect this machine (or set HF_ENDPOINT to a "
            "reachable mirror), or run `storybench-serve --download` on a connected machine and "
            "copy its cache (HF_HOME) here"
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        hint = f" ({_token_note()})" if status in (401, 403) else ""
        return ServerConfigError(f"cannot fetch {what}: {where} answered HTTP {status}{hint}")
    return ServerConfigError(f"cannot fetch {what} from {where}: {type(exc).__name__}: {exc}")


def _listing_hint(ref: HubRef) -> str:
    """`; its .gguf files: ...` when the hub lists them (best effort, for a typo in the name)."""
    try:
        files = _list_gguf(ref)
    except ServerConfigError:
        return ""
    return f"; its .gguf files: {', '.join(files) or 'none'}"
