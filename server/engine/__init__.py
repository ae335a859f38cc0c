"""The batched engine ("engine": "batched"): continuous batching of concurrent requests over
one llama.cpp context, built on llama-cpp-python's low-level bindings.

    model.py      the model, its multi-sequence context, prompts (llama-cpp-python's chat handlers)
    sampling.py   one llama.cpp sampler chain per request
    text.py       incremental detokenization and stop strings
    scheduler.py  slots, the step loop (one llama_decode per step), prefix reuse per slot
    host.py       which model is resident; swaps
    api.py        the OpenAI routes
    app.py        the ASGI app (key, request checks, /storybench/models)
"""
