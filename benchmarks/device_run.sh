#!/usr/bin/env bash
# The GPU benchmarks of issue 6, both shapes in ONE call on the lent GPU machine (`make bench-gpu`
# prepares .device/ and .whl/ and prints this). The exact call, with the device tool:
#
#   run(command='STORYBENCH_COMMIT=<git rev-parse --short HEAD here>[+dirty] bash benchmarks/device_run.sh',
#       carry=['.device', '.whl'], timeout_s=600, kind='nvidia-h200')
#
# Then here, with the reply's files_at:  .venv/bin/python -m benchmarks.run --ingest <files_at>/gpu.json --tag h200
#
# Runs from the repository root there, with these ignored folders carried along:
#   .device/  llama-cuda-sm90.tgz (CUDA build of the pinned llama.cpp: llama-server, llama-bench,
#             llama-quantize, libllama + pure-Python llama-cpp-python 0.3.36) and vocab-llama-bpe.json.gz
#   .whl/     the 15 wheels our server needs beyond the machine's image (fastapi, uvicorn, ...)
# Generates 1B- and 8B-shaped synthetic Llama GGUFs (F16 random weights -> llama-quantize Q4_K_M),
# then, per shape, ours (batched engine, 16 slots) against native llama-server: concurrency (1 and
# 16, with native --backend-sampling as a third server, and our engine's per-step profile),
# multiturn_concurrency (16 conversations x 5 turns), single_stream, prefix_reuse.
#
# Time (DEADLINE_S, default 560 s, inside the 600 s a call may run): setup + models ~115 s (the 8B
# F16 36 s, its quantisation 78 s); then, estimated from the H100 figures with ours near native,
# ~75 s for the 1B shape and ~125 s for the 8B, hence the lean defaults in GPU_ARGS. Each shape is
# its own harness run with its own time limit, so that a shape that hangs or overruns cannot take
# the next one's time: a shape gets what is left minus SHAPE_RESERVE_S for every shape after it.
# Results: $OUT/gpu.json (all shapes' records, commands, notes), $OUT/gpu-<shape>.json (rewritten
# after every benchmark, so a killed run keeps what it measured), device.log and the server logs.
set -uo pipefail
OUT=${OUT:-/tmp/sb-out}
# The harness arguments of the main run: ours' batched engine at 16 slots; 2 repeats of everything,
# each short: 1 single-stream request per repeat, 128-token prefix-reuse and multi-turn answers,
# 200-token user turns, 256-token concurrency answers (the 2.0x / 1.5x throughput goals).
GPU_ARGS=${GPU_ARGS:-"--ours-engine batched --native-backend-sampling --concurrency 1,16 --repeats 2 --requests 1 \
--max-tokens 256 --prefix-max-tokens 128 --turn-tokens 200 --multiturn-max-tokens 128"}
MAIN_BENCHMARKS=${MAIN_BENCHMARKS:-concurrency,multiturn_concurrency,single_stream,prefix_reuse}
BENCH_ARGS=${BENCH_ARGS:-}    # more harness arguments, e.g. --threads 8 --bias-check --ours-backend-sampling off
# MAIN_SHAPES: the shapes of the main run (default: all of SHAPES)
# EXTRA_ARGS: a second harness run after the first (e.g. "--benchmarks single_stream --threads 16"),
# its model labels suffixed with EXTRA_SUFFIX, into $OUT/gpu-extra.json; EXTRA_SHAPES: its shapes
# (default: all of SHAPES)
SHAPES=${SHAPES:-"llama-1b llama-8b"}
DEADLINE_S=${DEADLINE_S:-560}
SHAPE_RESERVE_S=${SHAPE_RESERVE_S:-200}  # kept back for each later shape of the main run
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start))s] $*"; }

# shellcheck source=benchmarks/device_common.sh
source benchmarks/device_common.sh
device_setup || exit 1
stamp "setup done"

make_models $SHAPES || exit 1
stamp "models ready"

# run_bench OUT_JSON WORKDIR LABEL_SUFFIX SHAPES RESERVE_S ARGS...: the harness on those models,
# within the deadline less RESERVE_S (time kept for what runs after it).
run_bench() {
    local out_json=$1 workdir=$2 suffix=$3 only=$4 reserve=$5
    shift 5
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
    local remaining=$((DEADLINE_S - ($(date +%s) - start) - reserve))
    [ "$remaining" -gt 20 ] || { stamp "no time left for $out_json"; return 124; }
    stamp "$out_json: up to ${remaining}s"
    timeout -k 20 "$remaining" python3 -m benchmarks.run --gpu "${models[@]}" --workdir "$workdir" \
        --out-json "$out_json" --results-dir none --markdown none "$@"
}

# The main run, one shape at a time; their files are merged into gpu.json after each.
main_shapes=(${MAIN_SHAPES:-$SHAPES})
rc=0
parts=()
for ((k = 0; k < ${#main_shapes[@]}; k++)); do
    shape=${main_shapes[$k]}
    later=$((${#main_shapes[@]} - k - 1))
    # shellcheck disable=SC2086
    run_bench "$OUT/gpu-$shape.json" "/tmp/sb-run/$shape" "" "$shape" $((later * SHAPE_RESERVE_S)) \
        --benchmarks "$MAIN_BENCHMARKS" $GPU_ARGS $BENCH_ARGS
    r=$?
    stamp "$shape benchmarks exit $r"
    [ "$r" -eq 0 ] || rc=$r
    [ -f "$OUT/gpu-$shape.json" ] && parts+=("$OUT/gpu-$shape.json")
    python3 - "$OUT/gpu.json" "${parts[@]}" <<'EOF'
import json, sys
docs = [json.load(open(p, encoding="utf-8")) for p in sys.argv[2:]]
if docs:
    merged = {"records": [r for d in docs for r in d["records"]], "commands": [c for d in docs for c in d["commands"]],
              "notes": [n for d in docs for n in d["notes"]], "env": docs[0]["env"]}
    json.dump(merged, open(sys.argv[1], "w", encoding="utf-8"), indent=1)
EOF
done
if [ -n "${EXTRA_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    run_bench "$OUT/gpu-extra.json" /tmp/sb-run2 "${EXTRA_SUFFIX:-}" "${EXTRA_SHAPES:-$SHAPES}" 0 $EXTRA_ARGS
    stamp "extra benchmarks exit $?"
fi
tar -czf "$OUT/server-logs.tgz" -C /tmp sb-run $( [ -d /tmp/sb-run2 ] && echo sb-run2 ) 2>/dev/null
exit $rc
