#!/usr/bin/env bash
# Sourced by the GPU-machine scripts (device_run.sh, device_steps.sh): unpack what `make bench-gpu`
# put in the carried .device/ and .whl/ folders, and make the synthetic models. Expects OUT and a
# `stamp` function; sets M (the models' folder) and model_files (one Q4_K_M file per shape).

# device_setup: the server's wheels, the CUDA bundle (and llama-batched-bench when carried), env.
device_setup() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    tar -xzf .device/llama-cuda-sm90.tgz -C /tmp || return 1
    if [ -f .device/llama-batched-bench-sm90.tgz ]; then
        tar -xzf .device/llama-batched-bench-sm90.tgz -C /tmp || return 1
    fi
    # shellcheck disable=SC1091
    source /tmp/llama-cuda-sm90/env.sh
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}:$PWD"
    export STORYBENCH_NATIVE_BIN=/tmp/llama-cuda-sm90/bin PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import llama_cpp, sys; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload(), sys.version)"
}

# make_models SHAPE...: 1B/8B-shaped synthetic Llama GGUFs (F16 random weights -> Q4_K_M), F16 in
# RAM (/dev/shm) when it has room; the quantised files go into model_files, in SHAPE order.
make_models() {
    M=/dev/shm/sb
    mkdir -p "$M" 2>/dev/null && [ "$(df -Pk /dev/shm | awk 'NR==2{print $4}')" -gt 30000000 ] || M=/tmp/sb
    mkdir -p "$M"
    model_files=()
    local pids=() shape i=0
    for shape in "$@"; do
        python3 -m benchmarks.gen_model .device/vocab-llama-bpe.json.gz "$M/$shape-f16.gguf" --shape "$shape" &
        pids+=($!)
    done
    for shape in "$@"; do
        wait "${pids[$i]}" || { stamp "generating $shape failed"; return 1; }
        llama-quantize "$M/$shape-f16.gguf" "$M/$shape-q4km.gguf" Q4_K_M "$(nproc)" > "$OUT/quantize-$shape.log" 2>&1 \
            || { stamp "quantize $shape failed"; tail -20 "$OUT/quantize-$shape.log"; return 1; }
        rm -f "$M/$shape-f16.gguf"
        ls -la "$M/$shape-q4km.gguf"
        model_files+=("$M/$shape-q4km.gguf")
        i=$((i + 1))
    done
}
