// SmolLM2 tokenizer against HF `tokenizers` ids for a generated corpus
// (scripts/reference/make_tokenizer_reference.py writes tests/golden/data/tokenizer_smollm2.jsonl).
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "../unit/tokenizer_test_util.h"
#include "format/gguf_reader.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using namespace batchmax;

namespace {

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

  size_t total = 0, bad = 0, round_trips = 0;
  std::map<std::string, size_t> bad_by_kind;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    const std::string text = test::base64_decode(j.at("text_b64").get<std::string>());
    const auto expected = j.at("ids").get<std::vector<int32_t>>();
    ++total;
    auto got = tok->encode(text, false, false);
    // Byte-level BPE is lossless on valid UTF-8 (invalid bytes come back as U+FFFD).
    if (unicode::to_utf8(unicode::decode_utf8(text)) == text) {
      ++round_trips;
      EXPECT_EQ(tok->decode(got), text) << "round trip of case " << total;
    }
    if (got == expected) continue;
    ++bad;
    ++bad_by_kind[j.value("kind", "?")];
    if (bad <= 5)
      ADD_FAILURE() << "case " << total << " (" << j.value("kind", "?") << "): '" << show_bytes(text)
                    << "'\n  expected " << show_ids(expected, *tok) << "\n  got      "
                    << show_ids(got, *tok);
  }
  EXPECT_GE(total, 2000u);
  EXPECT_GT(round_trips, total / 2);
  std::string kinds;
  for (auto& [k, n] : bad_by_kind) kinds += k + ":" + std::to_string(n) + " ";
  EXPECT_EQ(bad, 0u) << bad << " of " << total << " strings differ; by kind: " << kinds;
  std::cout << "[ corpus   ] " << total - bad << "/" << total << " strings agree with HF tokenizers\n";
}

// The hand-written splitters against Oniguruma running each model's published regex.
TEST(TokenizerReference, PreTokenizerSplitsMatchRegexes) {
  const std::string path = test::source_dir() + "/tests/golden/data/pretokenizer_splits.jsonl";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  std::map<std::string, size_t> total, bad;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    const std::string pre = j.at("pre").get<std::string>();
    const std::string text = test::base64_decode(j.at("text_b64").get<std::string>());
    std::vector<std::string> expected;
    for (const auto& w : j.at("words_b64")) expected.push_back(test::base64_decode(w.get<std::string>()));
    auto cps = unicode::decode_utf8(text);
    std::vector<std::string> got;
    for (const tok::Span& s : tok::PreTokenizer::for_name(pre).split(cps))
      got.push_back(unicode::to_utf8(std::vector<uint32_t>(cps.begin() + s.begin, cps.begin() + s.end)));
    ++total[pre];
    if (got == expected) continue;
    if (++bad[pre] <= 3) {
      std::string e, g;
      for (auto& w : expected) e.append("[").append(show_bytes(w)).append("]");
      for (auto& w : got) g.append("[").append(show_bytes(w)).append("]");
      ADD_FAILURE() << pre << ": '" << show_bytes(text) << "'\n  expected " << e << "\n  got      " << g;
    }
  }
  EXPECT_EQ(total.size(), 3u);
  for (auto& [pre, n] : total) EXPECT_EQ(bad[pre], 0u) << pre << ": " << bad[pre] << " of " << n << " differ";
}

}  // namespace
