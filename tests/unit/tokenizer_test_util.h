#pragma once
// Helpers shared by the tokenizer tests: locating the llama.cpp vocab vectors, reading
// them, and building small GGUF files in memory.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "../test_support.h"

namespace batchmax::test {

// shared_testdata(), or the first shared/testdata above the source tree (worktrees sit
// one level deeper than the main checkout).
inline std::string tokenizer_vectors_dir() {
  namespace fs = std::filesystem;
  if (fs::exists(shared_testdata() + "/tokenizer")) return shared_testdata() + "/tokenizer";
  for (fs::path p = fs::absolute(source_dir()); p.has_parent_path() && p != p.parent_path();
       p = p.parent_path())
    if (fs::exists(p / "shared/testdata/tokenizer")) return (p / "shared/testdata/tokenizer").string();
  return shared_testdata() + "/tokenizer";
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct VocabCase {
  std::string text;
  std::vector<int32_t> ids;
};

// NAME.gguf.inp texts split at "\n__ggml_vocab_test__\n"; NAME.gguf.out one line of ids each.
inline std::vector<VocabCase> read_vocab_cases(const std::string& gguf_path) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::string inp = read_file(gguf_path + ".inp");
  std::vector<std::string> texts;
  size_t pos = 0;
  for (size_t at; (at = inp.find(sep, pos)) != std::string::npos; pos = at + sep.size())
    texts.push_back(inp.substr(pos, at - pos));
  if (pos < inp.size()) texts.push_back(inp.substr(pos));
  std::istringstream out(read_file(gguf_path + ".out"));
  std::vector<VocabCase> cases;
  std::string line;
  for (size_t i = 0; i < texts.size() && std::getline(out, line); ++i) {
    VocabCase c{texts[i], {}};
    std::istringstream ls(line);
    for (int32_t id; ls >> id;) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  return cases;
}

inline std::string base64_decode(const std::string& in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = val(c);
    if (v < 0) continue;  // '=' padding
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

// Minimal GGUF v3 writer for metadata-only files.
class GgufBuilder {
 public:
  GgufBuilder& str(const std::string& k, const std::string& v) { key(k, 8); s(v); ++n_; return *this; }
  GgufBuilder& u32(const std::string& k, uint32_t v) { key(k, 4); put(v); ++n_; return *this; }
  GgufBuilder& boolean(const std::string& k, bool v) { key(k, 7); put<uint8_t>(v); ++n_; return *this; }
  GgufBuilder& strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9); put<uint32_t>(8); put<uint64_t>(v.size());
    for (const auto& x : v) s(x);
    ++n_; return *this;
  }
  GgufBuilder& i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9); put<uint32_t>(5); put<uint64_t>(v.size());
    for (int32_t x : v) put(x);
    ++n_; return *this;
  }
  GgufBuilder& f32s(const std::string& k, const std::vector<float>& v) {
    key(k, 9); put<uint32_t>(6); put<uint64_t>(v.size());
    for (float x : v) put(x);
    ++n_; return *this;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    auto app = [&](const void* p, size_t n) { out.insert(out.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
    uint32_t magic = 0x46554747, version = 3;
    uint64_t n_tensors = 0;
    app(&magic, 4); app(&version, 4); app(&n_tensors, 8); app(&n_, 8);
    out.insert(out.end(), body_.begin(), body_.end());
    return out;
  }

 private:
  template <class T> void put(T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    body_.insert(body_.end(), b, b + sizeof(T));
  }
  void s(const std::string& v) { put<uint64_t>(v.size()); body_.insert(body_.end(), v.begin(), v.end()); }
  void key(const std::string& k, uint32_t type) { s(k); put(type); }
  std::vector<uint8_t> body_;
  uint64_t n_ = 0;
};

}  // namespace batchmax::test
