// Byte-level BPE (tokenizer.ggml.model == "gpt2"): pre-tokenise into words, map each
// word's bytes to GPT-2's printable codepoints, then apply merges by rank.
#include <queue>

#include "core/error.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace batchmax::tok {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

class BpeTokenizer final : public VocabTokenizer {
 public:
  explicit BpeTokenizer(Vocab v)
      : VocabTokenizer(std::move(v)), pre_(PreTokenizer::for_name(vocab_.pre)) {
    for (int b = 0; b < 256; ++b) {
      std::string img;
      unicode::append_utf8(unicode::byte_to_codepoint(static_cast<uint8_t>(b)), img);
      byte_token_[b] = vocab_.find(img);
    }
    // Ranks keyed by the two token ids: a merge "a b" yields the token "ab".
    merges_.reserve(vocab_.merges.size());
    for (size_t r = 0; r < vocab_.merges.size(); ++r) {
      const std::string& m = vocab_.merges[r];
      size_t sp = m.find(' ', 1);
      if (sp == std::string::npos)
        throw Error("tokenizer.ggml.merges[" + std::to_string(r) + "] '" + m + "' has no space");
      int32_t a = vocab_.find(std::string_view(m).substr(0, sp));
      int32_t b = vocab_.find(std::string_view(m).substr(sp + 1));
      int32_t ab = vocab_.find(m.substr(0, sp) + m.substr(sp + 1));
      if (a < 0 || b < 0 || ab < 0) continue;  // unusable merge; HF would reject the file
      merges_.emplace(pair_key(a, b), Merge{static_cast<int32_t>(r), ab});
    }
  }

  std::string token_to_piece(int32_t id, bool render_special) const override {
    if (id < 0 || id >= vocab_.size()) return {};
    const std::string& text = vocab_.tokens[id];
    switch (vocab_.types[id]) {
      case kControl: return render_special ? text : std::string();
      case kUserDefined: return text;
      default: break;
    }
    std::string out;
    for (uint32_t cp : unicode::decode_utf8(text)) {
      int b = unicode::codepoint_to_byte(cp);
      if (b >= 0)
        out += static_cast<char>(b);
      else
        unicode::append_utf8(cp, out);  // not a byte image: keep it as text
    }
    return out;
  }

 protected:
  void encode_fragment(std::string_view text, bool, std::vector<int32_t>& out) const override {
    std::vector<uint32_t> cps = unicode::decode_utf8(text);
    std::string bytes;
    for (const Span& w : pre_.split(cps)) {
      bytes.clear();
      for (size_t i = w.begin; i < w.end; ++i) unicode::append_utf8(cps[i], bytes);
      encode_word(bytes, out);
    }
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };

  void encode_word(const std::string& bytes, std::vector<int32_t>& out) const {
    if (pre_.ignore_merges()) {
      std::string img;
      for (unsigned char c : bytes) unicode::append_utf8(unicode::byte_to_codepoint(c), img);
      if (int32_t id = vocab_.find(img); id >= 0) {
        out.push_back(id);
        return;
      }
    }
    // Doubly linked symbols and a heap of candidate merges: O(n log n) in the word length.
    const int n = static_cast<int>(bytes.size());
    std::vector<int32_t> id(n);
    std::vector<int> prev(n), next(n);
    for (int i = 0; i < n; ++i) {
      id[i] = byte_token_[static_cast<unsigned char>(bytes[i])];
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    struct Cand {
      int32_t rank;
      int left;
      int32_t a, b;
      bool operator>(const Cand& o) const {
        return rank != o.rank ? rank > o.rank : left > o.left;
      }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto consider = [&](int l) {
      if (l < 0 || next[l] < 0) return;
      int r = next[l];
      if (id[l] < 0 || id[r] < 0) return;
      auto it = merges_.find(pair_key(id[l], id[r]));
      if (it != merges_.end()) heap.push({it->second.rank, l, id[l], id[r]});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
      Cand c = heap.top();
      heap.pop();
      int l = c.left;
      int r = next[l];
      // Stale: the left symbol was merged away or either side changed since.
      if (id[l] != c.a || r < 0 || id[r] != c.b) continue;
      id[l] = merges_.at(pair_key(c.a, c.b)).result;
      id[r] = -2;  // dead
      next[l] = next[r];
      if (next[r] >= 0) prev[next[r]] = l;
      consider(prev[l]);
      consider(l);
    }
    for (int i = 0; i >= 0 && i < n; i = next[i]) {
      if (id[i] >= 0)
        out.push_back(id[i]);
      else if (vocab_.unk >= 0)
        out.push_back(vocab_.unk);  // a byte with no token in this vocabulary
    }
  }

  PreTokenizer pre_;
  int32_t byte_token_[256];
  std::unordered_map<uint64_t, Merge> merges_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(Vocab vocab) {
  return std::make_unique<BpeTokenizer>(std::move(vocab));
}

}  // namespace batchmax::tok
