"""`storybench-serve --check`: the effective settings of every model, without loading any."""

from __future__ import annotations

import llama_cpp

from server import rpc
from server.config import ModelConfig, ServerConfig, gpu_offload_supported
from server.errors import ServerConfigError


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _layers(model: ModelConfig, remote: bool = False) -> str:
    e, blocks = model.entry, model.info.block_count
    if remote and e.n_gpu_layers != 0:
        n = (
            "all"
            if e.n_gpu_layers == -1 or (blocks is not None and e.n_gpu_layers > blocks)
            else e.n_gpu_layers
        )
        return f"{n} of {blocks} on the remote devices (n_gpu_layers {e.n_gpu_layers}), the rest here"
    if not gpu_offload_supported():
        return f"0 of {blocks} (CPU-only llama-cpp-python build; n_gpu_layers {e.n_gpu_layers})"
    if e.n_gpu_layers == -1 or (blocks is not None and e.n_gpu_layers > blocks):
        return f"all {blocks} + output (n_gpu_layers {e.n_gpu_layers})"
    return f"{e.n_gpu_layers} of {blocks}"


def _engine(model: ModelConfig) -> str:
    if model.entry.engine != "batched":
        return "llama-cpp-python (one request at a time)"
    kv = "one unified KV buffer" if model.entry.kv_unified else "a KV stream per slot"
    split = "/".join(map(str, model.lane_slots))
    lanes = f"{model.lanes} lanes of {split} slots, " if model.lanes > 1 else ""
    return (
        f"batched: {model.n_parallel} slots of n_ctx {model.n_ctx} "
        f"({model.n_parallel * model.n_ctx} tokens of KV cache, {kv}; "
        f"{model.n_threads_sampling} sampling thread(s), "
        + lanes
        + f"sampling {'in the decode graph where it can' if model.backend_sampling else 'on the CPU'}"
        + ("; a warm-up decode at load" if model.warm_up else "")
        + ")"
    )


def model_report(model: ModelConfig, default: bool, remote: bool = False) -> tuple[list[str], list[str]]:
    """Lines describing one model, and warnings about it (`remote`: rpc-servers lend devices)."""
    e, info = model.entry, model.info
    warnings: list[str] = []
    ctx = f"{model.n_ctx}" + (" (0 in the file: the trained context)" if e.n_ctx == 0 else "")
    if info.context_length:
        ctx += f"; trained for {info.context_length}"
        if model.n_ctx > info.context_length:
            warnings.append(
                f"{e.name}: n_ctx {model.n_ctx} exceeds the {info.context_length} tokens the "
                "model was trained for; quality usually drops beyond it"
            )
    if e.n_gpu_layers != 0 and not gpu_offload_supported() and not remote:
        warnings.append(
            f"{e.name}: n_gpu_layers is {e.n_gpu_layers} but this llama-cpp-python build has no "
            'GPU support: everything runs on the CPU (rebuild with CMAKE_ARGS="-DGGML_CUDA=on")'
        )
    kinds = f"{info.architecture or '?'}, {info.quantization or '?'}"
    lines = [
        f"{e.name}{'  (default model)' if default else ''}",
        f"  gguf            {model.path} ({_mb(model.path.stat().st_size)}, {kinds})",
        f"  context         n_ctx {ctx}",
        f"  GPU layers      {_layers(model, remote)}",
        f"  attention       flash_attn {_on(e.flash_attn)}, offload_kqv {_on(e.offload_kqv)}, "
        f"KV cache {e.type_k or 'f16'}/{e.type_v or 'f16'}",
        f"  batch           n_batch {e.n_batch}, n_ubatch {e.n_ubatch}",
        f"  engine          {_engine(model)}",
        f"  threads         n_threads {model.n_threads}, n_threads_batch {model.n_threads_batch}",
        f"  weights         mmap {_on(e.use_mmap)}, mlock {_on(e.use_mlock)}, "
        f"extra buffer types (repack/AMX) {_on(e.use_extra_bufts)}",
        f"  chat template   {model.chat_template_source}",
    ]
    return lines, warnings


def check_report(cfg: ServerConfig) -> tuple[str, bool]:
    """The --check text, and whether the server would start."""
    ok = True
    lines = [f"Config {cfg.file}: valid"]
    try:
        key = cfg.api_key()
        auth = f"bearer key from ${cfg.api_key_env}" if key else "none (no api_key_env)"
    except ServerConfigError as exc:
        auth, ok = f"ERROR: {exc}", False
    lines += [
        f"Server          http://{cfg.host}:{cfg.port}/v1   API key: {auth}",
        f"llama-cpp-python {llama_cpp.__version__}; GPU offload "
        + ("available" if gpu_offload_supported() else "not available (CPU build)"),
        "",
    ]
    remote = False
    if cfg.rpc_servers:
        try:
            devices = rpc.attach(cfg.rpc_servers)
            lines += ["Remote devices (llama.cpp RPC; layers go to them as to a GPU, by n_gpu_layers):"]
            lines += [
                f"  {d.name:<6} {d.endpoint}  {d.description}, {d.free_bytes / 2**30:,.1f} of "
                f"{d.total_bytes / 2**30:,.1f} GiB free"
                for d in devices
            ]
            remote = bool(devices)
        except rpc.RPCError as exc:
            lines.append(f"Remote devices: ERROR: {exc}")
            ok = False
        lines.append("")
    warnings: list[str] = []
    for i, model in enumerate(cfg.models):
        model_lines, model_warnings = model_report(model, default=i == 0, remote=remote)
        lines += model_lines + [""]
        warnings += model_warnings
    if cfg.disabled:
        lines.append("Disabled (shape validated, file not checked): " + ", ".join(cfg.disabled))
    lines += [f"warning: {w}" for w in warnings]
    n = len(cfg.models)
    lines.append(f"OK: {n} model(s) ready to serve." if ok else "FAILED: the server would not start.")
    return "\n".join(lines), ok
