#!/usr/bin/env python3
"""Independent NumPy reference forward pass for Llama-architecture GGUF models.

This file deliberately shares no code with the C++ engine. It uses only numpy and the
`gguf` PyPI package (for parsing the container and dequantising tensors).

Conventions (ggml / llama.cpp GGUF layout):
  * GGUF tensor dims are reversed relative to numpy: dims[0] is the row length. The
    `gguf` reader already exposes `tensor.data` in numpy order, and
    `gguf.quants.dequantize` returns a [rows, row_len] array, i.e. a matrix W with
    y = W @ x (out_features x in_features).
  * llama.cpp's HF->GGUF converter permutes the rows of attn_q / attn_k so that RoPE acts
    on *adjacent* pairs (x[2i], x[2i+1]) ("normal" rope in ggml terms), not on the
    NeoX/HF halves (x[i], x[i + d/2]). Pair i is rotated by pos * theta^(-2i/n_rot).
  * qwen2 is converted without that permutation, so llama.cpp runs it with NeoX rope
    (LLAMA_ROPE_TYPE_NEOX): pair i is (x[i], x[i + n_rot/2]), same frequencies.

Precision: weights are dequantised by `gguf` to float32 (exact for Q4_1/Q8_0 blocks:
d*q + m evaluated in fp32) and then up-cast to the compute dtype (float64 by default,
float32 optional). Softmax and RMSNorm statistics are always evaluated in float64.
"""
from __future__ import annotations

import math
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

SUPPORTED_ARCHS = ("llama", "qwen2")


def _field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


class Config:
    def __init__(self, reader: GGUFReader):
        arch = _field(reader, "general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported architecture {arch!r}")
        g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)  # noqa: E731
        self.arch = arch
        self.n_layer = int(g("block_count"))
        self.n_embd = int(g("embedding_length"))
        self.n_ff = int(g("feed_forward_length"))
        self.n_head = int(g("attention.head_count"))
        self.n_head_kv = int(g("attention.head_count_kv", self.n_head))
        self.head_dim = int(g("attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(g("rope.dimension_count", self.head_dim))
        self.rope_theta = float(g("rope.freq_base", 10000.0))
        self.eps = float(g("attention.layer_norm_rms_epsilon", 1e-5))
        self.n_ctx_train = int(g("context_length", 2048))
        # Optional rope scaling from metadata (a rope_freqs.weight tensor takes precedence).
        self.rope_scaling_type = g("rope.scaling.type", "none")
        self.rope_scaling_factor = float(g("rope.scaling.factor", 0.0) or 0.0)
        self.rope_scaling_low_freq = float(g("rope.scaling.low_freq_factor", 1.0))
        self.rope_scaling_high_freq = float(g("rope.scaling.high_freq_factor", 4.0))
        self.rope_scaling_orig_ctx = int(g("rope.scaling.original_context_length",
                                           self.n_ctx_train))

    def __repr__(self):
        return f"Config({vars(self)})"


def llama3_freq_factors(cfg: Config) -> np.ndarray:
    """Per-pair frequency divisors for Llama-3.1 rope scaling (same rule as HF/Meta)."""
    inv_freq = cfg.rope_theta ** (-np.arange(0, cfg.n_rot, 2, dtype=np.float64) / cfg.n_rot)
    wavelen = 2 * math.pi / inv_freq
    low_wl = cfg.rope_scaling_orig_ctx / cfg.rope_scaling_low_freq
    high_wl = cfg.rope_scaling_orig_ctx / cfg.rope_scaling_high_freq
    factors = np.ones_like(inv_freq)
    factors[wavelen > low_wl] = cfg.rope_scaling_factor
    mid = (wavelen <= low_wl) & (wavelen >= high_wl)
    smooth = (cfg.rope_scaling_orig_ctx / wavelen[mid] - cfg.rope_scaling_low_freq) / (
        cfg.rope_scaling_high_freq - cfg.rope_scaling_low_freq)
    # new_freq = (1 - s) * f / factor + s * f  ==>  divisor = 1 / ((1 - s) / factor + s)
    factors[mid] = 1.0 / ((1 - smooth) / cfg.rope_scaling_factor + smooth)
    return factors


class LlamaModel:
    def __init__(self, path: str, dtype=np.float64):
        self.dtype = np.dtype(dtype)
        reader = GGUFReader(path)
        self.cfg = cfg = Config(reader)
        self.reader = reader
        tensors = {t.name: t for t in reader.tensors}

        def load(name, required=True):
            t = tensors.get(name)
            if t is None:
                if required:
                    raise KeyError(name)
                return None
            return np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=self.dtype)

        self.tok_embd = load("token_embd.weight")               # [vocab, n_embd]
        self.output_norm = load("output_norm.weight")
        out = load("output.weight", required=False)
        self.output = self.tok_embd if out is None else out      # tied embeddings
        self.tied_embeddings = out is None
        self.n_vocab = self.tok_embd.shape[0]
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            L = {k: load(p + k + ".weight") for k in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
            for k in ("attn_q", "attn_k", "attn_v"):                # qwen2-style biases
                L[k + "_b"] = load(p + k + ".bias", required=False)
            self.layers.append(L)

        # RoPE inverse frequencies for adjacent pairs (2i, 2i+1), i < n_rot/2.
        inv_freq = cfg.rope_theta ** (-np.arange(0, cfg.n_rot, 2, dtype=np.float64) / cfg.n_rot)
        rope_freqs = load("rope_freqs.weight", required=False)
        self.pos_scale = 1.0
        if rope_freqs is not None:                                # llama3 as stored by llama.cpp
            inv_freq = inv_freq / rope_freqs.astype(np.float64)
            self.rope_mode = "freq_factors_tensor"
        elif cfg.rope_scaling_type == "llama3" and cfg.rope_scaling_factor > 0:
            inv_freq = inv_freq / llama3_freq_factors(cfg)
            self.rope_mode = "llama3_metadata"
        elif cfg.rope_scaling_type == "linear" and cfg.rope_scaling_factor > 0:
            self.pos_scale = 1.0 / cfg.rope_scaling_factor
            self.rope_mode = "linear"
        elif cfg.rope_scaling_type in ("none", None, ""):
            self.rope_mode = "none"
        else:
            raise NotImplementedError(f"rope scaling {cfg.rope_scaling_type!r}")
        self.inv_freq = inv_freq
        # qwen2's q/k rows are in HF order: rotate halves (see the module docstring).
        self.neox = cfg.arch == "qwen2"
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self):
        """Clear the KV cache. Per layer: k, v buffers [capacity, n_head_kv, head_dim];
        rows [0, n_past) are valid. Buffers grow by doubling."""
        self.cache = [(None, None)] * self.cfg.n_layer
        self.capacity = 0
        self.n_past = 0

    def _reserve(self, n):
        if n <= self.capacity:
            return
        cap = max(n, 2 * self.capacity, 64)
        shape = (cap, self.cfg.n_head_kv, self.cfg.head_dim)
        grown = []
        for kc, vc in self.cache:
            k2, v2 = np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)
            if kc is not None:
                k2[:self.n_past], v2[:self.n_past] = kc[:self.n_past], vc[:self.n_past]
            grown.append((k2, v2))
        self.cache, self.capacity = grown, cap

    # ----------------------------------------------------------------- ops
    def rms_norm(self, x, w):
        x64 = x.astype(np.float64)
        r = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + self.cfg.eps)
        return (x64 * r).astype(self.dtype) * w

    def rope(self, x, positions):
        """x: [T, H, head_dim]; rotate the pairs of the first n_rot dims: adjacent
        (2i, 2i+1), or (i, i + n_rot/2) for NeoX."""
        ang = np.outer(positions.astype(np.float64) * self.pos_scale, self.inv_freq)  # [T, n_rot/2]
        cos = np.cos(ang)[:, None, :].astype(self.dtype)
        sin = np.sin(ang)[:, None, :].astype(self.dtype)
        n = self.cfg.n_rot
        first, second = (slice(0, n // 2), slice(n // 2, n)) if self.neox else \
            (slice(0, n, 2), slice(1, n, 2))
        x0, x1 = x[..., first], x[..., second]
        out = x.copy()
        out[..., first] = x0 * cos - x1 * sin
        out[..., second] = x0 * sin + x1 * cos
        return out

    def attention(self, q, k, v, positions):
        """q: [T, H, D]; k, v: [S, Hkv, D] (whole cache incl. current tokens)."""
        T, H, D = q.shape
        S, Hkv, _ = k.shape
        g = H // Hkv                                   # query heads per kv head (GQA)
        qh = q.reshape(T, Hkv, g, D).transpose(1, 2, 0, 3).astype(np.float64)  # [Hkv,g,T,D]
        kh = k.transpose(1, 0, 2).astype(np.float64)   # [Hkv, S, D]
        vh = v.transpose(1, 0, 2).astype(np.float64)
        scores = (qh @ kh[:, None].transpose(0, 1, 3, 2)) / math.sqrt(D)   # [Hkv,g,T,S]
        causal = np.arange(S)[None, :] > positions[:, None]      # [T, S]: key after query
        scores[..., causal] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out = p @ vh[:, None]                           # [Hkv, g, T, D]
        return out.transpose(2, 0, 1, 3).reshape(T, H * D).astype(self.dtype)

    # ----------------------------------------------------------------- forward
    def forward(self, tokens, all_logits=False):
        """Run `tokens` after the cached prefix. Returns logits [vocab] for the last
        token (or [T, vocab] with all_logits=True) in float64."""
        cfg = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        T = len(tokens)
        end = self.n_past + T
        positions = np.arange(self.n_past, end)
        self._reserve(end)
        x = self.tok_embd[tokens]                                   # [T, n_embd]
        for li, L in enumerate(self.layers):
            h = self.rms_norm(x, L["attn_norm"])
            q, k, v = h @ L["attn_q"].T, h @ L["attn_k"].T, h @ L["attn_v"].T
            if L["attn_q_b"] is not None:
                q, k, v = q + L["attn_q_b"], k + L["attn_k_b"], v + L["attn_v_b"]
            q = self.rope(q.reshape(T, cfg.n_head, cfg.head_dim), positions)
            k = self.rope(k.reshape(T, cfg.n_head_kv, cfg.head_dim), positions)
            v = v.reshape(T, cfg.n_head_kv, cfg.head_dim)
            kc, vc = self.cache[li]
            kc[self.n_past:end], vc[self.n_past:end] = k, v
            x = x + self.attention(q, kc[:end], vc[:end], positions) @ L["attn_output"].T
            h = self.rms_norm(x, L["ffn_norm"])
            gate = h @ L["ffn_gate"].T
            act = gate / (1.0 + np.exp(-gate.astype(np.float64))).astype(self.dtype)  # SiLU
            x = x + (act * (h @ L["ffn_up"].T)) @ L["ffn_down"].T
        self.n_past += T
        x = x if all_logits else x[-1:]
        logits = self.rms_norm(x, self.output_norm) @ self.output.T
        logits = logits.astype(np.float64)
        return logits if all_logits else logits[0]

    def greedy(self, prompt_tokens, n_new, top_k=0):
        """Prefill + greedy decode. Returns (prefill_logits, new_tokens, per-step top_k)."""
        self.reset()
        logits = self.forward(prompt_tokens)
        prefill_logits = logits
        new, tops = [], []
        for step in range(n_new):
            if top_k:
                idx = np.argsort(-logits, kind="stable")[:top_k]
                tops.append((idx.tolist(), logits[idx].tolist()))
            tok = int(np.argmax(logits))
            new.append(tok)
            if step + 1 < n_new:
                logits = self.forward([tok])
        return prefill_logits, new, tops


if __name__ == "__main__":
    import time
    path = sys.argv[1]
    m = LlamaModel(path)
    print(m.cfg, "rope_mode:", m.rope_mode, "neox:", m.neox, "tied:", m.tied_embeddings)
    ids = [int(t) for t in sys.argv[2:]] or [504, 3575, 282, 4649, 314]
    t0 = time.time()
    _, new, _ = m.greedy(ids, 16)
    print(new, f"{time.time() - t0:.2f}s")
