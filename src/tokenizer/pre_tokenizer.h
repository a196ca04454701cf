#pragma once
// Pre-tokenisers of byte-level BPE vocabularies, chosen by tokenizer.ggml.pre. Each is a
// sequence of hand-written splitters equivalent to the model's regexes: a later stage
// only splits the words an earlier one produced (as HF's Sequence and llama.cpp do).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace batchmax::tok {

struct Span {
  size_t begin, end;  // codepoint offsets, end exclusive
};

enum class Splitter {
  Digits,   // every \p{N} is a word of its own (HF Digits(individual_digits=true))
  Gpt2,     // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Llama3,   // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
            // \s*[\r\n]+|\s+(?!\S)|\s+
  Qwen2,    // Llama3 with \p{N} instead of \p{N}{1,3}
  // DeepSeek LLM's sequence (as llama.cpp runs it): [\r\n], \s?[Latin/Greek/...]+,
  // \s?[ASCII and fullwidth punctuation]+, \s+$, [CJK]+, \p{N}+.
  Newline, DsLetters, DsPunct, TrailingSpace, DsCjk, NumberRun,
};

class PreTokenizer {
 public:
  // Throws batchmax::Error listing the supported names when `name` is unknown.
  static PreTokenizer for_name(const std::string& name);
  static std::string supported_names();
  explicit PreTokenizer(std::vector<Splitter> stages) : stages_(std::move(stages)) {}

  // Words of `cps`, in order, covering it entirely.
  std::vector<Span> split(const std::vector<uint32_t>& cps) const;
  // Whether a word found whole in the vocabulary is taken as is (Llama-3's ignore_merges).
  bool ignore_merges() const;

 private:
  std::vector<Splitter> stages_;
};

}  // namespace batchmax::tok
