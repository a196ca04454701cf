#!/usr/bin/env python3
"""Golden token ids for the SmolLM2 tokenizer, from an independent implementation.

Builds a HuggingFace `tokenizers` BPE from the GGUF's own vocabulary and merges (read with
the `gguf` package), with SmolLM2's pre-tokenizer as its tokenizer.json declares it:
Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)].
It then encodes a generated corpus (fixed seed) and writes one JSON object per line:
{"text_b64": <base64 of the UTF-8 bytes>, "ids": [...], "kind": <corpus category>}.

Special tokens are not registered as added tokens, so "<|im_start|>" in a text is ordinary
text: this matches encode(text, add_special=false, parse_special=false) in batchmax.

Invalid UTF-8: HF tokenizers only takes str, so the bytes are first decoded the way the
C++ tokenizer (and llama.cpp) does it: every byte that does not begin a valid UTF-8
sequence (bad lead, truncated, bad continuation, overlong, surrogate, > U+10FFFF) becomes
one U+FFFD and decoding resumes at the next byte. Valid text is unchanged.

Usage: python3 scripts/reference/make_tokenizer_reference.py \
           [--model ~/.cache/batchmax/SmolLM2-135M-Instruct.Q4_1.gguf] \
           [--out tests/golden/data/tokenizer_smollm2.jsonl] [--count 2400]
"""
import argparse
import base64
import json
import os
import random

import gguf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def read_vocab(path):
    r = gguf.GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    pre = bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    assert pre == "smollm", f"expected the smollm pre-tokenizer, found {pre}"
    return strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")


def build_reference(tokens, merges):
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = []
    for m in merges:
        sp = m.index(" ", 1)  # as llama.cpp: the first space after the first character
        pairs.append((m[:sp], m[sp + 1:]))
    tok = Tokenizer(models.BPE(vocab, pairs))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def decode_like_cpp(data: bytes) -> str:
    out, i = [], 0
    while i < len(data):
        b = data[i]
        n = 1 if b < 0x80 else 2 if b >> 5 == 6 else 3 if b >> 4 == 14 else 4 if b >> 3 == 30 else 0
        try:
            if n == 0:
                raise UnicodeDecodeError("utf-8", data, i, i + 1, "bad lead byte")
            out.append(data[i:i + n].decode("utf-8"))  # strict: rejects overlong/surrogates
            i += n
        except UnicodeDecodeError:
            out.append("\ufffd")
            i += 1
    return "".join(out)


# ---- corpus ------------------------------------------------------------------------

WORDS = ("the of and to in is was for on that with as by at from it an be this which or are "
         "have not were had but one all their has been would there can more its who will "
         "time about after first new also years two may people other many only some world "
         "Hello Paris London December government because through however between während "
         "naïve café résumé façade Ångström coöperate élève señor São Zürich Ærø Łódź").split()
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M",
                "'LL", "'D", "'Re", "'vE"]
EMOJI = ["😀", "🦙", "👍", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏻‍💻", "❤️", "🇫🇷", "🇯🇵",
         "🤷‍♂️", "🧑🏾‍🚀", "✨", "🔥", "1️⃣", "#️⃣", "🫠", "😂😂😂"]
CJK = ["你好世界", "今天天气很好。", "日本語のテキスト", "東京都", "한국어 문장입니다", "漢字",
       "中文，标点！", "ひらがなカタカナ", "〇一二三"]
ARABIC = ["مرحبا بالعالم", "اللغة العربية", "٠١٢٣٤٥٦٧٨٩", "سلام"]
CYRILLIC = ["Привет, мир!", "нещо на Български", "Ещё один тест", "Україна", "ЁЛКА ёлка"]
OTHER_SCRIPTS = ["Γειά σου Κόσμε", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "ᚠᚢᚦ",
                 "Ⅻ Ⅳ ⅷ", "½ ¾ ²³", "①②③", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ﬁ ﬂ", "Ａｂｃ１２３"]
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
        "if x != None and y >= 3:\n\tpass", "#include <vector>\nint main() {}\n",
        "const s = `${a}-${b}`;", "SELECT * FROM t WHERE id = 42;", "x = {'k': [1, 2, 3]}",
        "  // comment\n  foo->bar();", "<div class=\"a\">&amp;</div>", "a && b || !c",
        "print('it\\'s')", "λx.x", "fn main() -> Result<(), Box<dyn Error>> {}", "$HOME/.bashrc",
        "if __name__ == '__main__':\n    main()", "<|im_start|>user\nHi<|im_end|>", "<s></s>"]
PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~…—–«»¿¡·•©®™°§¶"
SPACES = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\t\t", "\u00a0", "\u3000",
          "\u2009", "\u200b", "\r", "\x0b", "\x0c", "\u2028", "\u0085"]


def prose(rng):
    n = rng.randint(1, 25)
    words = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    s = " ".join(words)
    return s + rng.choice(["", ".", "!", "?", ",", "...", " ."])


def number(rng):
    return str(rng.randint(0, 10 ** rng.randint(1, 30)))


def whitespace(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        parts.append(rng.choice(SPACES) * rng.randint(1, 4))
        if rng.random() < 0.5:
            parts.append(rng.choice(WORDS + ["1", "42", "!", "?"]))
    return "".join(parts)


def invalid_bytes(rng):
    pool = [b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc0\xaf", b"\xe0\x80\x80", b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3(", b"\xf8\x88\x80\x80\x80"]
    parts = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.5:
            parts.append(rng.choice(pool))
        else:
            parts.append(rng.choice(WORDS + EMOJI + CJK + [" ", "12"]).encode())
    return b"".join(parts)


GENERATORS = {
    "prose": prose,
    "whitespace": whitespace,
    "digits": lambda r: rng_join(r, [number(r) for _ in range(r.randint(1, 4))], [" ", "", ",", ".", "-"]),
    "emoji": lambda r: rng_join(r, [r.choice(EMOJI) for _ in range(r.randint(1, 5))], ["", " ", "x"]),
    "cjk": lambda r: rng_join(r, [r.choice(CJK) for _ in range(r.randint(1, 3))], ["", " ", "，"]),
    "arabic": lambda r: rng_join(r, [r.choice(ARABIC) for _ in range(r.randint(1, 3))], [" ", "، "]),
    "cyrillic": lambda r: rng_join(r, [r.choice(CYRILLIC) for _ in range(r.randint(1, 3))], [" ", "\n"]),
    "scripts": lambda r: rng_join(r, [r.choice(OTHER_SCRIPTS) for _ in range(r.randint(1, 3))], [" ", ""]),
    "code": lambda r: r.choice(CODE) if r.random() < 0.6 else r.choice(CODE) + r.choice(CODE),
    "contractions": lambda r: rng_join(r, [r.choice(WORDS) + r.choice(CONTRACTIONS) + r.choice(["", "t", "s", " "])
                                           for _ in range(r.randint(1, 5))], [" ", "", "'"]),
    "punct": lambda r: "".join(r.choice(PUNCT + " ") for _ in range(r.randint(1, 20))),
    "mixed": lambda r: "".join(GENERATORS[r.choice(list(GENERATORS)[:-1])](r) for _ in range(r.randint(2, 4))),
}


def rng_join(rng, items, seps):
    out = items[0]
    for it in items[1:]:
        out += rng.choice(seps) + it
    return out


FIXED = ["", " ", "  ", "\n", " \n ", "Hello world", " Hello world", "Hello  world", "a  1",
         "x   \n\n  y", "'s", "don't", "DON'T", "I'm", "they'll", "we'd", "you're", "I've",
         "1234567890", "3.14159", "1,000,000", "🦙.cpp", "\u00a0\u00a0x", "\t\tx", "a\u200bb",
         "<|im_start|>", "<|endoftext|>", "Ⅻ1²", "٣٤", "x" * 300, " " * 300, "9" * 300]


def corpus(count, seed=20240601):
    rng = random.Random(seed)
    items = [("fixed", t.encode()) for t in FIXED]
    kinds = list(GENERATORS) + ["invalid"]
    while len(items) < count:
        kind = kinds[len(items) % len(kinds)]
        data = invalid_bytes(rng) if kind == "invalid" else GENERATORS[kind](rng).encode()
        items.append((kind, data))
    return items


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/batchmax/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "../../tests/golden/data/tokenizer_smollm2.jsonl"))
    ap.add_argument("--count", type=int, default=2400)
    args = ap.parse_args()

    tok = build_reference(*read_vocab(args.model))
    with open(args.out, "w") as f:
        for kind, data in corpus(args.count):
            ids = tok.encode(decode_like_cpp(data), add_special_tokens=False).ids
            f.write(json.dumps({"text_b64": base64.b64encode(data).decode(), "ids": ids, "kind": kind}) + "\n")
    print(f"wrote {args.count} cases to {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
