"""Our config -> llama-cpp-python's own `ServerSettings` and `ModelSettings`.

Both are pydantic-settings classes: they would also read environment variables named like their
fields (`N_CTX`, `API_KEY`, `CACHE`, `VERBOSE`...). The subclasses below read only what we pass,
so the served settings are exactly those of the config file.
"""

from __future__ import annotations

from typing import Any

import llama_cpp
from llama_cpp.server.settings import ModelSettings, ServerSettings

from server.config import KV_CACHE_TYPE_IDS, SPLIT_MODE_IDS, ModelConfig, ServerConfig


class _OnlyInit:
    @classmethod
    def settings_customise_sources(
        cls, settings_cls: Any, init_settings: Any, *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        return (init_settings,)


class ExactModelSettings(_OnlyInit, ModelSettings):
    """ModelSettings that ignore the environment."""


class ExactServerSettings(_OnlyInit, ServerSettings):
    """ServerSettings that ignore the environment."""


def server_settings(cfg: ServerConfig) -> ServerSettings:
    """No `api_key`: upstream's `authenticate` would check the key a second time on every route;
    `StoryBenchApp` checks it once, for both engines (server/auth.py)."""
    return ExactServerSettings(
        host=cfg.host,
        port=cfg.port,
        api_key=None,
        # Upstream's default (True) ends a stream with [DONE] as soon as any other request
        # waits for the model lock, even GET /v1/models: concurrent clients get cut answers.
        interrupt_requests=False,
    )


def extra_model_params(model: ModelConfig) -> dict[str, Any]:
    """llama_model_params fields that ModelSettings lacks (see StoryBenchProxy)."""
    if model.entry.use_extra_bufts:
        return {}
    return {"use_extra_bufts": False}


def model_settings(model: ModelConfig, verbose: bool = False) -> ModelSettings:
    e = model.entry
    return ExactModelSettings(
        model=str(model.path),
        model_alias=e.name,
        chat_format=e.chat_format,
        n_ctx=model.n_ctx,
        n_gpu_layers=e.n_gpu_layers,
        n_batch=e.n_batch,
        n_ubatch=e.n_ubatch,
        n_threads=model.n_threads,
        n_threads_batch=model.n_threads_batch,
        flash_attn=e.flash_attn,
        offload_kqv=e.offload_kqv,
        type_k=None if e.type_k is None else KV_CACHE_TYPE_IDS[e.type_k],
        type_v=None if e.type_v is None else KV_CACHE_TYPE_IDS[e.type_v],
        use_mmap=e.use_mmap,
        use_mlock=e.use_mlock,
        split_mode=SPLIT_MODE_IDS[e.split_mode],
        main_gpu=e.main_gpu,
        tensor_split=e.tensor_split,
        seed=llama_cpp.LLAMA_DEFAULT_SEED if e.seed == -1 else e.seed,
        # Upstream's server default (True) keeps every prompt token's logits: an
        # n_ctx x n_vocab float array (gigabytes at long contexts) and slower decoding.
        logits_all=False,
        verbose=verbose,
    )
