"""Independent tokenizer for SmolLM2-style (GPT-2 byte-level BPE) GGUF vocabularies.

Built with the PyPI `tokenizers` package from the GGUF's tokenizer.ggml.tokens and
tokenizer.ggml.merges; no code shared with the C++ engine. Pre-tokenizer matches
SmolLM2's tokenizer.json: Sequence[Digits(individual_digits=True),
ByteLevel(add_prefix_space=False, use_regex=True)], ByteLevel decoder. Control tokens
(token_type == 3) are registered as special tokens so they are parsed verbatim.
"""
from __future__ import annotations

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

CONTROL = 3


def build_tokenizer(reader: GGUFReader) -> tuple[Tokenizer, dict]:
    f = reader.fields
    model = f["tokenizer.ggml.model"].contents()
    if model != "gpt2":
        raise ValueError(f"only gpt2-style BPE vocabularies supported, got {model!r}")
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in f["tokenizer.ggml.merges"].contents()]
    assert all(len(m) == 2 for m in merges)
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(types) if t == CONTROL]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:
        assert tok.token_to_id(s) == vocab[s]
    info = {
        "add_bos": bool(f["tokenizer.ggml.add_bos_token"].contents())
        if "tokenizer.ggml.add_bos_token" in f else False,
        "bos_id": int(f["tokenizer.ggml.bos_token_id"].contents()),
        "eos_id": int(f["tokenizer.ggml.eos_token_id"].contents()),
        "special_ids": sorted(vocab[s] for s in specials),
        "pre": f["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in f else None,
    }
    return tok, info
