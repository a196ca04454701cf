// Vocabulary loading from GGUF metadata and the parts both tokenizer kinds share.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <initializer_list>
#include <optional>

#include "core/error.h"
#include "format/gguf_reader.h"
#include "tokenizer/vocab.h"

namespace batchmax {

namespace tok {

namespace {

[[noreturn]] void fail(const gguf::File& f, const std::string& key, const std::string& why) {
  throw Error(f.path() + ": metadata key '" + key + "' " + why);
}

// An array value whose elements have one of the `ok` types; nullptr when the key is absent.
const gguf::Array* get_array(const gguf::File& f, const std::string& key, bool required,
                             std::initializer_list<gguf::ValueType> ok, const char* what) {
  const gguf::Value* v = f.find(key);
  if (!v) {
    if (required) fail(f, key, "is missing");
    return nullptr;
  }
  if (v->type != gguf::ValueType::ARRAY)
    fail(f, key, std::string("has type ") + gguf::value_type_name(v->type) + ", expected array of " + what);
  const gguf::Array& a = v->as_array();
  if (std::find(ok.begin(), ok.end(), a.elem_type) == ok.end())
    fail(f, key, std::string("is an array of ") + gguf::value_type_name(a.elem_type) +
                     ", expected " + what);
  return &a;
}

std::optional<bool> get_bool(const gguf::File& f, const std::string& key) {
  const gguf::Value* v = f.find(key);
  if (!v) return std::nullopt;
  if (v->type != gguf::ValueType::BOOL)
    fail(f, key, std::string("has type ") + gguf::value_type_name(v->type) + ", expected bool");
  return v->as_bool();
}

// A token id key: absent -> `fallback`; out of range -> error (or -1 when `lenient`).
int32_t get_id(const gguf::File& f, const std::string& key, int32_t n_vocab, int32_t fallback,
               bool lenient = false) {
  std::optional<int64_t> v = f.get_int_opt(key);
  if (!v) return fallback < n_vocab ? fallback : -1;
  if (*v >= 0 && *v < n_vocab) return static_cast<int32_t>(*v);
  if (lenient) return -1;
  fail(f, key, "is " + std::to_string(*v) + ", outside the vocabulary of " +
                   std::to_string(n_vocab) + " tokens");
}

}  // namespace

Vocab load_vocab(const gguf::File& f) {
  Vocab v;
  v.model = f.get_string("tokenizer.ggml.model");
  if (v.model != "gpt2" && v.model != "llama")
    fail(f, "tokenizer.ggml.model", "is '" + v.model + "' (supported: gpt2, llama)");
  v.pre = f.get_string_opt("tokenizer.ggml.pre").value_or("default");

  using VT = gguf::ValueType;
  const gguf::Array* tokens = get_array(f, "tokenizer.ggml.tokens", true, {VT::STRING}, "string");
  if (tokens->items.empty()) fail(f, "tokenizer.ggml.tokens", "is empty");
  const size_t n = tokens->items.size();
  v.tokens.reserve(n);
  for (const auto& t : tokens->items) v.tokens.push_back(t.s);

  v.types.assign(n, kNormal);
  if (auto* a = get_array(f, "tokenizer.ggml.token_type", false,
                          {VT::INT32, VT::UINT32, VT::INT8, VT::UINT8, VT::INT16, VT::UINT16,
                           VT::INT64, VT::UINT64}, "integers")) {
    if (a->items.size() != n)
      fail(f, "tokenizer.ggml.token_type", "has " + std::to_string(a->items.size()) +
                                               " entries for " + std::to_string(n) + " tokens");
    for (size_t i = 0; i < n; ++i) v.types[i] = static_cast<int32_t>(a->items[i].as_int());
  }
  if (auto* a = get_array(f, "tokenizer.ggml.scores", false, {VT::FLOAT32, VT::FLOAT64}, "float")) {
    if (a->items.size() != n)
      fail(f, "tokenizer.ggml.scores", "has " + std::to_string(a->items.size()) +
                                           " entries for " + std::to_string(n) + " tokens");
    v.scores.reserve(n);
    for (const auto& s : a->items) v.scores.push_back(static_cast<float>(s.f));
  } else if (v.model == "llama") {
    v.scores.assign(n, 0.0f);
  }
  if (v.model == "gpt2") {
    const gguf::Array* m = get_array(f, "tokenizer.ggml.merges", true, {VT::STRING}, "string");
    v.merges.reserve(m->items.size());
    for (const auto& s : m->items) v.merges.push_back(s.s);
  }

  v.ids.reserve(n);
  for (size_t i = 0; i < n; ++i) v.ids[v.tokens[i]] = static_cast<int32_t>(i);

  const auto nv = static_cast<int32_t>(n);
  const bool spm = v.model == "llama";
  const bool llama3 = v.pre == "llama-bpe" || v.pre == "llama3";
  // Defaults as llama.cpp assumes them when a key is absent.
  v.bos = get_id(f, "tokenizer.ggml.bos_token_id", nv, spm ? 1 : -1);
  v.eos = get_id(f, "tokenizer.ggml.eos_token_id", nv, spm ? 2 : -1);
  v.unk = get_id(f, "tokenizer.ggml.unknown_token_id", nv, spm ? 0 : -1);
  v.pad = get_id(f, "tokenizer.ggml.padding_token_id", nv, -1, true);
  v.eot = get_id(f, "tokenizer.ggml.eot_token_id", nv, -1, true);
  v.eom = get_id(f, "tokenizer.ggml.eom_token_id", nv, -1, true);
  v.add_bos = get_bool(f, "tokenizer.ggml.add_bos_token").value_or(spm || llama3);
  v.add_eos = get_bool(f, "tokenizer.ggml.add_eos_token").value_or(false);
  v.add_space_prefix = get_bool(f, "tokenizer.ggml.add_space_prefix").value_or(spm);
  return v;
}

VocabTokenizer::VocabTokenizer(Vocab vocab) : vocab_(std::move(vocab)) {
  for (int32_t id = 0; id < vocab_.size(); ++id) {
    int32_t t = vocab_.types[id];
    if ((t == kControl || t == kUserDefined || t == kUnknown) && !vocab_.tokens[id].empty())
      special_.push_back(id);
  }
  std::stable_sort(special_.begin(), special_.end(), [&](int32_t a, int32_t b) {
    return vocab_.tokens[a].size() > vocab_.tokens[b].size();
  });
  // End of generation: the declared ids, plus the usual end-of-turn texts (as llama.cpp).
  for (int32_t id : {vocab_.eos, vocab_.eot, vocab_.eom})
    if (id >= 0) eog_.push_back(id);
  static const char* kEogTexts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                    "<|endoftext|>", "<|eom_id|>", "<EOT>", "<|end_of_text|>"};
  for (const char* text : kEogTexts) {
    int32_t id = vocab_.find(text);
    if (id >= 0 && vocab_.types[id] == kControl) eog_.push_back(id);
  }
  std::sort(eog_.begin(), eog_.end());
  eog_.erase(std::unique(eog_.begin(), eog_.end()), eog_.end());
}

bool VocabTokenizer::is_eog(int32_t id) const {
  return std::binary_search(eog_.begin(), eog_.end(), id);
}

int32_t VocabTokenizer::special_token_id(std::string_view text) const {
  int32_t id = vocab_.find(text);
  if (id < 0) return -1;
  int32_t t = vocab_.types[id];
  return (t == kControl || t == kUserDefined || t == kUnknown) ? id : -1;
}

std::vector<Fragment> VocabTokenizer::partition(std::string_view text, bool parse_special) const {
  std::vector<Fragment> frags{{text, -1}};
  for (int32_t id : special_) {
    int32_t type = vocab_.types[id];
    if (!parse_special && type != kUserDefined) continue;
    const std::string& sp = vocab_.tokens[id];
    std::vector<Fragment> next;
    next.reserve(frags.size());
    for (const Fragment& fr : frags) {
      if (fr.token >= 0 || fr.text.find(sp) == std::string_view::npos) {
        next.push_back(fr);
        continue;
      }
      std::string_view rest = fr.text;
      for (size_t at; (at = rest.find(sp)) != std::string_view::npos;) {
        if (at > 0) next.push_back({rest.substr(0, at), -1});
        next.push_back({{}, id});
        rest.remove_prefix(at + sp.size());
      }
      if (!rest.empty()) next.push_back({rest, -1});
    }
    frags = std::move(next);
  }
  return frags;
}

std::vector<int32_t> VocabTokenizer::encode(std::string_view text, bool add_special,
                                            bool parse_special) const {
  // Symbol indices and token counts are int32, and SentencePiece text grows up to 3x
  // (' ' -> U+2581): longer input would overflow them.
  if (text.size() > kMaxEncodeBytes)
    throw Error("tokenizer: text of " + std::to_string(text.size()) +
                " bytes is over the limit of " + std::to_string(kMaxEncodeBytes) +
                " bytes (token counts are 32-bit)");
  std::vector<int32_t> out;
  if (add_special && vocab_.add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
  if (!text.empty()) {
    bool after_special = true;
    for (const Fragment& fr : partition(text, parse_special)) {
      if (fr.token >= 0) {
        out.push_back(fr.token);
        after_special = true;
      } else {
        encode_fragment(fr.text, after_special, out);
        after_special = false;
      }
    }
  }
  if (add_special && vocab_.add_eos && vocab_.eos >= 0) out.push_back(vocab_.eos);
  return out;
}

std::string VocabTokenizer::decode(std::span<const int32_t> ids, bool render_special) const {
  std::string out;
  bool first = strip_leading_space();
  for (int32_t id : ids) {
    std::string piece = token_to_piece(id, render_special);
    // SentencePiece adds a space in front of the text; drop it from the first text token.
    if (first && id >= 0 && id < vocab_.size() && vocab_.types[id] != kControl) {
      if (!piece.empty() && piece[0] == ' ') piece.erase(0, 1);
      first = false;
    }
    out += piece;
  }
  return out;
}

}  // namespace tok

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const gguf::File& file) {
  tok::Vocab vocab = tok::load_vocab(file);
  if (vocab.model == "gpt2") return tok::make_bpe_tokenizer(std::move(vocab));
  return tok::make_spm_tokenizer(std::move(vocab));
}

}  // namespace batchmax
