"""`GET /storybench/models`: what the evaluator records with every run.

Enough to trace a result to the exact model file (path, size, SHA-256), the settings it was
served with, and the llama-cpp-python build.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import llama_cpp
from llama_cpp.server import app as llama_app

from server.config import ModelConfig, ServerConfig, gpu_offload_supported
from server.engine.host import EngineHost
from server.gguf_info import file_sha256
from server.instrumented import StoryBenchProxy

# Our wire extension: what the evaluator probes to recognise our server (docs/architecture.md).
METADATA_PATH = "/storybench/models"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def model_entry(model: ModelConfig, current: str | None) -> dict[str, Any]:
    """One model's record (hashing the file the first time: seconds for multi-GB files)."""
    e = model.entry
    return {
        "name": e.name,
        "loaded": e.name == current,
        "gguf_source": e.gguf,
        "gguf_path": str(model.path),
        "file_size": model.path.stat().st_size,
        "sha256": file_sha256(model.path),
        "general_name": model.info.model_name,
        "architecture": model.info.architecture,
        "quantization": model.info.quantization,
        "file_type": model.info.file_type,
        "n_ctx": model.n_ctx,
        "n_ctx_train": model.info.context_length,
        "n_batch": e.n_batch,
        "n_ubatch": e.n_ubatch,
        "n_gpu_layers": e.n_gpu_layers,
        "n_layers": model.info.block_count,
        "flash_attn": e.flash_attn,
        "offload_kqv": e.offload_kqv,
        "type_k": e.type_k or "f16",
        "type_v": e.type_v or "f16",
        "split_mode": e.split_mode,
        "main_gpu": e.main_gpu,
        "tensor_split": e.tensor_split,
        "n_threads": model.n_threads,
        "n_threads_batch": model.n_threads_batch,
        "use_mmap": e.use_mmap,
        "use_mlock": e.use_mlock,
        "use_extra_bufts": e.use_extra_bufts,
        "seed": e.seed,
        "engine": e.engine,
        "n_parallel": model.n_parallel,
        "n_ctx_per_slot": model.n_ctx,
        "n_ctx_total": model.kv_pool,
        "kv_pool": e.kv_pool,
        "kv_unified": e.kv_unified,
        "n_threads_sampling": model.n_threads_sampling,
        "lanes": model.lanes,
        "backend_sampling": model.backend_sampling,
        "host_top_k": model.entry.host_top_k,
        "graph_tail": model.entry.graph_tail,
        "retokenize_answers": model.entry.retokenize_answers,
        "host_cache_mib": model.entry.host_cache_mib,
        "warm_up": model.warm_up,
        "chat_format": e.chat_format,
        "chat_template_source": model.chat_template_source,
        "chat_template_sha256": model.chat_template_sha256,
    }


def live_settings(proxy: StoryBenchProxy) -> dict[str, Any]:
    """Read back from the loaded llama.cpp context and the running upstream server."""
    settings = next(llama_app.get_server_settings())
    llama = proxy.current_model
    return {
        "interrupt_requests": None if settings is None else settings.interrupt_requests,
        "logits_all": None if llama is None else bool(llama._logits_all),
        "n_ctx": None if llama is None else llama.n_ctx(),
        "n_batch": None if llama is None else llama.n_batch,
        "n_threads": None if llama is None else llama.n_threads,
        "n_threads_batch": None if llama is None else llama.n_threads_batch,
    }


def server_metadata(cfg: ServerConfig, proxy: StoryBenchProxy | EngineHost) -> dict[str, Any]:
    current = proxy.current_model_name
    live = proxy.loaded_settings() if isinstance(proxy, EngineHost) else live_settings(proxy)
    return {
        "server": "storybench",
        "storybench_version": _version("storybench"),
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        "gpu_offload_supported": gpu_offload_supported(),
        "default_model": cfg.models[0].name,
        "current_model": current,
        "swap_count": proxy.swap_count,
        "last_swap_seconds": proxy.last_swap_s,
        "loaded_model_settings": live,
        "models": [model_entry(m, current) for m in cfg.models],
    }
