#pragma once
// Tokenizer built from a GGUF file's own vocabulary (tokenizer.ggml.*): byte-level BPE
// (GPT-2 style, with pre-tokeniser variants chosen by tokenizer.ggml.pre) and
// SentencePiece-style BPE with byte fallback (tokenizer.ggml.model == "llama").
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace batchmax {
namespace gguf { class File; }

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Throws batchmax::Error naming the problem (missing keys, unknown model/pre type).
  static std::unique_ptr<Tokenizer> from_gguf(const gguf::File& file);

  // Longest text encode() accepts; longer text throws batchmax::Error.
  static constexpr size_t kMaxEncodeBytes = size_t(1) << 29;

  // add_special: prepend BOS (and append EOS) as the vocabulary's metadata asks.
  // parse_special: text such as "<|im_start|>" becomes its special token id; otherwise
  // special-token text is tokenised as plain text.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special,
                                      bool parse_special) const = 0;
  // Concatenated pieces; control tokens are skipped unless render_special.
  virtual std::string decode(std::span<const int32_t> ids, bool render_special = false) const = 0;
  // Bytes one token contributes to text (may be a partial UTF-8 sequence).
  virtual std::string token_to_piece(int32_t id, bool render_special = false) const = 0;

  virtual int32_t n_vocab() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
  // End of generation: EOS, EOT and the like (e.g. <|im_end|>, <|eot_id|>).
  virtual bool is_eog(int32_t id) const = 0;
  // The id of a special token's text, or -1.
  virtual int32_t special_token_id(std::string_view text) const = 0;
  virtual std::string model_name() const = 0;  // "gpt2" or "llama"
  virtual std::string pre_name() const = 0;    // pre-tokeniser, e.g. "smollm", "llama-bpe"
};

}  // namespace batchmax
