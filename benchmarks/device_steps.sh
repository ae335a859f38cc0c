#!/usr/bin/env bash
# Issue 16 on the lent GPU machine, in ONE call: per shape, (1) llama.cpp's batched limit
# (llama-batched-bench), (2) our engine in-process with no HTTP (benchmarks/engine_steps.py: raw
# decode on our context, the engine with its batched graph top-k, with the whole chain in the
# graph, with llama.cpp's top-k in the graph, the engine sampling on the CPU),
# (3) the HTTP servers (ours batched vs native llama-server -np N, benchmarks.run concurrency).
# All at LEVELS sequences, PROMPT prompt tokens and GEN generated tokens per sequence, CTX tokens
# of context per slot, flash attention, full offload, THREADS threads.
#
#   `make bench-gpu` (prepares .device/ with the CUDA bundle and llama-batched-bench, and .whl/), then
#   run(command='STORYBENCH_COMMIT=<rev> bash benchmarks/device_steps.sh', carry=['.device', '.whl'],
#       timeout_s=600, kind='nvidia-h200')
# Long stories (the issue's goal 3), both shapes in one call (~450 s), with their batched-bench:
#   VARIANTS=none HTTP_LEVELS=16 CTX=8192 GEN=400 DEEP_NPP=7000 HTTP_ARGS="--benchmarks
#   multiturn_concurrency --turns 12 --multiturn-max-tokens 400 --turn-tokens 200"
# Long stories in-process (~25 s a variant on 1B, ~70 s on 8B), the engine's switches alternating:
#   VARIANTS=none HTTP_LEVELS=none TURNS=12 (STORY_VARIANTS: engine_steps.configure names; TURNS_ARGS)
#   (the whole chain in the graph against the default: STORY_VARIANTS=engine-batched,engine-sampled,...)
# A slot's first request (READY_CHAINS off and on) and one stream over HTTP (~100 s, 1B):
#   VARIANTS=none SHAPES=llama-1b ATTACH="16 64" HTTP_LEVELS=1
# The whole chain in the graph over HTTP (ours with "graph_tail": true): HTTP_ARGS="--ours-graph-tail".
# Shared KV pool against native's slots (goal 4): VARIANTS=none HTTP_LEVELS=none KV_POOL="<kv_pool args>".
# A prompt micro-batch's cost (issue 16, session 16): VARIANTS=none HTTP_LEVELS=none CTX=8192 PROMPT_COST=0,3500,7000.
# The host's tail and the whole chain in the graph at the levels short of 90% (issue 16, session 17):
#   SHAPES=llama-1b LEVELS=16,32 HTTP_LEVELS=none STEPS_ARGS=--split HOST_PATH=8,16,32,64 VARIANTS=engine-batched,
#   engine-batched-chain,engine-sampled,engine-sampled-packed,engine-batched#2,engine-batched-chain#2,engine-sampled#2,
#   engine-sampled-packed#2
# llama.cpp's CPU threads in the real engine (beside the GPU's decode the host's part ran 2x its host_path figure in session 17):
#   SHAPES=llama-1b LEVELS=16,32 VARIANTS=engine-batched HTTP_LEVELS=none THREADS_AB="8 1 8p"
# The load's warm-up (server/engine/model.py warm_up), first run of a fresh process off and on (~60 s):
#   SHAPES=llama-1b LEVELS=16 VARIANTS=none HTTP_LEVELS=none WARMUP_AB=1 (STEPS_ARGS="--repeat-penalty 1.1": the
#   requests take the ready chains, READY_CHAINS, as the evaluator's do)
# Results in $OUT: steps-<shape>.json, threads-<shape>.tgz (threads-<shape>-<t>-<run>.json inside), warm-up-<shape>.tgz (warm-up-<shape>-<0|1>-<run>.json), host-path-<shape>.json, attach-<shape>-<n>.json, kv-pool-<shape>.json, prompt-cost-<shape>.json, batched-bench-<shape>.txt, http-<shape>.json, turns-<shape>.json, device.log.
# `python -m benchmarks.steps_report <files_at>` prints the tables BENCHMARKS.md records.
set -uo pipefail
OUT=${OUT:-/tmp/sb-out}
SHAPES=${SHAPES:-"llama-1b llama-8b"}
LEVELS=${LEVELS:-1,16,32,64}
HTTP_LEVELS=${HTTP_LEVELS:-16,32,64}
HTTP_REPEATS=${HTTP_REPEATS:-1}
PROMPT=${PROMPT:-64}
GEN=${GEN:-256}
CTX=${CTX:-2048}
THREADS=${THREADS:-8}
VARIANTS=${VARIANTS:-raw,engine-batched,engine-sampled,engine-graph,engine-host,engine-llama}  # none: HTTP only
STEPS_ARGS=${STEPS_ARGS:-}   # more engine_steps arguments, e.g. --kv-unified
HTTP_ARGS=${HTTP_ARGS:-}     # more benchmarks.run arguments, e.g. --ours-backend-sampling on
DEEP_NPP=${DEEP_NPP:-}       # e.g. 7000: batched-bench at 16 sequences of that depth (long stories' goal)
TOPK_BLOCKS=${TOPK_BLOCKS:-} # e.g. "1024:0 512:256": engine-batched again with other graph_top_k BLOCK:PRESELECT
PENALTY=${PENALTY:-}         # e.g. 1.1: engine-graph, -batched and -sampled again with that repeat penalty
REBUILD=${REBUILD:-}         # 1: engine-batched again with llama.cpp's graph reuse off (what a graph build costs)
HTTP_SHAPES=${HTTP_SHAPES:-$SHAPES}  # the shapes the HTTP benchmarks run on
ATTACH=${ATTACH:-}           # e.g. "16 64": benchmarks.attach_cost at those numbers of slots
TURNS=${TURNS:-}             # e.g. 12: in-process long stories (benchmarks/engine_turns.py), 16 conversations
STORY_VARIANTS=${STORY_VARIANTS:-engine-batched-plain,engine-batched,engine-batched-plain#2,engine-batched#2}
TURNS_ARGS=${TURNS_ARGS:-}   # more engine_turns arguments, e.g. --jitter 0 (answers of one length, as over HTTP)
PROMPT_COST=${PROMPT_COST:-}   # e.g. "0,3500,7000": benchmarks.prompt_cost at those depths (16 slots of CTX)
HOST_PATH=${HOST_PATH:-}     # e.g. "8,16,32,64": benchmarks.host_path, the host's part of a step, decode skipped
WARMUP_AB=${WARMUP_AB:-}     # 1: engine_steps in fresh processes with the load's warm-up off and on, twice, alternating
THREADS_AB=${THREADS_AB:-}   # e.g. "8 1 8p": engine_steps (engine-batched, --split) at each llama.cpp CPU thread count, twice, alternating
KV_POOL=${KV_POOL:-}         # e.g. "--conversations 32 --turns 6 --answer 256 --turn-tokens 200 --ctx 8192 --pool 32768": benchmarks.kv_pool
DEADLINE_S=${DEADLINE_S:-570}
STEPS_SHARE=${STEPS_SHARE:-3}  # engine_steps gets this fraction (1/STEPS_SHARE) of the time left
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start))s] $*"; }
left() { echo $((DEADLINE_S - ($(date +%s) - start))); }

# shellcheck source=benchmarks/device_common.sh
source benchmarks/device_common.sh
device_setup || exit 1
stamp "setup done (storybench ${STORYBENCH_COMMIT:-unknown})"
make_models $SHAPES || exit 1
stamp "models ready"
# The sampling tail's numpy on this host (a second): compare with the VM's (BENCHMARKS.md, session 11).
mkdir -p /tmp/sb-run
timeout -k 5 60 python3 -m benchmarks.tail_host --out /tmp/sb-run/tail-host.json
stamp "tail_host exit $?"

max_level=$(tr ',' '\n' <<< "$LEVELS" | sort -n | tail -1)
n_shapes=$(wc -w <<< "$SHAPES")
i=0
for shape in $SHAPES; do
    f=${model_files[$i]}
    i=$((i + 1))
    case $shape in
        llama-1b) label="synthetic Llama-1B shape Q4_K_M" ;;
        llama-8b) label="synthetic Llama-8B shape Q4_K_M" ;;
        *) label="synthetic $shape Q4_K_M" ;;
    esac
    share=$(($(left) / (n_shapes - i + 1)))  # this shape's part of the time left
    if [ "$VARIANTS" != none ]; then
    stamp "$shape: llama-batched-bench"
    timeout -k 10 "$(($(left) / 3))" llama-batched-bench -m "$f" -ngl 99 -fa on -c $((CTX * max_level)) -b 512 -ub 512 \
        -t "$THREADS" -npp "$PROMPT" -ntg "$GEN" -npl "$LEVELS" > "$OUT/batched-bench-$shape.txt" 2>&1
    stamp "batched-bench exit $?"; grep '^|' "$OUT/batched-bench-$shape.txt"
    stamp "$shape: engine_steps"
    # shellcheck disable=SC2086
    timeout -k 10 "$(($(left) / STEPS_SHARE))" python3 -m benchmarks.engine_steps --model "$f" --label "$label" --gpu \
        --levels "$LEVELS" --prompt "$PROMPT" --gen "$GEN" --n-ctx "$CTX" --threads "$THREADS" \
        --variants "$VARIANTS" --out "$OUT/steps-$shape.json" $STEPS_ARGS
    stamp "engine_steps exit $?"
    for spec in $TOPK_BLOCKS; do  # graph_top_k sweep (BLOCK:PRESELECT): engine-batched only, logs in server-logs.tgz
        b=${spec%%:*} p=${spec#*:}
        mkdir -p /tmp/sb-run
        timeout -k 10 "$(($(left) / 4))" python3 -m benchmarks.engine_steps --model "$f" \
            --label "$label, top-k blocks of $b, preselect $p" --gpu --levels "$LEVELS" --prompt "$PROMPT" --gen "$GEN" \
            --n-ctx "$CTX" --threads "$THREADS" --variants engine-batched --top-k-block "$b" --top-k-preselect "$p" \
            --out "/tmp/sb-run/steps-$shape-block$b-pre$p.json"
    done
    if [ -n "$PENALTY" ]; then  # llama-cpp-python's default request: llama.cpp's penalties vs graph_tail's
        mkdir -p /tmp/sb-run
        timeout -k 10 "$(($(left) / 4))" python3 -m benchmarks.engine_steps --model "$f" \
            --label "$label, repeat penalty $PENALTY" --gpu --levels "$LEVELS" --prompt "$PROMPT" --gen "$GEN" \
            --n-ctx "$CTX" --threads "$THREADS" --variants engine-graph,engine-batched,engine-sampled \
            --repeat-penalty "$PENALTY" \
            --out "/tmp/sb-run/steps-$shape-penalty.json"
    fi
    if [ -n "$REBUILD" ]; then  # every micro-batch's graph built afresh: its cost against reuse
        mkdir -p /tmp/sb-run
        LLAMA_GRAPH_REUSE_DISABLE=1 timeout -k 10 "$(($(left) / 4))" python3 -m benchmarks.engine_steps --model "$f" \
            --label "$label, graph reuse off" --gpu --levels "$LEVELS" --prompt "$PROMPT" --gen "$GEN" \
            --n-ctx "$CTX" --threads "$THREADS" --variants engine-batched,engine-batched#2 \
            --out "/tmp/sb-run/steps-$shape-rebuild.json"
    fi
    fi
    if [ -n "$WARMUP_AB" ]; then  # the load's warm-up (entry warm_up): a fresh process each, off and on, twice
        mkdir -p /tmp/sb-warm
        for rep in 1 2; do
            for w in 0 1; do
                stamp "$shape: engine_steps, warm-up $w, run $rep"
                timeout -k 10 "$(($(left) / 4))" python3 -m benchmarks.engine_steps --model "$f" \
                    --label "$label, warm-up $w" --gpu --levels "$LEVELS" --prompt "$PROMPT" --gen "$GEN" \
                    --n-ctx "$CTX" --threads "$THREADS" --warm-up "$w" --variants engine-batched,engine-batched#2 \
                    --out "/tmp/sb-warm/warm-up-$shape-$w-$rep.json" $STEPS_ARGS
            done
        done
        tar -czf "$OUT/warm-up-$shape.tgz" -C /tmp/sb-warm . && rm -rf /tmp/sb-warm
    fi
    [ -n "$THREADS_AB" ] && mkdir -p /tmp/sb-threads
    for rep in ${THREADS_AB:+1 2}; do  # the real decode's effect on the host's part of a step, by CPU threads
        for t in $THREADS_AB; do  # "8p": 8 threads with OpenMP's idle threads asleep at once (OMP_WAIT_POLICY=passive)
            policy=${OMP_WAIT_POLICY:-}
            [ "${t%p}" != "$t" ] && policy=passive
            stamp "$shape: engine_steps with $t CPU threads, run $rep"
            env ${policy:+OMP_WAIT_POLICY=$policy} timeout -k 10 "$(($(left) / 4))" python3 -m benchmarks.engine_steps --model "$f" \
                --label "$label, $t CPU threads" --gpu --levels "$LEVELS" --prompt "$PROMPT" --gen "$GEN" \
                --n-ctx "$CTX" --threads "${t%p}" --variants engine-batched --split --out "/tmp/sb-threads/threads-$shape-$t-$rep.json"
        done
    done
    if [ -n "$THREADS_AB" ]; then  # one archive: at most 8 files come back (session 19 lost three of six)
        tar -czf "$OUT/threads-$shape.tgz" -C /tmp/sb-threads . && rm -rf /tmp/sb-threads
    fi
    if [ -n "$TURNS" ]; then  # long stories without HTTP: the engine's shape-keeping switches, alternating
        stamp "$shape: engine_turns"
        # shellcheck disable=SC2086
        timeout -k 10 "$(($(left) / 2))" python3 -m benchmarks.engine_turns --model "$f" --label "$label" --gpu \
            --conversations 16 --turns "$TURNS" --threads "$THREADS" --variants "$STORY_VARIANTS" \
            --out "$OUT/turns-$shape.json" $TURNS_ARGS
        stamp "engine_turns exit $?"
    fi
    if [ -n "$PROMPT_COST" ]; then  # a prompt micro-batch's cost by tokens, sequences and depth
        stamp "$shape: prompt_cost at depths $PROMPT_COST"
        timeout -k 10 "$(($(left) / 4))" python3 -m benchmarks.prompt_cost --model "$f" --label "$label" --gpu \
            --slots 16 --n-ctx "$CTX" --depths "$PROMPT_COST" --threads "$THREADS" --out "$OUT/prompt-cost-$shape.json"
        stamp "prompt_cost exit $?"
    fi
    if [ -n "$HOST_PATH" ]; then  # the host's part of a step on this machine, its decode skipped (seconds)
        stamp "$shape: host_path at $HOST_PATH"
        timeout -k 10 "$(($(left) / 4))" python3 -m benchmarks.host_path --model "$f" --label "$label" --gpu \
            --levels "$HOST_PATH" --n-ctx "$CTX" --threads "$THREADS" --split --out "$OUT/host-path-$shape.json"
        stamp "host_path exit $?"
    fi
    for n in $ATTACH; do  # first tokens into unused and used slots, READY_CHAINS off and on
        stamp "$shape: attach_cost at $n slots"
        timeout -k 10 "$(($(left) / 4))" python3 -m benchmarks.attach_cost --model "$f" --label "$label" --gpu \
            --parallel "$n" --threads "$THREADS" --out "$OUT/attach-$shape-$n.json"
        stamp "attach_cost exit $?"
    done
    if [ -n "$KV_POOL" ]; then  # conversations held per GiB of KV: ours' pool against native's slots
        stamp "$shape: kv_pool $KV_POOL"
        # shellcheck disable=SC2086
        timeout -k 10 "$(($(left) / 2))" python3 -m benchmarks.kv_pool --model "$f" --gpu --threads "$THREADS" \
            $KV_POOL --out "$OUT/kv-pool-$shape.json"
        stamp "kv_pool exit $?"
    fi
    if [ -n "$DEEP_NPP" ]; then  # the long-story reference: batched-bench at PROMPT and a story's final depth
        # (two depths: `benchmarks.story_bound` interpolates the stories' decode steps between them)
        stamp "$shape: llama-batched-bench at depth $DEEP_NPP"
        timeout -k 10 "$(($(left) / 4))" llama-batched-bench -m "$f" -ngl 99 -fa on -c $((CTX * 16)) -b 512 -ub 512 \
            -t "$THREADS" -npp "$PROMPT,$DEEP_NPP" -ntg "$GEN" -npl 16 > "$OUT/batched-bench-deep-$shape.txt" 2>&1
        stamp "deep batched-bench exit $?"; grep '^|' "$OUT/batched-bench-deep-$shape.txt"
    fi
    [ "$HTTP_LEVELS" = none ] && continue
    case " $HTTP_SHAPES " in *" $shape "*) ;; *) continue ;; esac
    stamp "$shape: HTTP concurrency $HTTP_LEVELS"
    # shellcheck disable=SC2086
    timeout -k 20 "$((share > $(left) - 10 ? $(left) - 10 : share))" python3 -m benchmarks.run --gpu --model "$f::$label" \
        --benchmarks concurrency --concurrency "$HTTP_LEVELS" --repeats "$HTTP_REPEATS" --ours-engine batched \
        --ctx "$CTX" --max-tokens "$GEN" --threads "$THREADS" --workdir "/tmp/sb-run/$shape" \
        --out-json "$OUT/http-$shape.json" --results-dir none --markdown none $HTTP_ARGS
    stamp "HTTP exit $?"
done
mkdir -p /tmp/sb-run && mv "$OUT"/quantize-*.log /tmp/sb-run/ 2>/dev/null  # at most 8 files come back
tar -czf "$OUT/server-logs.tgz" -C /tmp sb-run 2>/dev/null
stamp "done"
