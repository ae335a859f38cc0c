"""Synthetic Llama-architecture GGUF models: real shapes, random weights, the Llama 3 tokenizer.

Real model weights cannot travel to the GPU machine (64 MiB per call), so the GPU benchmarks run on
models written here: the exact tensor shapes of a 1B-class and an 8B-class Llama 3 model, F16 random
weights (N(0, 0.02)), then quantised with the native `llama-quantize` (see `benchmarks/device_run.sh`).
Speed is that of the real shape; the text they produce is meaningless.

Answers must all be the same length: the output-projection rows of the end-of-generation tokens are
zero, so their logit is always 0 while the other ~128k logits spread around 0 with a standard
deviation near 1 (greedy decoding and top-k sampling never pick them). The harness still checks
that every answer has exactly `max_tokens` tokens.

The tokenizer (tokens, types, merges of llama.cpp's `models/ggml-vocab-llama-bpe.gguf`) comes from a
vocab-only GGUF or a JSON(.gz) extract of it with the keys `tokens`, `token_type`, `merges`; the
Llama 3 Instruct chat template is embedded so both servers render prompts the same way.

    python -m benchmarks.gen_model VOCAB OUT.gguf --shape llama-1b [--seed 1]
    python -m benchmarks.gen_model VOCAB OUT.gguf --shape custom:HIDDEN:LAYERS:HEADS:KV_HEADS:FFN:TIED
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The Llama 3 Instruct template, byte for byte as llama-cpp-python knows it (so it is recognised as
# its "llama-3" format) and as native llama-server renders it with its Jinja engine.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
    "<|end_header_id|>\n\n' }}{% endif %}"
)
BOS_ID, EOS_ID, EOT_ID = 128000, 128001, 128009
# Token texts llama.cpp also treats as end of generation when present in the vocabulary.
EOG_TEXTS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>")


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    tied: bool  # output projection shares the token embedding

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params(self, n_vocab: int) -> int:
        kv = self.kv_heads * self.head_dim
        per_layer = 2 * self.hidden * self.hidden + 2 * kv * self.hidden + 3 * self.ffn * self.hidden
        return n_vocab * self.hidden * (1 if self.tied else 2) + self.layers * per_layer


SHAPES = {
    # Llama 3.2 1B and Llama 3.1 8B.
    "llama-1b": Shape("synthetic-llama-1b", 2048, 16, 32, 8, 8192, True),
    "llama-8b": Shape("synthetic-llama-8b", 4096, 32, 32, 8, 14336, False),
    # For smoke tests: tiny layers, the full 128k vocabulary.
    "tiny": Shape("synthetic-llama-tiny", 256, 2, 4, 2, 512, True),
}


def parse_shape(text: str) -> Shape:
    if text in SHAPES:
        return SHAPES[text]
    if text.startswith("custom:"):
        h, n_layers, heads, kvh, ffn, tied = (int(x) for x in text.split(":")[1:])
        return Shape(f"synthetic-llama-{h}x{n_layers}", h, n_layers, heads, kvh, ffn, bool(tied))
    raise SystemExit(f"unknown shape {text!r}: one of {', '.join(SHAPES)} or custom:H:L:HEADS:KV:FFN:TIED")


@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]

    def eog_ids(self) -> list[int]:
        ids = {EOS_ID, EOT_ID} if len(self.tokens) > EOT_ID else set()
        ids |= {i for i, t in enumerate(self.tokens) if t in EOG_TEXTS}
        return sorted(ids)


def load_vocab(path: Path) -> Vocab:
    name = path.name
    if name.endswith((".json", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            d = json.load(f)
        return Vocab(d["tokens"], [int(x) for x in d["token_type"]], d["merges"])
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    return Vocab(
        list(fields["tokenizer.ggml.tokens"].contents()),
        [int(x) for x in fields["tokenizer.ggml.token_type"].contents()],
        list(fields["tokenizer.ggml.merges"].contents()),
    )


class RandomPool:
    """N(0, std) fp16 values; each tensor is a view of a random window (little RAM, fast)."""

    def __init__(self, size: int, std: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.data = (self.rng.standard_normal(size, dtype=np.float32) * std).astype(np.float16)

    def take(self, rows: int, cols: int) -> np.ndarray:
        n = rows * cols
        start = int(self.rng.integers(0, self.data.size - n + 1))
        return self.data[start : start + n].reshape(rows, cols)


def write_model(out: Path, shape: Shape, vocab: Vocab, seed: int = 1, zero_eog: bool = True) -> Path:
    import gguf

    t0 = time.time()
    n_vocab = len(vocab.tokens)
    kv_dim = shape.kv_heads * shape.head_dim
    pool = RandomPool(max(n_vocab, shape.ffn) * shape.hidden + (1 << 22), 0.02, seed)

    w = gguf.GGUFWriter(str(out) + ".part", "llama")
    w.add_name(shape.name)
    w.add_description("StoryBench synthetic model: random weights in a real Llama shape; meaningless text")
    w.add_context_length(131072)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_eot_token_id(EOT_ID)
    w.add_add_bos_token(True)
    w.add_chat_template(LLAMA3_TEMPLATE)

    def output_rows(matrix: np.ndarray) -> np.ndarray:
        if not zero_eog:
            return matrix
        matrix = matrix.copy()
        matrix[vocab.eog_ids()] = 0  # logit 0 for end-of-generation: never the best token
        return matrix

    ones = np.ones(shape.hidden, dtype=np.float32)
    embd = pool.take(n_vocab, shape.hidden)
    w.add_tensor("token_embd.weight", output_rows(embd) if shape.tied else embd)
    w.add_tensor("output_norm.weight", ones)
    if not shape.tied:
        w.add_tensor("output.weight", output_rows(pool.take(n_vocab, shape.hidden)))
    for i in range(shape.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", pool.take(shape.hidden, shape.hidden))
        w.add_tensor(p + "attn_k.weight", pool.take(kv_dim, shape.hidden))
        w.add_tensor(p + "attn_v.weight", pool.take(kv_dim, shape.hidden))
        w.add_tensor(p + "attn_output.weight", pool.take(shape.hidden, shape.hidden))
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", pool.take(shape.ffn, shape.hidden))
        w.add_tensor(p + "ffn_up.weight", pool.take(shape.ffn, shape.hidden))
        w.add_tensor(p + "ffn_down.weight", pool.take(shape.hidden, shape.ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    os.replace(str(out) + ".part", out)
    print(
        f"wrote {out}: {shape.name} hidden={shape.hidden} layers={shape.layers} heads={shape.heads}/"
        f"{shape.kv_heads} ffn={shape.ffn} vocab={n_vocab} tied={shape.tied} "
        f"params={shape.params(n_vocab) / 1e9:.2f}B zeroed-eog={vocab.eog_ids() if zero_eog else []} "
        f"in {time.time() - t0:.1f}s",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vocab", type=Path, help="vocab-only GGUF, or its JSON(.gz) extract")
    ap.add_argument("out", type=Path, help="output F16 GGUF")
    ap.add_argument(
        "--shape", default="llama-1b", help=f"{', '.join(SHAPES)} or custom:H:L:HEADS:KV:FFN:TIED"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep-eog", action="store_true", help="do not zero the end-of-generation rows")
    args = ap.parse_args(argv)
    t0 = time.time()
    vocab = load_vocab(args.vocab)
    print(
        f"vocab: {len(vocab.tokens)} tokens, {len(vocab.merges)} merges ({time.time() - t0:.1f}s)", flush=True
    )
    write_model(args.out, parse_shape(args.shape), vocab, seed=args.seed, zero_eog=not args.keep_eog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
