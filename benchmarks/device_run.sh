#!/usr/bin/env bash
# The GPU benchmarks, in one command on the lent GPU machine (`make bench-gpu` prepares and explains).
#
# Runs from the repository root there, with these ignored folders carried along:
#   .device/  llama-cuda-sm90.tgz (CUDA build of the pinned llama.cpp: llama-server, llama-bench,
#             llama-quantize, libllama + pure-Python llama-cpp-python 0.3.36) and vocab-llama-bpe.json.gz
#   .whl/     the 15 wheels our server needs beyond the machine's image (fastapi, uvicorn, ...)
# Generates 1B- and 8B-shaped synthetic Llama GGUFs (F16 random weights -> llama-quantize Q4_K_M),
# then runs single_stream, prefix_reuse and concurrency, ours vs native llama-server, for both.
# Results: $OUT/gpu.json (records, commands, notes; rewritten after every benchmark) and logs.
# Back on the workstation: python -m benchmarks.run --ingest <files_at>/gpu.json
set -uo pipefail
OUT=${OUT:-/tmp/sb-out}
BENCH_ARGS=${BENCH_ARGS:-}    # more harness arguments, e.g. --threads 8
# MAIN_SHAPES: the shapes of the main run (default: all of SHAPES)
# EXTRA_ARGS: a second harness run after the first (e.g. "--benchmarks single_stream --threads 16"),
# its model labels suffixed with EXTRA_SUFFIX, into $OUT/gpu-extra.json
SHAPES=${SHAPES:-"llama-1b llama-8b"}
DEADLINE_S=${DEADLINE_S:-560}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start))s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar -xzf .device/llama-cuda-sm90.tgz -C /tmp || exit 1
# shellcheck disable=SC1091
source /tmp/llama-cuda-sm90/env.sh
export PYTHONPATH="/tmp/site:${PYTHONPATH:-}:$PWD"
export STORYBENCH_NATIVE_BIN=/tmp/llama-cuda-sm90/bin PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import llama_cpp, sys; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload(), sys.version)"
stamp "setup done"

# Models: F16 into RAM (/dev/shm) when it has room, quantised files next to them.
M=/dev/shm/sb
mkdir -p "$M" 2>/dev/null && [ "$(df -Pk /dev/shm | awk 'NR==2{print $4}')" -gt 30000000 ] || M=/tmp/sb
mkdir -p "$M"
model_files=()
pids=()
for shape in $SHAPES; do
    python3 -m benchmarks.gen_model .device/vocab-llama-bpe.json.gz "$M/$shape-f16.gguf" --shape "$shape" &
    pids+=($!)
done
i=0
for shape in $SHAPES; do
    wait "${pids[$i]}" || { stamp "generating $shape failed"; exit 1; }
    llama-quantize "$M/$shape-f16.gguf" "$M/$shape-q4km.gguf" Q4_K_M "$(nproc)" > "$OUT/quantize-$shape.log" 2>&1 \
        || { stamp "quantize $shape failed"; tail -20 "$OUT/quantize-$shape.log"; exit 1; }
    rm -f "$M/$shape-f16.gguf"
    ls -la "$M/$shape-q4km.gguf"
    model_files+=("$M/$shape-q4km.gguf")
    i=$((i + 1))
done
stamp "models ready"

# run_bench OUT_JSON WORKDIR LABEL_SUFFIX SHAPES ARGS...: the harness on those models, within the deadline.
run_bench() {
    local out_json=$1 workdir=$2 suffix=$3 only=$4
    shift 4
    local models=() f shape label
    for f in "${model_files[@]}"; do
        shape=$(basename "$f" -q4km.gguf)
        [[ " $only " == *" $shape "* ]] || continue
        case $shape in
            llama-1b) label="synthetic Llama-1B shape Q4_K_M" ;;
            llama-8b) label="synthetic Llama-8B shape Q4_K_M" ;;
            *) label="synthetic $shape Q4_K_M" ;;
        esac
        models+=(--model "$f::$label$suffix")
    done
    local remaining=$((DEADLINE_S - ($(date +%s) - start)))
    [ "$remaining" -gt 20 ] || { stamp "no time left for $out_json"; return 124; }
    timeout "$remaining" python3 -m benchmarks.run --gpu "${models[@]}" --workdir "$workdir" \
        --out-json "$out_json" --results-dir none --markdown none "$@"
}

# shellcheck disable=SC2086
run_bench "$OUT/gpu.json" /tmp/sb-run "" "${MAIN_SHAPES:-$SHAPES}" \
    --benchmarks "${MAIN_BENCHMARKS:-single_stream,prefix_reuse,concurrency}" --bias-check $BENCH_ARGS
rc=$?
stamp "benchmarks exit $rc"
if [ -n "${EXTRA_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    run_bench "$OUT/gpu-extra.json" /tmp/sb-run2 "${EXTRA_SUFFIX:-}" "$SHAPES" $EXTRA_ARGS
    stamp "extra benchmarks exit $?"
fi
tar -czf "$OUT/server-logs.tgz" -C /tmp sb-run $( [ -d /tmp/sb-run2 ] && echo sb-run2 ) 2>/dev/null
exit $rc
