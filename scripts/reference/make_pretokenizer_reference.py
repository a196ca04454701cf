#!/usr/bin/env python3
"""Golden word splits for the regex pre-tokenisers that no shipped vocabulary exercises.

The splits come from HF `tokenizers` (Oniguruma regexes, Split(..., "isolated")) with each
model's published regex, over the corpus of make_tokenizer_reference.py (invalid UTF-8
mapped to U+FFFD first, as the C++ does). Output: tests/golden/data/pretokenizer_splits.jsonl,
one {"pre": name, "text_b64": ..., "words_b64": [...]} per line.

Note: Oniguruma's (?i) also folds U+017F (long s) to 's'; the C++ folds ASCII only, as
llama.cpp does. The corpus has no U+017F.
"""
import base64
import json
import os
import sys

from tokenizers import Regex, pre_tokenizers

sys.path.insert(0, os.path.dirname(__file__))
from make_tokenizer_reference import corpus, decode_like_cpp  # noqa: E402

CONTRACTIONS_I = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
TAIL = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PATTERNS = {
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama3": CONTRACTIONS_I + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}" + TAIL,
    "qwen2": CONTRACTIONS_I + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}" + TAIL,
}


def main():
    out = os.path.join(os.path.dirname(__file__), "../../tests/golden/data/pretokenizer_splits.jsonl")
    texts = [decode_like_cpp(data) for _, data in corpus(1200, seed=7)]
    with open(out, "w") as f:
        for name, pattern in PATTERNS.items():
            split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
            for t in texts:
                words = [w for w, _ in split.pre_tokenize_str(t)]
                assert "".join(words) == t
                f.write(json.dumps({"pre": name, "text_b64": base64.b64encode(t.encode()).decode(),
                                    "words_b64": [base64.b64encode(w.encode()).decode() for w in words]}) + "\n")
    print(f"wrote {len(PATTERNS) * len(texts)} cases to {os.path.normpath(out)}")


if __name__ == "__main__":
    main()
