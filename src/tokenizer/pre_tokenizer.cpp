#include "tokenizer/pre_tokenizer.h"

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace batchmax::tok {

namespace {

using unicode::kLetter;
using unicode::kNumber;
using unicode::kSpace;

constexpr uint8_t kOther = 8;  // none of letter, number, whitespace
constexpr uint8_t kEnd = 16;   // past the end of the word being split

struct Cursor {
  const uint32_t* cps;
  size_t end;
  uint8_t cls(size_t i) const {
    if (i >= end) return kEnd;
    uint8_t c = unicode::classify(cps[i]);
    return c ? c : kOther;
  }
  uint32_t at(size_t i) const { return i < end ? cps[i] : 0; }
  size_t run(size_t i, uint8_t mask) const {
    while (i < end && (cls(i) & mask)) ++i;
    return i;
  }
};

bool is_newline(uint32_t c) { return c == '\r' || c == '\n'; }
uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// Length of a contraction ('s 't 'm 'd 're 've 'll) at pos, or 0.
size_t contraction(const Cursor& t, size_t pos, bool any_case) {
  if (t.at(pos) != '\'' || pos + 1 >= t.end) return 0;
  auto lc = [&](size_t i) { return any_case ? ascii_lower(t.at(i)) : t.at(i); };
  uint32_t c1 = lc(pos + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (pos + 2 >= t.end) return 0;
  uint32_t c2 = lc(pos + 2);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ from pos, whose whitespace run ends at q: when a non-space follows, the
// last whitespace is left to prefix the next word.
size_t trailing_space_end(const Cursor& t, size_t pos, size_t q) {
  return (q < t.end && q - pos > 1) ? q - 1 : q;
}

void split_digits(const Cursor& t, size_t pos, std::vector<Span>& out) {
  while (pos < t.end) {
    size_t q = t.cls(pos) == kNumber ? pos + 1 : t.run(pos, kLetter | kSpace | kOther);
    out.push_back({pos, q});
    pos = q;
  }
}

void split_gpt2(const Cursor& t, size_t pos, std::vector<Span>& out) {
  while (pos < t.end) {
    size_t q;
    if (size_t n = contraction(t, pos, false)) {
      q = pos + n;
    } else {
      size_t p = (t.at(pos) == ' ' && pos + 1 < t.end) ? pos + 1 : pos;  // optional ' '
      uint8_t k = t.cls(p);
      if (k == kLetter || k == kNumber || k == kOther) {
        q = t.run(p, k);
      } else {
        q = trailing_space_end(t, pos, t.run(pos, kSpace));
      }
    }
    out.push_back({pos, q});
    pos = q;
  }
}

void split_llama3(const Cursor& t, size_t pos, size_t max_digits, std::vector<Span>& out) {
  while (pos < t.end) {
    size_t q;
    uint32_t c0 = t.at(pos);
    uint8_t k0 = t.cls(pos);
    if (size_t n = contraction(t, pos, true)) {
      q = pos + n;
    } else if (k0 == kLetter ||
               (!is_newline(c0) && k0 != kNumber && t.cls(pos + 1) == kLetter)) {
      q = t.run(pos + 1, kLetter);  // [^\r\n\p{L}\p{N}]?\p{L}+
    } else if (k0 == kNumber) {
      q = pos;
      while (q < t.end && q - pos < max_digits && t.cls(q) == kNumber) ++q;
    } else if (size_t p = (c0 == ' ' && pos + 1 < t.end) ? pos + 1 : pos; t.cls(p) == kOther) {
      q = t.run(p, kOther);  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
      while (q < t.end && is_newline(t.at(q))) ++q;
    } else {
      size_t ws_end = t.run(pos, kSpace);
      size_t last_nl = t.end;
      for (size_t i = pos; i < ws_end; ++i)
        if (is_newline(t.at(i))) last_nl = i;
      q = last_nl < t.end ? last_nl + 1  // \s*[\r\n]+
                          : trailing_space_end(t, pos, ws_end);
    }
    out.push_back({pos, q});
    pos = q;
  }
}

}  // namespace

PreTokenizer PreTokenizer::for_name(const std::string& name) {
  if (name == "default" || name == "gpt-2" || name == "gpt2") return PreTokenizer({Splitter::Gpt2});
  if (name == "llama-bpe" || name == "llama3") return PreTokenizer({Splitter::Llama3});
  if (name == "qwen2") return PreTokenizer({Splitter::Qwen2});
  // SmolLM2's tokenizer.json: Sequence[Digits(individual_digits), ByteLevel(use_regex)];
  // llama.cpp groups starcoder and smollm under the same two regexes.
  if (name == "smollm" || name == "starcoder") return PreTokenizer({Splitter::Digits, Splitter::Gpt2});
  throw Error("unsupported tokenizer.ggml.pre '" + name + "' (supported: " + supported_names() + ")");
}

std::string PreTokenizer::supported_names() {
  return "default, gpt-2, llama-bpe, llama3, qwen2, smollm, starcoder";
}

bool PreTokenizer::ignore_merges() const {
  return stages_.size() == 1 && stages_[0] == Splitter::Llama3;
}

std::vector<Span> PreTokenizer::split(const std::vector<uint32_t>& cps) const {
  std::vector<Span> words{{0, cps.size()}};
  if (cps.empty()) return {};
  for (Splitter s : stages_) {
    std::vector<Span> next;
    next.reserve(words.size());
    for (const Span& w : words) {
      Cursor t{cps.data(), w.end};
      switch (s) {
        case Splitter::Digits: split_digits(t, w.begin, next); break;
        case Splitter::Gpt2: split_gpt2(t, w.begin, next); break;
        case Splitter::Llama3: split_llama3(t, w.begin, 3, next); break;
        case Splitter::Qwen2: split_llama3(t, w.begin, 1, next); break;
      }
    }
    words = std::move(next);
  }
  return words;
}

}  // namespace batchmax::tok
