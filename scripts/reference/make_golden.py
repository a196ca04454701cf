#!/usr/bin/env python3
"""Generate golden data for the C++ golden tests from the independent NumPy reference.

Writes:
  tests/golden/data/smollm2_golden.json  prompts, token ids, top-k, greedy continuations
  tests/golden/data/smollm2_logits.bin   last-prompt-position logits, float32 LE,
                                          n_vocab values per prompt, in prompt order

Usage: python3 scripts/reference/make_golden.py [--model PATH] [--out DIR] [--dtype float64]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")  # be polite on shared build machines
os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tokenizers  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from gguf_tokenizer import build_tokenizer  # noqa: E402
from numpy_llama import LlamaModel  # noqa: E402

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(user: str, system: str = SYSTEM) -> str:
    """SmolLM2's chat template with add_generation_prompt=True."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def prompts() -> list[tuple[str, str]]:
    lighthouses = (HERE / "texts" / "lighthouses.txt").read_text(encoding="utf-8").strip()
    bread = (HERE / "texts" / "bread.txt").read_text(encoding="utf-8").strip()
    return [
        ("capital_plain", "The capital of France is"),
        ("one_token", "Once"),
        ("unicode", "Le café est délicieux. ¿Dónde está la biblioteca? 東京は日本の首都です。🚀🎉 "
                    "In English, these sentences mean"),
        ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
        ("digits", "In 1969, 3 astronauts flew 384400 km to the Moon. 12 + 30 = 42, and 7 * 6 ="),
        ("whitespace", "Shopping list:\n\n\t- eggs\n\t- milk   (two   litres)\n\t- bread\n\t-"),
        ("chat_capital", chatml("What is the capital of France?")),
        ("chat_math", chatml("What is 2+2?")),
        ("prose_1k", lighthouses + "\n\nIn summary,"),
        ("prose_2k", lighthouses + "\n\n" + bread + "\n\nIn summary,"),
    ]


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    default_model = pathlib.Path(os.environ.get("BATCHMAX_CACHE", pathlib.Path.home() / ".cache/batchmax")) \
        / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, default=default_model)
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "tests/golden/data")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--n-new", type=int, default=64)
    ap.add_argument("--only", help="comma-separated prompt names (debugging; still writes files)")
    args = ap.parse_args()

    t_start = time.time()
    model = LlamaModel(str(args.model), dtype=np.dtype(args.dtype))
    tok, tinfo = build_tokenizer(model.reader)
    cfg = model.cfg
    stop_ids = sorted({tinfo["eos_id"], tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")}
                      - {None})
    print(f"loaded {args.model.name} in {time.time() - t_start:.1f}s; dtype={args.dtype}; "
          f"rope_mode={model.rope_mode}; tied={model.tied_embeddings}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    bin_path = args.out / "smollm2_logits.bin"
    entries, blobs = [], []
    selected = prompts()
    if args.only:
        keep = set(args.only.split(","))
        selected = [p for p in selected if p[0] in keep]
    for idx, (name, text) in enumerate(selected):
        ids = tok.encode(text, add_special_tokens=False).ids
        if tinfo["add_bos"]:
            ids = [tinfo["bos_id"]] + ids
        assert tok.decode(ids, skip_special_tokens=False) == text, f"{name}: tokenizer round trip"
        t0 = time.time()
        logits, new, tops = model.greedy(ids, args.n_new, top_k=5)
        dt = time.time() - t0
        top10 = np.argsort(-logits, kind="stable")[:10]
        first_stop = next((i for i, t in enumerate(new) if t in stop_ids), -1)
        greedy_text = tok.decode(new, skip_special_tokens=False)
        entries.append({
            "name": name,
            "text": text,
            "n_tokens": len(ids),
            "tokens": ids,
            "logits_index": idx,
            "logits_offset": idx * model.n_vocab,                # in float32 elements
            "logits_byte_offset": idx * model.n_vocab * 4,
            "top10_ids": top10.tolist(),
            "top10_values": logits[top10].tolist(),
            "greedy_ids": new,
            "greedy_text": greedy_text,
            "greedy_text_until_stop": tok.decode(new[:first_stop] if first_stop >= 0 else new,
                                                 skip_special_tokens=False),
            "first_stop_step": first_stop,
            "first_stop_token": new[first_stop] if first_stop >= 0 else None,
            "greedy_top5_ids": [t[0] for t in tops],
            "greedy_top5_values": [t[1] for t in tops],
            "seconds": round(dt, 2),
        })
        blobs.append(logits.astype("<f4"))
        print(f"[{name}] {len(ids)} tokens, {dt:.1f}s, stop@{first_stop}: {greedy_text!r}", flush=True)

    np.concatenate(blobs).astype("<f4").tofile(bin_path)
    golden = {
        "format_version": 1,
        "description": "Golden data from the independent NumPy reference "
                       "(scripts/reference/numpy_llama.py); see scripts/reference/README.md",
        "model": {
            "file": args.model.name,
            "sha256": sha256(args.model),
            "architecture": cfg.arch,
            "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_ff": cfg.n_ff,
            "n_head": cfg.n_head, "n_head_kv": cfg.n_head_kv, "head_dim": cfg.head_dim,
            "n_rot": cfg.n_rot, "rope_theta": cfg.rope_theta, "rms_eps": cfg.eps,
            "n_vocab": model.n_vocab, "tied_embeddings": model.tied_embeddings,
            "rope_mode": model.rope_mode, "rope_pairing": "adjacent (2i, 2i+1), ggml 'normal'",
        },
        "tokenizer": {
            "impl": f"tokenizers {tokenizers.__version__} BPE built from GGUF tokens/merges",
            "pre_tokenizer": "Sequence[Digits(individual_digits=True), "
                             "ByteLevel(add_prefix_space=False, use_regex=True)]",
            "add_bos": tinfo["add_bos"], "special_ids": tinfo["special_ids"],
            "stop_ids": stop_ids,
        },
        "reference": {
            "compute_dtype": args.dtype,
            "weights": "dequantised with gguf.quants.dequantize to float32, upcast to compute dtype",
            "softmax": "float64", "rms_norm_stats": "float64", "silu": "float64 sigmoid",
            "logits_in_json": "float64 (full precision of the reference)",
            "logits_in_bin": "float32 little-endian (rounded from the reference)",
            "greedy": "argmax over logits (lowest id on ties), no stop on EOS; "
                      "greedy_top5 at step i are the logits that produced greedy_ids[i]",
            "versions": {"numpy": np.__version__, "gguf": importlib.metadata.version("gguf"),
                         "tokenizers": tokenizers.__version__, "python": platform.python_version()},
        },
        "n_new": args.n_new,
        "logits_file": bin_path.name,
        "logits_dtype": "float32-le",
        "logits_per_prompt": model.n_vocab,
        "prompts": entries,
    }
    json_path = args.out / "smollm2_golden.json"
    json_path.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {json_path} ({json_path.stat().st_size} B), {bin_path} ({bin_path.stat().st_size} B); "
          f"total {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
