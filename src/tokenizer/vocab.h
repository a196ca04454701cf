#pragma once
// Internal: the vocabulary read from GGUF metadata and the base class both tokenizer
// kinds share (special-token partitioning, BOS/EOS handling, decoding loop).
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace batchmax::tok {

// tokenizer.ggml.token_type values.
enum TokenType : int32_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

// Lets the id map be searched with a string_view without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct Vocab {
  std::string model;  // tokenizer.ggml.model
  std::string pre;    // tokenizer.ggml.pre
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;          // empty for gpt2
  std::vector<std::string> merges;    // empty for llama
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids;
  int32_t bos = -1, eos = -1, unk = -1, pad = -1, eot = -1, eom = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;

  int32_t find(std::string_view text) const {
    auto it = ids.find(text);
    return it == ids.end() ? -1 : it->second;
  }
  int32_t size() const { return static_cast<int32_t>(tokens.size()); }
};

// Reads and validates tokenizer.ggml.*; throws batchmax::Error naming the key.
Vocab load_vocab(const gguf::File& file);

// A piece of input: raw text to tokenise, or an already matched special token.
struct Fragment {
  std::string_view text;
  int32_t token = -1;  // >= 0: a special token
};

class VocabTokenizer : public Tokenizer {
 public:
  explicit VocabTokenizer(Vocab vocab);

  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override;
  std::string decode(std::span<const int32_t> ids, bool render_special) const override;
  int32_t n_vocab() const override { return vocab_.size(); }
  int32_t bos_id() const override { return vocab_.bos; }
  int32_t eos_id() const override { return vocab_.eos; }
  bool is_eog(int32_t id) const override;
  int32_t special_token_id(std::string_view text) const override;
  std::string model_name() const override { return vocab_.model; }
  std::string pre_name() const override { return vocab_.pre; }

  // Splits text at special tokens (longest first). Control and unknown tokens are matched
  // only when parse_special; user-defined tokens always, as llama.cpp and HF do.
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;

 protected:
  // Tokenises one raw-text fragment; `after_special` is true for the first fragment and
  // for fragments that follow a special token.
  virtual void encode_fragment(std::string_view text, bool after_special,
                               std::vector<int32_t>& out) const = 0;
  // Whether decode() drops a leading space (SentencePiece's add_space_prefix).
  virtual bool strip_leading_space() const { return false; }

  Vocab vocab_;
  std::vector<int32_t> special_;  // control, user-defined, unknown; longest text first
  std::vector<int32_t> eog_;
};

std::unique_ptr<Tokenizer> make_bpe_tokenizer(Vocab vocab);
std::unique_ptr<Tokenizer> make_spm_tokenizer(Vocab vocab);

}  // namespace batchmax::tok
