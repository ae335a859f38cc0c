"""StoryBench benchmarks: our server and evaluator side by side with native llama.cpp.

`python -m benchmarks.run --help` (or `make bench`); BENCHMARKS.md holds the results and how to read them.
"""
