#!/usr/bin/env python3
"""Sanity check that GGUF Q/K rows need *adjacent-pair* RoPE (ggml 'normal' mode).

Compares the mean next-token NLL of the reference on the first 400 tokens of
texts/lighthouses.txt with the reference's adjacent-pair rope versus NeoX/HF half-split
rope. The correct pairing gives a much lower perplexity (SmolLM2 Q4_1: ~28 vs ~250).
"""
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gguf_tokenizer import build_tokenizer  # noqa: E402
from numpy_llama import LlamaModel  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/batchmax/SmolLM2-135M-Instruct.Q4_1.gguf")
m = LlamaModel(path, np.float32)
tok, _ = build_tokenizer(m.reader)
ids = tok.encode(open(os.path.join(HERE, "texts/lighthouses.txt"), encoding="utf-8").read()).ids[:400]


def mean_nll():
    m.reset()
    logits = m.forward(ids, all_logits=True)[:-1]
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -logp[np.arange(len(ids) - 1), ids[1:]].mean()


def neox_rope(self, x, positions):
    ang = np.outer(positions * self.pos_scale, self.inv_freq)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    h = self.cfg.n_rot // 2
    a, b = x[..., :h], x[..., h:2 * h]
    return np.concatenate([a * c - b * s, a * s + b * c, x[..., 2 * h:]], -1).astype(x.dtype)


adjacent = mean_nll()
m.rope = neox_rope.__get__(m)
neox = mean_nll()
print(f"adjacent-pair rope: NLL {adjacent:.3f} ppl {np.exp(adjacent):.1f}")
print(f"neox half-split rope: NLL {neox:.3f} ppl {np.exp(neox):.1f}")
sys.exit(0 if adjacent < neox else 1)
