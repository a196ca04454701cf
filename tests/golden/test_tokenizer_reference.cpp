// SmolLM2 tokenizer against HF `tokenizers` ids for a generated corpus
// (scripts/reference/make_tokenizer_reference.py writes tests/golden/data/tokenizer_smollm2.jsonl).
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "../test_support.h"
#include "format/gguf_reader.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

std::string base64_decode(const std::string& in) {
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

std::string show_bytes(const std::string& s) {
  std::string out;
  char buf[8];
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += static_cast<char>(c);
    } else {
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  return out;
}

std::string show_ids(const std::vector<int32_t>& ids, const Tokenizer& tok) {
  std::string out;
  for (int32_t id : ids) out += std::to_string(id) + "'" + show_bytes(tok.token_to_piece(id, true)) + "' ";
  return out;
}

TEST(TokenizerReference, SmolLM2MatchesHuggingFace) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const std::string path = test::source_dir() + "/tests/golden/data/tokenizer_smollm2.jsonl";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  auto file = gguf::File::open(test::smollm2_path());
  auto tok = Tokenizer::from_gguf(*file);

  size_t total = 0, bad = 0;
  std::map<std::string, size_t> bad_by_kind;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    const std::string text = base64_decode(j.at("text_b64").get<std::string>());
    const auto expected = j.at("ids").get<std::vector<int32_t>>();
    ++total;
    auto got = tok->encode(text, false, false);
    if (got == expected) continue;
    ++bad;
    ++bad_by_kind[j.value("kind", "?")];
    if (bad <= 5)
      ADD_FAILURE() << "case " << total << " (" << j.value("kind", "?") << "): '" << show_bytes(text)
                    << "'\n  expected " << show_ids(expected, *tok) << "\n  got      "
                    << show_ids(got, *tok);
  }
  EXPECT_GE(total, 2000u);
  std::string kinds;
  for (auto& [k, n] : bad_by_kind) kinds += k + ":" + std::to_string(n) + " ";
  EXPECT_EQ(bad, 0u) << bad << " of " << total << " strings differ; by kind: " << kinds;
  std::cout << "[ corpus   ] " << total - bad << "/" << total << " strings agree with HF tokenizers\n";
}

}  // namespace
