"""`config/local_models.json`: the schema, its defaults, and validation with readable errors.

Every problem is reported at once, each naming the file, the model, the field and what would be
valid (see docs/local_models.md for the fields). Nothing here loads a model: files are checked
for existence, the GGUF magic and a readable GGUF header only.

A little over 400 lines: the schema, the defaults that depend on the machine (threads, GPU) and the
cross-field rules are one contract that docs/local_models.md documents field by field; split, a
rule would sit apart from the field it constrains.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server import bundled, hub
from server import config_messages as messages
from server.errors import ServerConfigError
from server.gguf_info import GGUFInfo, has_gguf_magic, read_info, sha256_text

DEFAULT_CONFIG = Path("config/local_models.json")
DOCS = "docs/local_models.md"

KVCacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
# ggml's type ids (ggml.h); the bindings lack GGML_TYPE_BF16, so they are spelled out here.
KV_CACHE_TYPE_IDS: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
    "iq4_nl": 20, "bf16": 30,
}  # fmt: skip
SPLIT_MODE_IDS: dict[str, int] = {"none": 0, "layer": 1, "row": 2}
# Chat formats that need a CLIP model or a Hugging Face tokenizer: settings this schema omits.
_UNSUPPORTED_CHAT_FORMATS = {
    "llava-1-5", "llava-1-6", "obsidian", "mtmd", "gemma4", "moondream", "nanollava",
    "llama-3-vision-alpha", "minicpm-v-2.6", "qwen2.5-vl", "hf-autotokenizer",
    "hf-tokenizer-config",
}  # fmt: skip
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
# Sequences one llama.cpp context can hold (llama_max_parallel_sequences()).
MAX_PARALLEL = 256
MAX_LANES = 8
# Slots of the batched engine when n_parallel is not set.
DEFAULT_PARALLEL = 4


@functools.cache
def gpu_offload_supported() -> bool:
    """Whether this llama-cpp-python build can offload layers to a GPU (CUDA, Metal, ...)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _default_n_gpu_layers() -> int:
    return -1 if gpu_offload_supported() else 0


def _default_flash_attn() -> bool:
    return gpu_offload_supported()


def default_threads() -> int:
    """All CPU cores available to this process."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


class LocalModelEntry(BaseModel):
    """One entry of `models`; the field docs live in docs/local_models.md."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    gguf: str = Field(min_length=1)
    enabled: bool = True
    description: str | None = None
    chat_format: str | None = None
    n_ctx: int = Field(4096, ge=0)
    n_gpu_layers: int = Field(default_factory=_default_n_gpu_layers, ge=-1)
    n_batch: int = Field(512, ge=1)
    n_ubatch: int = Field(512, ge=1)
    n_threads: int | None = Field(None, ge=1)
    n_threads_batch: int | None = Field(None, ge=1)
    flash_attn: bool = Field(default_factory=_default_flash_attn)
    offload_kqv: bool = True
    type_k: KVCacheType | None = None
    type_v: KVCacheType | None = None
    use_mmap: bool = True
    use_mlock: bool = False
    use_extra_bufts: bool = True
    split_mode: Literal["none", "layer", "row"] = "layer"
    main_gpu: int = Field(0, ge=0)
    tensor_split: list[float] | None = None
    rpc_servers: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    engine: Literal["llama-cpp-python", "batched"] = "llama-cpp-python"
    n_parallel: int | None = Field(None, ge=1, le=MAX_PARALLEL)
    kv_unified: bool = False
    kv_pool: int | None = Field(None, ge=1)
    n_threads_sampling: int | None = Field(None, ge=1, le=64)
    lanes: int | None = Field(None, ge=1, le=MAX_LANES)
    backend_sampling: bool | None = None
    host_top_k: bool = False
    graph_tail: bool = False
    retokenize_answers: bool = False
    host_cache_mib: int = Field(0, ge=0)
    warm_up: bool | None = None


# Entry fields only the batched engine reads.
ENGINE_ONLY = (
    "kv_unified",
    "kv_pool",
    "n_threads_sampling",
    "lanes",
    "backend_sampling",
    "host_top_k",
    "graph_tail",
    "retokenize_answers",
    "host_cache_mib",
    "warm_up",
)


class ConfigFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    description: str | None = None
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=1, le=65535)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    models: list[LocalModelEntry] = Field(min_length=1)


@dataclass(frozen=True)
class ModelConfig:
    """An enabled model whose file was found and read."""

    entry: LocalModelEntry
    path: Path
    info: GGUFInfo

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def n_ctx(self) -> int:
        """The context the server will allocate (0 in the file means the trained context)."""
        if self.entry.n_ctx == 0 and self.info.context_length:
            return int(self.info.context_length)
        return self.entry.n_ctx

    @property
    def n_parallel(self) -> int:
        """Conversations decoded together (slots); the llama-cpp-python engine serves one."""
        if self.entry.engine != "batched":
            return 1
        return self.entry.n_parallel or DEFAULT_PARALLEL

    @property
    def kv_pool(self) -> int:
        """KV cells of the whole context: with `kv_unified`, one pool all slots draw on (`kv_pool`,
        or every slot at full length); otherwise `n_ctx` reserved per slot."""
        if self.entry.kv_unified and self.entry.kv_pool is not None:
            return self.entry.kv_pool
        return self.n_ctx * self.n_parallel

    @property
    def on_gpu(self) -> bool:
        """Whether the model's layers go to a GPU: some are asked for and the build can."""
        return self.entry.n_gpu_layers != 0 and gpu_offload_supported()

    @property
    def n_threads_sampling(self) -> int:
        """Threads sampling the slots of one step in parallel (batched engine). Unless set: 1
        on the CPU (decoding already uses the cores), up to 8 (half the cores) when the model
        runs on a GPU, where sampling one slot after another is most of each step."""
        if self.entry.n_threads_sampling is not None:
            return self.entry.n_threads_sampling
        if not self.on_gpu:
            return 1
        return max(1, min(8, self.n_parallel, default_threads() // 2))

    @property
    def lanes(self) -> int:
        """Contexts the batched engine's slots are split over, stepped in turn by one thread,
        so that the host's work on one lane's step (sampling, Python) runs while another lane's
        step decodes on the GPU (`server/engine/lanes.py`). Unless set: 1 (two paid
        only from about 64 conversations on an H100's 1B shape; docs/local_models.md)."""
        return min(self.entry.lanes or 1, self.n_parallel)

    @property
    def lane_slots(self) -> list[int]:
        """The slots of each lane: `n_parallel` split as evenly as it goes."""
        whole, extra = divmod(self.n_parallel, self.lanes)
        return [whole + (1 if k < extra else 0) for k in range(self.lanes)]

    def lane_cells(self, slots: int) -> int:
        """KV cells of a lane of `slots` slots: its share of the pool (`kv_pool`)."""
        return max(self.kv_pool * slots // self.n_parallel, min(self.n_ctx, self.kv_pool))

    @property
    def backend_sampling(self) -> bool:
        """Whether requests whose sampler chain llama.cpp can run inside the decode graph get it
        there (batched engine). Unless set: on when the model runs on a GPU, where the graph
        picks each slot's token and only token ids come back instead of a row of logits per
        slot; off on the CPU, where it would only move the same work into the graph."""
        if self.entry.backend_sampling is not None:
            return self.entry.backend_sampling
        return self.on_gpu

    @property
    def warm_up(self) -> bool:
        """Whether loading ends with `BatchedModel.warm_up` (batched engine). Unless set, only
        when the model runs on a GPU, where the first use of each shape of step loads kernels;
        on the CPU there are none to load, and the warm-up's prompt chunk would cost a second."""
        if self.entry.warm_up is not None:
            return self.entry.warm_up
        return self.on_gpu

    @property
    def n_threads(self) -> int:
        """Generation threads: half the cores unless set (llama-cpp-python's default; roughly
        the physical cores, and more threads than free cores makes OpenMP spin-waits slow)."""
        return self.entry.n_threads or max(default_threads() // 2, 1)

    @property
    def n_threads_batch(self) -> int:
        """Prompt threads: as many as for generation unless set (llama.cpp's own default).
        llama-cpp-python would use every core, which made prompts 10-20x slower on a busy
        2-core machine."""
        return self.entry.n_threads_batch or self.n_threads

    @property
    def chat_template_source(self) -> str:
        """Where the chat template comes from, in words."""
        fmt = self.entry.chat_format
        if fmt is not None and not fmt.startswith("chat_template."):
            return f'named chat_format "{fmt}" (llama-cpp-python built-in)'
        if fmt is not None and fmt != "chat_template.default":
            return f"GGUF-embedded (tokenizer.{fmt})"
        if self.info.chat_template is None:
            return 'none in the GGUF: llama-cpp-python falls back to its "llama-2" format'
        if fmt is None:
            from llama_cpp import llama_chat_format

            guessed = llama_chat_format.guess_chat_format_from_gguf_metadata(
                {"tokenizer.chat_template": self.info.chat_template}
            )
            if guessed is not None:
                return (
                    f'GGUF-embedded template, recognised by llama-cpp-python as "{guessed}" '
                    "and rendered by its built-in formatter"
                )
        return "GGUF-embedded (tokenizer.chat_template)"

    @property
    def chat_template_sha256(self) -> str | None:
        """SHA-256 of the Jinja template from the GGUF that renders prompts (None if built-in)."""
        return sha256_text(self.info.template(self.entry.chat_format))


@dataclass
class ServerConfig:
    file: Path
    host: str
    port: int
    api_key_env: str | None
    models: list[ModelConfig]
    disabled: list[str] = field(default_factory=list)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def rpc_servers(self) -> list[str]:
        """The rpc-servers whose devices join this process (the same list on every entry)."""
        return next((list(m.entry.rpc_servers) for m in self.models if m.entry.rpc_servers), [])

    def api_key(self) -> str | None:
        """The key from the environment variable named by `api_key_env`."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ServerConfigError(
                f'{self.file}: "api_key_env" names the environment variable '
                f"{self.api_key_env}, which is not set (or empty). Export it "
                f"(export {self.api_key_env}=...) or remove api_key_env to serve without a key."
            )
        return key


def valid_chat_formats() -> list[str]:
    from llama_cpp import llama_chat_format

    registry = llama_chat_format.LlamaChatCompletionHandlerRegistry()._chat_handlers
    return sorted(set(registry) - _UNSUPPORTED_CHAT_FORMATS)


# --- loading -------------------------------------------------------------------------------


def load_config(path: Path, *, check_files: bool = True, hub_mode: hub.Mode = "cache") -> ServerConfig:
    """Parse and validate a config file; ServerConfigError lists every problem found.

    `hub_mode` says how far an `hf:` model file may be looked for: the local cache only (the
    default: validation never touches the network), the cache and then the hub's metadata
    (`--check`), or a download of what is missing (server start, `--download`).
    """
    text, raw = messages.read_json_object(path, default=DEFAULT_CONFIG, docs=DOCS)
    try:
        parsed = ConfigFile.model_validate_json(text)
    except ValidationError as exc:
        fields = (list(ConfigFile.model_fields), list(LocalModelEntry.model_fields))
        problems = [messages.describe_error(e, raw, *fields) for e in exc.errors()]
        raise ServerConfigError(messages.report(path, problems, DOCS)) from None

    problems = _semantic_problems(parsed)
    models: list[ModelConfig] = []
    if not problems and check_files:
        for i, entry in enumerate(parsed.models):
            if not entry.enabled:
                continue
            where = messages.where(i, entry.name)
            try:
                models.append(_check_model_file(entry, path.parent, hub_mode))
            except ServerConfigError as exc:
                problems.append(f'{where}, field "gguf": {exc}')
    if problems:
        raise ServerConfigError(messages.report(path, problems, DOCS))
    return ServerConfig(
        file=path,
        host=parsed.host,
        port=parsed.port,
        api_key_env=parsed.api_key_env,
        models=models,
        disabled=[m.name for m in parsed.models if not m.enabled],
    )


def resolve_gguf(source: str, base: Path, hub_mode: hub.Mode = "cache") -> Path:
    """`bundled:<name>`, `hf:<reference>` (server/hub.py) or a path; relative paths resolve
    against the config file's folder."""
    if bundled.is_bundled(source):
        return bundled.locate(source)
    if hub.is_hub(source):
        return hub.resolve(hub.parse(source), hub_mode)
    p = Path(os.path.expanduser(source))
    return (p if p.is_absolute() else base / p).resolve()


def _check_model_file(entry: LocalModelEntry, base: Path, hub_mode: hub.Mode) -> ModelConfig:
    path = resolve_gguf(entry.gguf, base, hub_mode)
    relative_note = (
        ""
        if bundled.is_bundled(entry.gguf)
        or hub.is_hub(entry.gguf)
        or Path(os.path.expanduser(entry.gguf)).is_absolute()
        else f" (relative paths resolve against the config file's folder, {base.resolve()})"
    )
    if not path.exists():
        raise ServerConfigError(f"file not found: {path}{relative_note}")
    if not path.is_file():
        raise ServerConfigError(f"{path} is not a file; expected a .gguf model file")
    try:
        magic_ok = has_gguf_magic(path)
    except OSError as exc:
        raise ServerConfigError(f"cannot read {path}: {exc}") from None
    if not magic_ok:
        with path.open("rb") as f:
            head = f.read(4)
        raise ServerConfigError(
            f"{path} is not a GGUF file (it starts with {head!r}; a GGUF file starts with "
            "b'GGUF'). llama.cpp only loads GGUF: convert the model or download a .gguf build."
        )
    try:
        info = read_info(path)
    except Exception as exc:  # gguf raises ValueError, struct.error, IndexError... on bad files
        raise ServerConfigError(f"{path} has a GGUF magic but an unreadable header: {exc}") from None
    fmt = entry.chat_format
    if fmt is not None and fmt.startswith("chat_template."):
        available = ["chat_template.default"] if info.chat_template else []
        available += [f"chat_template.{n}" for n in info.named_chat_templates]
        if info.template(fmt) is None:
            raise ServerConfigError(
                f'chat_format "{fmt}" names a template this GGUF does not contain; '
                f"it has: {', '.join(available) or 'no templates'}"
            )
    return ModelConfig(entry=entry, path=path, info=info)


def _semantic_problems(cfg: ConfigFile) -> list[str]:
    problems: list[str] = []
    seen: dict[str, int] = {}
    formats: list[str] | None = None
    for i, m in enumerate(cfg.models):
        where = messages.where(i, m.name)
        if m.name in seen:
            problems.append(
                f'{where}, field "name": duplicate model name, already used by '
                f"models[{seen[m.name]}]; names must be unique because clients choose a model "
                "by its name"
            )
        else:
            seen[m.name] = i
        if hub.is_hub(m.gguf):
            try:
                hub.parse(m.gguf)
            except ValueError as exc:
                problems.append(f'{where}, field "gguf": {exc}')
        if m.n_ubatch > m.n_batch:
            problems.append(
                f'{where}, field "n_ubatch": {m.n_ubatch} is larger than n_batch ({m.n_batch}); '
                f"n_ubatch must be <= n_batch (e.g. n_ubatch {m.n_batch} or n_batch {m.n_ubatch})"
            )
        if m.engine == "llama-cpp-python" and (m.n_parallel or 1) > 1:
            problems.append(
                f'{where}, field "n_parallel": {m.n_parallel} slots need "engine": "batched"; '
                "llama-cpp-python's server answers one request at a time (remove n_parallel or "
                'set "engine": "batched")'
            )
        if m.kv_pool is not None and not m.kv_unified:
            problems.append(
                f'{where}, field "kv_pool": a shared pool of KV cells needs "kv_unified": true '
                "(without it every slot has its own n_ctx cells)"
            )
        elif m.kv_pool is not None and m.n_ctx and m.kv_pool < m.n_ctx:
            problems.append(
                f'{where}, field "kv_pool": {m.kv_pool} cells cannot hold one conversation at full '
                f"length (n_ctx {m.n_ctx}); set kv_pool >= n_ctx"
            )
        if m.host_cache_mib and m.kv_pool is not None:
            problems.append(
                f'{where}, field "host_cache_mib": conversations cannot be put back into a shared '
                "pool (kv_pool), whose admission counts the cells in use; remove one of the two"
            )
        if m.lanes is not None and m.lanes > (m.n_parallel or DEFAULT_PARALLEL):
            problems.append(
                f'{where}, field "lanes": {m.lanes} lanes need at least as many slots (n_parallel is '
                f"{m.n_parallel or DEFAULT_PARALLEL}); lower lanes or raise n_parallel"
            )
        if m.graph_tail and m.backend_sampling is False:
            problems.append(
                f'{where}, field "graph_tail": it finishes the sampler chain in the decode graph, which '
                'needs backend sampling; remove "backend_sampling": false, or "graph_tail"'
            )
        for name in ENGINE_ONLY:
            if getattr(m, name) and m.engine != "batched":
                problems.append(f'{where}, field "{name}": only used by "engine": "batched"')
        if m.engine == "batched" and (m.n_parallel or DEFAULT_PARALLEL) > m.n_batch:
            problems.append(
                f'{where}, field "n_parallel": {m.n_parallel or DEFAULT_PARALLEL} slots need '
                f"n_batch >= n_parallel (n_batch is {m.n_batch}): every step decodes one token "
                "per generating slot"
            )
        if m.type_v not in (None, "f16", "f32", "bf16") and not m.flash_attn:
            problems.append(
                f'{where}, field "type_v": a quantized V cache ("{m.type_v}") needs '
                '"flash_attn": true in llama.cpp; enable flash_attn or use "f16"'
            )
        if m.tensor_split is not None and any(x < 0 for x in m.tensor_split):
            problems.append(f'{where}, field "tensor_split": proportions must be >= 0, got {m.tensor_split}')
        for endpoint in m.rpc_servers or []:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.append(
                    f'{where}, field "rpc_servers": "{endpoint}" is not HOST:PORT of an rpc-server '
                    '(e.g. "192.168.1.20:50052")'
                )
        fmt = m.chat_format
        if fmt is not None and not fmt.startswith("chat_template."):
            formats = formats if formats is not None else valid_chat_formats()
            if fmt not in formats:
                close = difflib.get_close_matches(fmt, formats, n=1)
                hint = f'did you mean "{close[0]}"? ' if close else ""
                problems.append(
                    f'{where}, field "chat_format": unknown chat format "{fmt}"; {hint}'
                    "leave it out to use the template stored in the GGUF, or use one of: "
                    + ", ".join(formats)
                )
    engines = {m.engine for m in cfg.models if m.enabled}
    if len(engines) > 1:
        problems.append(
            'the enabled models use different "engine"s ('
            + ", ".join(f"{m.name}: {m.engine}" for m in cfg.models if m.enabled)
            + "); one server process runs one engine: give them the same engine, or serve "
            "them from two config files on two ports"
        )
    rpc = {tuple(m.rpc_servers or ()) for m in cfg.models if m.enabled and m.rpc_servers}
    if len(rpc) > 1:
        problems.append(
            'the enabled models list different "rpc_servers"; remote devices join the whole server '
            "process once registered: give every entry that uses them the same list"
        )
    if not any(m.enabled for m in cfg.models):
        problems.append('no model is enabled: set "enabled": true on at least one entry of "models"')
    return problems
