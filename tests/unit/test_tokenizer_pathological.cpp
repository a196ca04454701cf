// Long degenerate inputs must tokenise in near-linear time: a 100k-letter run is a
// single pre-token, so the merge loop itself has to be O(n log n).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <random>

#include <sys/mman.h>

#include "core/error.h"

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
      {"punctuation", [](size_t n) { return std::string(n, '!'); }},
      {"cjk", [](size_t n) { return repeat("\xE4\xB8\xAD", n); }},  // no spaces: one long word
      {"zwj_family", [](size_t n) {  // man ZWJ woman ZWJ girl: 18 bytes, 5 code points
         return repeat("\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",
                       n / 5);
       }},
      {"letters_digits", [](size_t n) {
         std::string s(n, 'a');
         for (size_t i = 1; i < n; i += 2) s[i] = '7';
         return s;
       }},
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

// Special-token texts everywhere, parsed as specials: the partition into fragments must
// stay near-linear in the number of matches too.
void check_specials_near_linear(const char* vocab, const std::string& special) {
  const std::string path = test::tokenizer_vectors_dir() + "/ggml-vocab-" + vocab + ".gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  auto file = gguf::File::open(path);
  auto tok = Tokenizer::from_gguf(*file);
  const int32_t id = tok->special_token_id(special);
  ASSERT_GE(id, 0) << special;
  auto time_it = [&](size_t n, size_t* n_special) {
    const std::string text = repeat(special + "a", n);
    double best = 1e9;
    for (int rep = 0; rep < 3; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      auto ids = tok->encode(text, false, true);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      *n_special = static_cast<size_t>(std::count(ids.begin(), ids.end(), id));
    }
    return best;
  };
  const size_t n = 25'000;
  size_t small = 0, large = 0;
  const double t_small = time_it(n, &small), t_large = time_it(4 * n, &large);
  EXPECT_EQ(small, n);
  EXPECT_EQ(large, 4 * n);
  EXPECT_LT(t_large / std::max(t_small, 0.002), 12.0)
      << vocab << ": " << t_small * 1e3 << " ms for " << n << ", " << t_large * 1e3 << " ms for " << 4 * n;
}

TEST(TokenizerPathological, ManySpecialTokensSpm) { check_specials_near_linear("llama-spm", "</s>"); }
TEST(TokenizerPathological, ManySpecialTokensBpe) { check_specials_near_linear("gpt-2", "<|endoftext|>"); }

// Token ids and counts are int32: text over Tokenizer::kMaxEncodeBytes is refused with
// the limit named, before a byte of it is read (the pages are mapped, never touched).
TEST(TokenizerLimits, TextOverTheLimitIsRejected) {
  const std::string path = test::tokenizer_vectors_dir() + "/ggml-vocab-llama-spm.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  auto file = gguf::File::open(path);
  auto tok = Tokenizer::from_gguf(*file);
  const size_t n = Tokenizer::kMaxEncodeBytes + 1;
  void* p = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  try {
    tok->encode(std::string_view(static_cast<const char*>(p), n), true, true);
    ADD_FAILURE() << "accepted " << n << " bytes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("over the limit of 536870912 bytes"), std::string::npos)
        << e.what();
  }
  ::munmap(p, n);
  EXPECT_EQ(tok->decode(tok->encode("just under", false, false)), "just under");
}

}  // namespace
