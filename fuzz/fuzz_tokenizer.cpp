// Tokenizer encode/decode on arbitrary text with real vocabularies (llama.cpp's
// vocab-only GGUFs: byte-level BPE with three pre-tokenisers, SentencePiece BPE).
// Input: byte 0 picks the vocabulary and mode, the rest is the text (or, in decode mode,
// little-endian int32 token ids, valid or not).
// Checked: ids in range; decode(encode(x)) == x for valid UTF-8 x encoded without
// add_special/parse_special when no user-defined token matched (those are always
// parsed) and, for SentencePiece, x holds no U+2581 (its space mark). Parsed specials
// break the round trip by design: <unk> decodes to U+2585 and SentencePiece puts a space
// prefix after every special, as llama.cpp does.
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "format/gguf_reader.h"
#include "fuzz_target.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "vocab_files.h"

using namespace batchmax;

namespace {

struct Loaded {
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
  bool spm = false;
};

const std::vector<Loaded>& tokenizers() {
  static const std::vector<Loaded> all = [] {
    std::vector<Loaded> v;
    const std::string dir = batchmax::fuzz::tokenizer_dir();
    for (const char* name : {"gpt-2", "llama-spm", "deepseek-llm", "starcoder", "phi-3"}) {
      const std::string path = dir + "/ggml-vocab-" + name + ".gguf";
      try {
        Loaded l;
        l.file = gguf::File::open(path);
        l.tok = Tokenizer::from_gguf(*l.file);
        l.spm = l.tok->model_name() == "llama";
        v.push_back(std::move(l));
      } catch (const Error& e) {
        std::fprintf(stderr, "fuzz_tokenizer: %s\n", e.what());
      }
    }
    if (v.empty())
      std::fprintf(stderr, "fuzz_tokenizer: no vocabularies found (set BATCHMAX_TOKENIZER_DIR "
                           "to shared/testdata/tokenizer); inputs are not exercised\n");
    return v;
  }();
  return all;
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    size_t n = unicode::valid_sequence_length(s.substr(i), &cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

}  // namespace

BATCHMAX_FUZZ_INIT(tokenizers)

BATCHMAX_FUZZ_TARGET(tokenizer) {
  const auto& toks = tokenizers();
  if (toks.empty() || size == 0) return 0;
  const Loaded& l = toks[data[0] % toks.size()];
  const unsigned mode = data[0] / toks.size();
  const Tokenizer& tok = *l.tok;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  if (mode % 4 == 3) {  // decode hostile ids
    std::vector<int32_t> ids(text.size() / 4);
    if (!ids.empty()) std::memcpy(ids.data(), text.data(), ids.size() * 4);
    (void)tok.decode(ids, mode & 4);
    for (int32_t id : ids) {
      (void)tok.token_to_piece(id, true);
      (void)tok.is_eog(id);
    }
    return 0;
  }
  const bool add_special = mode & 1, parse_special = mode & 2;
  std::vector<int32_t> ids = tok.encode(text, add_special, parse_special);
  bool matched_user_defined = false;
  for (int32_t id : ids) {
    FUZZ_CHECK(id >= 0 && id < tok.n_vocab());
    if (tok.special_token_id(tok.token_to_piece(id, true)) == id) matched_user_defined = true;
  }
  const std::string back = tok.decode(ids, false);
  (void)tok.decode(ids, true);
  if (!add_special && !parse_special && !matched_user_defined && valid_utf8(text) &&
      !(l.spm && text.find("\xE2\x96\x81") != std::string_view::npos)) {
    if (back != text) {
      std::fprintf(stderr, "round trip failed for %s: %zu bytes in, %zu out\n",
                   tok.pre_name().c_str(), text.size(), back.size());
      FUZZ_CHECK(back == text);
    }
  }
  return 0;
}
