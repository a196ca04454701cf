// SentencePiece-style BPE (tokenizer.ggml.model == "llama"): spaces become U+2581, then
// adjacent pieces are merged highest score first while the union is in the vocabulary;
// characters left without a token fall back to <0xXX> byte tokens (as llama.cpp).
#include <cstdio>
#include <queue>

#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace batchmax::tok {

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581

class SpmTokenizer final : public VocabTokenizer {
 public:
  explicit SpmTokenizer(Vocab v) : VocabTokenizer(std::move(v)) {
    for (int b = 0; b < 256; ++b) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "<0x%02X>", b);
      byte_token_[b] = vocab_.find(hex);
      if (byte_token_[b] < 0) byte_token_[b] = vocab_.find(std::string(1, static_cast<char>(b)));
      if (byte_token_[b] < 0) byte_token_[b] = vocab_.unk;
    }
  }

  std::string token_to_piece(int32_t id, bool render_special) const override {
    if (id < 0 || id >= vocab_.size()) return {};
    const std::string& text = vocab_.tokens[id];
    switch (vocab_.types[id]) {
      case kControl: return render_special ? text : std::string();
      case kUnknown: return "\xE2\x96\x85";  // U+2585, as llama.cpp renders <unk>
      case kByte: {
        unsigned v = 0;
        if (text.size() == 6 && std::sscanf(text.c_str(), "<0x%2X>", &v) == 1)
          return std::string(1, static_cast<char>(v));
        return text;
      }
      default: break;
    }
    std::string out;
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
        out += ' ';
        i += kSpaceMark.size();
      } else {
        out += text[i++];
      }
    }
    return out;
  }

 protected:
  bool strip_leading_space() const override { return vocab_.add_space_prefix; }

  void encode_fragment(std::string_view frag, bool after_special,
                       std::vector<int32_t>& out) const override {
    std::string text;
    text.reserve(frag.size() + 8);
    if (vocab_.add_space_prefix && after_special) text += kSpaceMark;
    for (char c : frag) {
      if (c == ' ')
        text += kSpaceMark;
      else
        text += c;
    }
    encode_text(text, out);
  }

 private:
  struct Symbol {
    int prev, next;
    size_t off, len;  // bytes of `text`; len 0 once merged into its left neighbour
  };

  void encode_text(const std::string& text, std::vector<int32_t>& out) const {
    std::vector<Symbol> sym;
    sym.reserve(text.size());
    for (size_t off = 0; off < text.size();) {
      uint32_t cp;
      size_t n = unicode::valid_sequence_length(std::string_view(text).substr(off), &cp);
      if (n == 0) n = 1;  // an invalid byte stands alone and falls back to its byte token
      int i = static_cast<int>(sym.size());
      sym.push_back({i - 1, -1, off, n});
      if (i > 0) sym[i - 1].next = i;
      off += n;
    }
    struct Bigram {
      float score;
      int left, right;
      size_t len;
      // Highest score first; ties go to the leftmost pair.
      bool operator<(const Bigram& o) const {
        return score < o.score || (score == o.score && left > o.left);
      }
    };
    std::priority_queue<Bigram> heap;
    auto consider = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      size_t len = sym[l].len + sym[r].len;
      int32_t id = vocab_.find(std::string_view(text).substr(sym[l].off, len));
      if (id >= 0) heap.push({vocab_.scores[id], l, r, len});
    };
    for (int i = 0; i + 1 < static_cast<int>(sym.size()); ++i) consider(i, i + 1);
    while (!heap.empty()) {
      Bigram b = heap.top();
      heap.pop();
      Symbol& l = sym[b.left];
      Symbol& r = sym[b.right];
      // Stale: one side was merged since (same test as llama.cpp, so ties resolve alike).
      if (l.len == 0 || r.len == 0 || l.len + r.len != b.len) continue;
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      consider(l.prev, b.left);
      consider(b.left, l.next);
    }
    for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
      std::string_view piece = std::string_view(text).substr(sym[i].off, sym[i].len);
      int32_t id = vocab_.find(piece);
      if (id >= 0) {
        out.push_back(id);
      } else {
        for (unsigned char c : piece)
          if (byte_token_[c] >= 0) out.push_back(byte_token_[c]);
      }
    }
  }

  int32_t byte_token_[256];
};

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(Vocab vocab) {
  return std::make_unique<SpmTokenizer>(std::move(vocab));
}

}  // namespace batchmax::tok
