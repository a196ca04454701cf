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

// ---- DeepSeek LLM: explicit character classes from its tokenizer.json regexes ----------

struct CpRange {
  uint32_t first, last;
};

// \s?[A-Za-zµÀ-ÖØ-öø-ƺ...]+ (letters of cased scripts).
constexpr CpRange kDsLetters[] = {
    {0x41, 0x5A}, {0x61, 0x7A}, {0xB5, 0xB5}, {0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x1BA},
    {0x1BC, 0x1BF}, {0x1C4, 0x293}, {0x295, 0x2AF}, {0x370, 0x373}, {0x376, 0x377},
    {0x37B, 0x37D}, {0x37F, 0x37F}, {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C},
    {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481}, {0x48A, 0x52F}, {0x531, 0x556},
    {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF},
    {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D},
    {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE},
    {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC},
    {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113},
    {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126}, {0x2128, 0x2128},
    {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F}, {0x2145, 0x2149},
    {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE},
    {0x2CF2, 0x2CF3}, {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787},
    {0xA78B, 0xA78E}, {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A}, {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};
// \s?[!-/:-~！-／：-～‘-‟　-。]+
constexpr CpRange kDsPunct[] = {{0x21, 0x2F},     {0x3A, 0x7E},     {0x2018, 0x201F},
                                {0x3000, 0x3002}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E}};
// [一-龥ࠀ-一가-퟿]+
constexpr CpRange kDsCjk[] = {{0x800, 0x9FA5}, {0xAC00, 0xD7FF}};

template <size_t N>
bool in(const CpRange (&r)[N], uint32_t cp) {
  for (const CpRange& x : r)
    if (cp >= x.first && cp <= x.last) return true;
  return false;
}

// Splits at every match of a run-shaped regex, keeping the text between matches as
// words too (llama.cpp's unicode_regex_split). `match` gives the length at i, or 0.
template <class Match>
void split_matches(const Cursor& t, size_t pos, Match match, std::vector<Span>& out) {
  size_t gap = pos;
  for (size_t i = pos; i < t.end;) {
    size_t n = match(i);
    if (n == 0) {
      ++i;
      continue;
    }
    if (gap < i) out.push_back({gap, i});
    out.push_back({i, i + n});
    i += n;
    gap = i;
  }
  if (gap < t.end) out.push_back({gap, t.end});
}

// \s?[set]+: an optional whitespace is taken only when the set follows it.
template <size_t N>
size_t space_then_run(const Cursor& t, size_t i, const CpRange (&set)[N]) {
  size_t p = (t.cls(i) == kSpace && i + 1 < t.end && in(set, t.at(i + 1))) ? i + 1 : i;
  size_t q = p;
  while (q < t.end && in(set, t.at(q))) ++q;
  return q > p ? q - i : 0;
}

void split_deepseek(Splitter s, const Cursor& t, size_t pos, std::vector<Span>& out) {
  switch (s) {
    case Splitter::Newline:
      return split_matches(t, pos, [&](size_t i) -> size_t { return is_newline(t.at(i)); }, out);
    case Splitter::DsLetters:
      return split_matches(t, pos, [&](size_t i) { return space_then_run(t, i, kDsLetters); }, out);
    case Splitter::DsPunct:
      return split_matches(t, pos, [&](size_t i) { return space_then_run(t, i, kDsPunct); }, out);
    case Splitter::TrailingSpace: {  // \s+$
      size_t j = t.end;
      while (j > pos && t.cls(j - 1) == kSpace) --j;
      if (j > pos) out.push_back({pos, j});
      if (j < t.end) out.push_back({j, t.end});
      return;
    }
    case Splitter::DsCjk:
      return split_matches(t, pos, [&](size_t i) {
        size_t q = i;
        while (q < t.end && in(kDsCjk, t.at(q))) ++q;
        return q - i;
      }, out);
    case Splitter::NumberRun:
      return split_matches(t, pos, [&](size_t i) {
        return t.cls(i) == kNumber ? t.run(i, kNumber) - i : size_t{0};
      }, out);
    default:
      return;
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
  if (name == "deepseek-llm")
    return PreTokenizer({Splitter::Newline, Splitter::DsLetters, Splitter::DsPunct,
                         Splitter::TrailingSpace, Splitter::DsCjk, Splitter::NumberRun});
  throw Error("unsupported tokenizer.ggml.pre '" + name + "' (supported: " + supported_names() + ")");
}

std::string PreTokenizer::supported_names() {
  return "default, gpt-2, llama-bpe, llama3, qwen2, smollm, starcoder, deepseek-llm";
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
        default: split_deepseek(s, t, w.begin, next); break;
      }
    }
    words = std::move(next);
  }
  return words;
}

}  // namespace batchmax::tok
