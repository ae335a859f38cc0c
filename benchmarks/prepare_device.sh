#!/usr/bin/env bash
# `make bench-gpu`: prepare what the GPU benchmark command carries to the lent GPU machine, then say
# how to run it and how to record its results here. Idempotent. Run from the repository root.
#   .device/  the CUDA llama.cpp bundle, llama-batched-bench and the Llama 3 vocabulary (from ../shared/device)
#   .whl/     the 15 wheels our server needs beyond the GPU machine's image (cp312, manylinux)
set -euo pipefail
SHARED=${SHARED:-../shared/device}
PY=${PY:-.venv/bin/python}
for d in /.device/ /.whl/ /.bench/; do
    grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
mkdir -p .device .whl
for f in llama-cuda-sm90.tgz vocab-llama-bpe.json.gz llama-batched-bench-sm90.tgz; do
    [ -f ".device/$f" ] || cp "$SHARED/$f" .device/
done
if [ "$(ls .whl/*.whl 2>/dev/null | wc -l)" -lt 15 ]; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        fastapi==0.165.0 uvicorn==0.54.0 sse-starlette==3.7.0 starlette-context==0.3.6 pydantic-settings==2.16.3 \
        pydantic==2.14.4 pydantic-core==2.50.5 anyio==4.16.0 starlette==1.10.0 typing-extensions==4.16.0 \
        typing-inspection==0.4.5 annotated-types==0.8.0 diskcache==5.6.3 python-dotenv==1.2.4 opentelemetry-api==1.45.2
fi
du -sh .device .whl
commit=$(git rev-parse --short HEAD)$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo +dirty)
cat <<EOF

Ready. With the device tool, run both shapes (1B and 8B) in ONE call; it stays within DEADLINE_S=560 s
(~115 s setup and models, then each shape under its own time limit; see benchmarks/device_run.sh):
  run(command='STORYBENCH_COMMIT=$commit bash benchmarks/device_run.sh',
      carry=['.device', '.whl'], timeout_s=600, kind='nvidia-h200')
Then record its results here (files_at is in the tool's reply):
  $PY -m benchmarks.run --ingest <files_at>/gpu.json --tag h200
EOF
