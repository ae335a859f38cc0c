"""What a GGUF file says about itself, and its SHA-256 (computed once per file version).

Metadata comes from the `gguf` package's GGUFReader (a memory map: it reads the header and the
tensor index, not the weights), so `--check` can describe a 40 GB model without loading it.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"


def has_gguf_magic(path: Path) -> bool:
    """True when the file starts with the 4 bytes every GGUF file starts with."""
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str | None
    file_type: int | None
    quantization: str | None  # "Q4_1", "Q4_K_M", ... (from general.file_type)
    model_name: str | None  # general.name
    context_length: int | None  # {arch}.context_length: the context it was trained for
    block_count: int | None  # {arch}.block_count: repeating layers (n_gpu_layers counts these)
    chat_template: str | None  # tokenizer.chat_template
    named_chat_templates: tuple[str, ...]  # tokenizer.chat_template.<name>

    @property
    def chat_template_sha256(self) -> str | None:
        if self.chat_template is None:
            return None
        return hashlib.sha256(self.chat_template.encode("utf-8")).hexdigest()


def _value(field: Any) -> Any:
    """The Python value of a scalar or string ReaderField."""
    from gguf import GGUFValueType

    kind = field.types[0] if field.types else None
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    if kind == GGUFValueType.ARRAY:
        return None
    return field.parts[field.data[0]].tolist()[0]


def quantization_name(file_type: int | None) -> str | None:
    """general.file_type as llama.cpp names it ("Q4_1", "Q4_K_M"), or None if unknown."""
    if file_type is None:
        return None
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return f"file_type {file_type}"
    return name.removeprefix("MOSTLY_")


def read_info(path: Path) -> GGUFInfo:
    """Metadata of a GGUF file. Raises ValueError (from gguf) for a corrupt file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path), "r")
    fields = reader.fields

    def get(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else _value(field)

    arch = get("general.architecture")
    file_type = get("general.file_type")
    prefix = "tokenizer.chat_template."
    return GGUFInfo(
        architecture=arch,
        file_type=file_type,
        quantization=quantization_name(file_type),
        model_name=get("general.name"),
        context_length=get(f"{arch}.context_length") if arch else None,
        block_count=get(f"{arch}.block_count") if arch else None,
        chat_template=get("tokenizer.chat_template"),
        named_chat_templates=tuple(k[len(prefix) :] for k in fields if k.startswith(prefix)),
    )


_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_locks: dict[str, threading.Lock] = {}
_sha_guard = threading.Lock()


def file_sha256(path: Path) -> str:
    """SHA-256 of the file, cached by (path, size, mtime): hashed once per version of the file.

    Concurrent callers for the same file wait for one computation instead of hashing twice.
    """
    key_path = str(path.resolve())
    with _sha_guard:
        lock = _sha_locks.setdefault(key_path, threading.Lock())
    with lock:
        st = path.stat()
        key = (key_path, st.st_size, st.st_mtime_ns)
        cached = _sha_cache.get(key)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(4 << 20):
                digest.update(chunk)
        _sha_cache[key] = digest.hexdigest()
        return _sha_cache[key]
