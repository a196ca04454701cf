// Long degenerate inputs must tokenise in near-linear time: a 100k-letter run is a
// single pre-token, so the merge loop itself has to be O(n log n).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <random>

#include "format/gguf_reader.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

using namespace batchmax;

namespace {

std::string repeat(const std::string& unit, size_t n) {
  std::string s;
  s.reserve(unit.size() * n);
  for (size_t i = 0; i < n; ++i) s += unit;
  return s;
}

using Maker = std::function<std::string(size_t)>;

const std::vector<std::pair<const char*, Maker>>& inputs() {
  static const std::vector<std::pair<const char*, Maker>> v = {
      {"letters", [](size_t n) { return std::string(n, 'a'); }},
      {"spaces", [](size_t n) { return std::string(n, ' '); }},
      {"digits", [](size_t n) {
         std::string s(n, '0');
         for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('0' + i % 10);
         return s;
       }},
      {"emoji", [](size_t n) { return repeat("\xF0\x9F\x98\x80", n); }},
      {"newlines_tabs", [](size_t n) { return repeat(" \t\n", n / 3); }},
      {"invalid_bytes", [](size_t n) {
         std::mt19937 rng(7);
         std::string s(n, 0);
         for (auto& c : s) c = static_cast<char>(0x80 + rng() % 0x40);  // stray continuations
         return s;
       }},
  };
  return v;
}

double seconds_to_encode(const Tokenizer& tok, const std::string& text, size_t* n_tokens) {
  double best = 1e9;
  for (int rep = 0; rep < 3; ++rep) {  // best of three: the machine is shared
    auto t0 = std::chrono::steady_clock::now();
    *n_tokens = tok.encode(text, false, false).size();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void check_near_linear(const char* vocab) {
  const std::string path = test::tokenizer_vectors_dir() + "/ggml-vocab-" + vocab + ".gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  auto file = gguf::File::open(path);
  auto tok = Tokenizer::from_gguf(*file);
  const size_t n = 25'000;
  for (const auto& [name, make] : inputs()) {
    size_t small_tokens = 0, large_tokens = 0;
    std::string large = make(4 * n);
    double t_small = seconds_to_encode(*tok, make(n), &small_tokens);
    double t_large = seconds_to_encode(*tok, large, &large_tokens);
    EXPECT_GT(large_tokens, 0u) << name;
    // Linear gives ~4x, n log n a little more, quadratic 16x. A floor of 2 ms keeps
    // timer noise on tiny runs from deciding.
    double ratio = t_large / std::max(t_small, 0.002);
    EXPECT_LT(ratio, 12.0) << vocab << "/" << name << ": " << t_small * 1e3 << " ms for " << n
                           << ", " << t_large * 1e3 << " ms for " << 4 * n;
    if (std::string(name) != "invalid_bytes" || std::string(vocab) != "gpt-2")
      continue;
    // Invalid bytes become U+FFFD, one per byte.
    EXPECT_EQ(tok->decode(tok->encode(large, false, false)).size(), 3 * large.size());
  }
}

TEST(TokenizerPathological, ByteLevelBpeIsNearLinear) { check_near_linear("gpt-2"); }
TEST(TokenizerPathological, SentencePieceIsNearLinear) { check_near_linear("llama-spm"); }
TEST(TokenizerPathological, DeepSeekSplittersAreNearLinear) { check_near_linear("deepseek-llm"); }
TEST(TokenizerPathological, SmolLM2LongDigitRun) {
  if (!test::have_smollm2()) GTEST_SKIP() << "model not fetched";
  auto file = gguf::File::open(test::smollm2_path());
  auto tok = Tokenizer::from_gguf(*file);
  size_t a = 0;
  const std::string big(100'000, '7');
  double t = seconds_to_encode(*tok, big, &a);
  EXPECT_EQ(a, big.size());  // one token per digit
  EXPECT_LT(t, 5.0);
}

}  // namespace
