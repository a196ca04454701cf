#!/usr/bin/env python3
"""Tiny synthetic GGUF models and their golden outputs for tests/golden/test_tiny_models.cpp.

The real-model golden test (SmolLM2) covers one configuration only. These models cover the
other paths the engine supports, each a 2-layer model with random (seeded) weights:

  qwen2_f16      qwen2: Q/K/V biases, NeoX rope, theta 1e6, untied output.weight,
                 F16 / BF16 / F32 weights (and an F16 bias and norm vector)
  llama3_quant   llama with a rope_freqs.weight tensor (Llama-3 factors); Q4_0, Q8_0,
                 Q4_K, Q6_K weights (n_embd 256: K-quant rows are 256 long)
  llama3_meta    llama with llama.rope.scaling.type = llama3 metadata and no tensor;
                 Q8_0 / Q4_0 / F32 weights

gguf.quants cannot quantise K-quants, so Q4_K / Q6_K tensors are random valid blocks
(sane fp16 scales, random quants): engine and reference dequantise the same bytes.

Writes tests/golden/data/tiny/<name>.gguf and tests/golden/data/tiny_models.json (the
reference's last-prompt-position logits, all of the vocabulary, and 16 greedy tokens).
The GGUFs are committed; re-running this script rewrites them byte for byte.

Usage: python3 scripts/reference/make_tiny_models.py [--out DIR]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import quantize  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from gguf_tokenizer import build_tokenizer  # noqa: E402
from numpy_llama import LlamaModel  # noqa: E402

N_NEW = 16

# ---------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"),
          ("o", "n"), ("Ġ", "s"), ("a", "t"), ("e", "n"), ("Ġ", "w"), ("o", "r"),
          ("Ġ", "o"), ("i", "s"), ("Ġa", "n"), ("e", "s")]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """256 byte tokens, one token per merge, then the control tokens."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)] + [a + b for a, b in MERGES] + SPECIALS
    types = [1] * (256 + len(MERGES)) + [3] * len(SPECIALS)   # 1 normal, 3 control
    assert len(set(tokens)) == len(tokens)
    return tokens, types, [f"{a} {b}" for a, b in MERGES]


# ---------------------------------------------------------------- weights

def f16(x: float) -> np.ndarray:
    return np.array([x], dtype=np.float16).view(np.uint8)


def random_q4_k(rng, rows: int, cols: int, std: float) -> np.ndarray:
    """Valid Q4_K blocks: d, dmin (fp16), 12 bytes of 6-bit scales/mins, 128 nibble bytes.
    w = d*sc*q - dmin*m with q in 0..15, sc and m in 0..63: E|d*sc*q| ~ 236 d, so
    dmin ~ 7.5 d centres the weights, and their spread is ~ 220 d."""
    nb = rows * cols // 256
    d = std / 220 * rng.uniform(0.5, 1.5, nb)
    dmin = 7.5 * d * rng.uniform(0.8, 1.2, nb)
    out = np.empty((nb, 144), np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin.astype(np.float16).view(np.uint8).reshape(nb, 2)
    out[:, 4:] = rng.integers(0, 256, (nb, 140), dtype=np.uint8)
    return out.reshape(rows, cols // 256 * 144)


def random_q6_k(rng, rows: int, cols: int, std: float) -> np.ndarray:
    """Valid Q6_K blocks: ql[128], qh[64], 16 int8 scales, d (fp16). w = d*sc*(q-32);
    scales kept in -32..31 so that d stays a normal fp16; spread ~ 341 d."""
    nb = rows * cols // 256
    d = std / 341 * rng.uniform(0.5, 1.5, nb)
    out = np.empty((nb, 210), np.uint8)
    out[:, 0:192] = rng.integers(0, 256, (nb, 192), dtype=np.uint8)
    out[:, 192:208] = rng.integers(-32, 32, (nb, 16), dtype=np.int8).view(np.uint8)
    out[:, 208:210] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
    return out.reshape(rows, cols // 256 * 210)


def make_tensor(rng, qtype: QT, rows: int, cols: int, std: float, mean: float = 0.0):
    """A [rows, cols] weight (numpy order; GGUF dims are [cols, rows]) of type qtype,
    returned as (array, raw_dtype) for GGUFWriter.add_tensor."""
    if qtype == QT.Q4_K:
        return random_q4_k(rng, rows, cols, std), qtype
    if qtype == QT.Q6_K:
        return random_q6_k(rng, rows, cols, std), qtype
    w = (mean + std * rng.standard_normal((rows, cols))).astype(np.float32)
    if rows == 1:
        w = w[0]
    if qtype == QT.F32:
        return w, None
    if qtype == QT.F16:
        return w.astype(np.float16), None
    return quantize(w, qtype), qtype   # BF16, Q4_0, Q8_0: ggml's rounding


# ---------------------------------------------------------------- models

class Spec:
    def __init__(self, name, arch, n_embd, n_head, n_head_kv, head_dim, n_ff, rope_theta,
                 types, seed, untied=False, bias_types=None, rope_freqs=None, rope_meta=None):
        self.__dict__.update(locals())
        del self.__dict__["self"]


def llama3_factors(n_rot, theta, factor, low, high, orig_ctx) -> np.ndarray:
    """Per-pair frequency divisors, as llama.cpp's converter stores rope_freqs.weight."""
    out = []
    for i in range(n_rot // 2):
        wavelen = 2 * math.pi * theta ** (2 * i / n_rot)
        if wavelen < orig_ctx / high:
            out.append(1.0)
        elif wavelen > orig_ctx / low:
            out.append(factor)
        else:
            s = (orig_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


# A small original context makes all three llama3 regimes (unchanged, smoothed, divided
# by the factor) occur within a head of 16 or 32 dims.
LLAMA3 = dict(factor=8.0, low=1.0, high=4.0, orig_ctx=64)

# Per layer: types of attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down,
# then token_embd, output (untied only), norms.
SPECS = [
    Spec("qwen2_f16", "qwen2", n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=128,
         rope_theta=1e6, seed=1, untied=True,
         types=dict(layers=[[QT.F16, QT.BF16, QT.F32, QT.F16, QT.BF16, QT.F16, QT.F32],
                            [QT.BF16, QT.F16, QT.F16, QT.F32, QT.F16, QT.BF16, QT.BF16]],
                    token_embd=QT.F16, output=QT.BF16, norm=QT.F32),
         bias_types=[QT.F32, QT.F16, QT.F32]),
    Spec("llama3_quant", "llama", n_embd=256, n_head=4, n_head_kv=2, head_dim=32, n_ff=128,
         rope_theta=500000.0, seed=2,
         types=dict(layers=[[QT.Q4_K, QT.Q6_K, QT.Q8_0, QT.Q4_0, QT.Q6_K, QT.Q4_K, QT.Q4_0],
                            [QT.Q4_0, QT.Q4_K, QT.Q4_0, QT.Q4_0, QT.Q4_K, QT.Q4_0, QT.Q4_0]],
                    token_embd=QT.Q4_K, norm=QT.F32),
         rope_freqs=LLAMA3),
    Spec("llama3_meta", "llama", n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=128,
         rope_theta=10000.0, seed=3,
         types=dict(layers=[[QT.Q8_0, QT.Q8_0, QT.Q4_0, QT.Q8_0, QT.Q8_0, QT.Q4_0, QT.Q8_0],
                            [QT.F32, QT.Q8_0, QT.Q8_0, QT.Q4_0, QT.Q4_0, QT.Q8_0, QT.F32]],
                    token_embd=QT.Q8_0, norm=QT.F32),
         rope_meta=LLAMA3),
]


def write_model(spec: Spec, path: pathlib.Path):
    rng = np.random.default_rng(spec.seed)
    tokens, types, merges = vocabulary()
    n_vocab = len(tokens)
    a = spec.arch
    w = gguf.GGUFWriter(str(path), a)
    w.add_name(f"tiny-{spec.name}")
    w.add_context_length(256)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(len(spec.types["layers"]))
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(n_vocab)
    if spec.rope_meta:
        m = spec.rope_meta
        w.add_string(f"{a}.rope.scaling.type", "llama3")   # not in gguf's RopeScalingType
        w.add_float32(f"{a}.rope.scaling.factor", m["factor"])
        w.add_float32(f"{a}.rope.scaling.low_freq_factor", m["low"])
        w.add_float32(f"{a}.rope.scaling.high_freq_factor", m["high"])
        w.add_uint32(f"{a}.rope.scaling.original_context_length", m["orig_ctx"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")   # what scripts/reference/gguf_tokenizer.py implements
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = tokens.index("<|endoftext|>")
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)

    d, hd = spec.n_embd, spec.head_dim
    nq, nkv, ff = spec.n_head * hd, spec.n_head_kv * hd, spec.n_ff
    T = spec.types

    def add(name, qtype, rows, cols, std, mean=0.0):
        arr, raw = make_tensor(rng, qtype, rows, cols, std, mean)
        w.add_tensor(name, arr, raw_dtype=raw)

    # Tied: logits are embedding rows dotted with a unit-RMS vector, so rows of norm ~2
    # give logits of a few units (and keep the embedding from dominating the residual).
    add("token_embd.weight", T["token_embd"], n_vocab, d, 1.0 if spec.untied else 2.0 / math.sqrt(d))
    if spec.rope_freqs:
        m = spec.rope_freqs
        w.add_tensor("rope_freqs.weight", llama3_factors(hd, spec.rope_theta, m["factor"], m["low"],
                                                         m["high"], m["orig_ctx"]))
    for i, lt in enumerate(T["layers"]):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", T["norm"], 1, d, 0.1, 1.0)
        # q and k scaled up so that attention is sharp and positions (rope) matter.
        add(p + "attn_q.weight", lt[0], nq, d, 2.0 / math.sqrt(d))
        add(p + "attn_k.weight", lt[1], nkv, d, 2.0 / math.sqrt(d))
        add(p + "attn_v.weight", lt[2], nkv, d, 1.0 / math.sqrt(d))
        if spec.bias_types:
            for (nm, n), bt in zip((("attn_q", nq), ("attn_k", nkv), ("attn_v", nkv)), spec.bias_types):
                add(p + nm + ".bias", bt, 1, n, 0.5)
        add(p + "attn_output.weight", lt[3], d, nq, 1.0 / math.sqrt(nq))
        add(p + "ffn_norm.weight", QT.F16 if spec.untied else T["norm"], 1, d, 0.1, 1.0)
        add(p + "ffn_gate.weight", lt[4], ff, d, 1.0 / math.sqrt(d))
        add(p + "ffn_up.weight", lt[5], ff, d, 1.0 / math.sqrt(d))
        add(p + "ffn_down.weight", lt[6], d, ff, 1.0 / math.sqrt(ff))
    add("output_norm.weight", T["norm"], 1, d, 0.1, 1.0)
    if spec.untied:
        add("output.weight", T["output"], n_vocab, d, 2.0 / math.sqrt(d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------- reference

PROMPTS = [
    ("one_token", "The"),
    ("chat", "<|im_start|>user\nWhat is the sea?<|im_end|>\n<|im_start|>assistant\n"),
    # ~100 tokens: rope at positions where the llama3 scaling of low frequencies shows.
    ("prose", "The lighthouse keeper wrote in his log that the sea was calm at dawn, "
              "then the wind turned and the waves rose over the stones of the pier."),
]


def variant_error(model: LlamaModel, ids, logits, **change) -> float:
    """Largest logit change when the reference runs with `change` applied: shows that
    the golden data would catch the engine getting that path wrong."""
    saved = {k: getattr(model, k) for k in change}
    for k, v in change.items():
        setattr(model, k, v)
    model.reset()
    other = model.forward(ids)
    for k, v in saved.items():
        setattr(model, k, v)
    return float(np.max(np.abs(other - logits)))


def reference(spec: Spec, path: pathlib.Path) -> dict:
    model = LlamaModel(str(path))
    tok, tinfo = build_tokenizer(model.reader)
    cfg = model.cfg
    plain = cfg.rope_theta ** (-np.arange(0, cfg.n_rot, 2, dtype=np.float64) / cfg.n_rot)
    prompts = []
    for name, text in PROMPTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
        logits, new, tops = model.greedy(ids, N_NEW, top_k=2)
        # Greedy tokens are compared exactly: every step needs a clear winner.
        margin = min(v[0] - v[1] for _, v in tops)
        assert margin > 1e-3, f"{spec.name}/{name}: near-tie in greedy decoding ({margin})"
        checks = {}
        if model.neox:
            checks["adjacent_pair_rope"] = variant_error(model, ids, logits, neox=False)
            zero = {f"{k}_b": None for k in ("attn_q", "attn_k", "attn_v")}
            saved = [dict((k, L[k]) for k in zero) for L in model.layers]
            for L in model.layers:
                L.update(zero)
            checks["no_bias"] = variant_error(model, ids, logits)
            for L, s in zip(model.layers, saved):
                L.update(s)
        if model.rope_mode != "none":
            checks["no_rope_scaling"] = variant_error(model, ids, logits, inv_freq=plain)
        prompts.append({
            "name": name, "text": text, "tokens": ids,
            "last_logits": logits.tolist(),
            "greedy_ids": new,
            "min_greedy_margin": margin,
            "logit_change_if_wrong": checks,
        })
        print(f"  {name}: {len(ids)} tokens, greedy {new}, margin {margin:.3g}, "
              f"|logits| max {np.abs(logits).max():.2f}, wrong-path changes {checks}")
    return {
        "name": spec.name, "file": f"tiny/{path.name}", "architecture": cfg.arch,
        "rope_mode": model.rope_mode, "neox_rope": bool(model.neox),
        "tied_embeddings": model.tied_embeddings, "n_vocab": model.n_vocab,
        "tensor_types": sorted({t.tensor_type.name for t in model.reader.tensors}),
        "prompts": prompts,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "tests/golden/data")
    args = ap.parse_args()
    (args.out / "tiny").mkdir(parents=True, exist_ok=True)
    models = []
    for spec in SPECS:
        path = args.out / "tiny" / f"{spec.name}.gguf"
        write_model(spec, path)
        print(f"{path.name}: {path.stat().st_size} bytes")
        models.append(reference(spec, path))
    golden = {
        "description": "Tiny synthetic models (scripts/reference/make_tiny_models.py) and the "
                       "float64 NumPy reference's outputs (scripts/reference/numpy_llama.py)",
        "n_new": N_NEW,
        "greedy": "argmax, no stop on EOS; last_logits are the prefill's last position",
        "versions": {"numpy": np.__version__, "gguf": importlib.metadata.version("gguf")},
        "models": models,
    }
    out = args.out / "tiny_models.json"
    out.write_text(json.dumps(golden, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
