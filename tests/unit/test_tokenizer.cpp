// Tokenizer tests: llama.cpp's vocab vectors, round trips, special tokens, errors.
#include <gtest/gtest.h>

#include "core/error.h"
#include "format/gguf_reader.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

using namespace batchmax;
using test::GgufBuilder;

namespace {

std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20) out += "\\x" + std::to_string(c);
    else out += static_cast<char>(c);
  }
  return out;
}

class VocabVectors : public ::testing::TestWithParam<const char*> {};

TEST_P(VocabVectors, MatchLlamaCpp) {
  const std::string path = test::tokenizer_vectors_dir() + "/ggml-vocab-" + GetParam() + ".gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  auto file = gguf::File::open(path);
  auto tok = Tokenizer::from_gguf(*file);
  auto cases = test::read_vocab_cases(path);
  ASSERT_GE(cases.size(), 40u);
  int bad = 0;
  for (const auto& c : cases) {
    auto ids = tok->encode(c.text, false, false);
    if (ids != c.ids && ++bad <= 5)
      ADD_FAILURE() << GetParam() << ": '" << escaped(c.text) << "'\n  expected " << ids_str(c.ids)
                    << "\n  got      " << ids_str(ids);
  }
  EXPECT_EQ(bad, 0) << bad << " of " << cases.size() << " texts differ";
}

TEST_P(VocabVectors, RoundTrip) {
  const std::string path = test::tokenizer_vectors_dir() + "/ggml-vocab-" + GetParam() + ".gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  auto file = gguf::File::open(path);
  auto tok = Tokenizer::from_gguf(*file);
  for (const auto& c : test::read_vocab_cases(path)) {
    auto ids = tok->encode(c.text, false, false);
    EXPECT_EQ(tok->decode(ids), c.text) << GetParam() << ": " << escaped(c.text);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, VocabVectors,
                         ::testing::Values("llama-spm", "gpt-2", "phi-3", "starcoder",
                                           "deepseek-llm"));

class SmolLM2Tokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    BATCHMAX_REQUIRE_SMOLLM2();
    file_ = gguf::File::open(test::smollm2_path());
    tok_ = Tokenizer::from_gguf(*file_);
  }
  std::unique_ptr<gguf::File> file_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(SmolLM2Tokenizer, Metadata) {
  EXPECT_EQ(tok_->model_name(), "gpt2");
  EXPECT_EQ(tok_->pre_name(), "smollm");
  EXPECT_EQ(tok_->n_vocab(), 49152);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_TRUE(tok_->is_eog(2));  // <|im_end|>
  EXPECT_TRUE(tok_->is_eog(0));  // <|endoftext|>
  EXPECT_FALSE(tok_->is_eog(1));
  EXPECT_EQ(tok_->special_token_id("<|im_start|>"), 1);
  EXPECT_EQ(tok_->special_token_id("hello"), -1);
}

TEST_F(SmolLM2Tokenizer, ParsesSpecialTokens) {
  const std::string text = "<|im_start|>user\nHi<|im_end|>";
  auto ids = tok_->encode(text, false, true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  auto middle = std::vector<int32_t>(ids.begin() + 1, ids.end() - 1);
  EXPECT_EQ(middle, tok_->encode("user\nHi", false, false));
  EXPECT_EQ(tok_->decode(ids, true), text);
  EXPECT_EQ(tok_->decode(ids, false), "user\nHi");

  // Without parse_special the markers are ordinary text.
  auto plain = tok_->encode(text, false, false);
  EXPECT_GT(plain.size(), ids.size());
  for (int32_t id : plain) EXPECT_GT(id, 16);
  EXPECT_EQ(tok_->decode(plain), text);
}

TEST_F(SmolLM2Tokenizer, AddSpecialFollowsMetadata) {
  // SmolLM2 sets add_bos_token = false and no add_eos_token.
  EXPECT_EQ(tok_->encode("Hello", true, false), tok_->encode("Hello", false, false));
}

TEST_F(SmolLM2Tokenizer, InvalidUtf8BecomesReplacementChar) {
  EXPECT_EQ(tok_->encode("a\xff" "b", false, false), tok_->encode("a\xEF\xBF\xBD" "b", false, false));
  EXPECT_EQ(tok_->decode(tok_->encode("a\xC3", false, false)), "a\xEF\xBF\xBD");
}

TEST_F(SmolLM2Tokenizer, DigitsAreSplitOneByOne) {
  auto ids = tok_->encode("12345", false, false);
  EXPECT_EQ(ids.size(), 5u);
}

TEST(TokenizerSpm, SpacePrefixAndBos) {
  const std::string path = test::tokenizer_vectors_dir() + "/ggml-vocab-llama-spm.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  auto file = gguf::File::open(path);
  auto tok = Tokenizer::from_gguf(*file);
  auto ids = tok->encode("Hello world", true, false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tok->decode(ids), "Hello world");
  EXPECT_EQ(tok->decode(ids, true), "<s>Hello world");
  EXPECT_EQ(tok->encode("", true, false), std::vector<int32_t>{1});
  // "<s>" is a control token: text unless parse_special.
  auto special = tok->encode("<s>x", false, true);
  EXPECT_EQ(special.front(), 1);
  EXPECT_NE(tok->encode("<s>x", false, false).front(), 1);
  // Byte fallback keeps invalid UTF-8 lossless.
  const std::string bad = "a\xff\xfe z";
  EXPECT_EQ(tok->decode(tok->encode(bad, false, false)), bad);
}

// ---- errors -------------------------------------------------------------------------

std::unique_ptr<Tokenizer> load(const GgufBuilder& b) {
  auto bytes = b.bytes();
  auto file = gguf::File::from_bytes(bytes.data(), bytes.size(), "test.gguf");
  return Tokenizer::from_gguf(*file);
}

void expect_error(const GgufBuilder& b, const std::string& needle) {
  try {
    load(b);
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

GgufBuilder tiny_gpt2() {
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "gpt-2");
  b.strs("tokenizer.ggml.tokens", {"a", "b", "ab", "<|end|>"}).i32s("tokenizer.ggml.token_type", {1, 1, 1, 3});
  b.strs("tokenizer.ggml.merges", {"a b"});
  return b;
}

TEST(TokenizerErrors, TinyVocabularyWorks) {
  auto tok = load(tiny_gpt2());
  EXPECT_EQ(tok->encode("abab", false, false), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(tok->encode("ab<|end|>", false, true), (std::vector<int32_t>{2, 3}));
}

TEST(TokenizerErrors, UnknownModel) {
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "wordpiece").strs("tokenizer.ggml.tokens", {"a"});
  expect_error(b, "supported: gpt2, llama");
}

TEST(TokenizerErrors, MissingModel) {
  GgufBuilder b;
  b.strs("tokenizer.ggml.tokens", {"a"});
  expect_error(b, "tokenizer.ggml.model");
}

TEST(TokenizerErrors, MissingTokens) {
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "llama");
  expect_error(b, "tokenizer.ggml.tokens");
}

TEST(TokenizerErrors, TokensOfWrongType) {
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "llama").i32s("tokenizer.ggml.tokens", {1, 2});
  expect_error(b, "tokenizer.ggml.tokens");
}

TEST(TokenizerErrors, MissingMerges) {
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "gpt2").strs("tokenizer.ggml.tokens", {"a"});
  expect_error(b, "tokenizer.ggml.merges");
}

TEST(TokenizerErrors, UnknownPreTokenizer) {
  GgufBuilder c;
  c.str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "no-such-pre");
  c.strs("tokenizer.ggml.tokens", {"a"}).strs("tokenizer.ggml.merges", {});
  expect_error(c, "smollm");  // the message lists the supported names
}

TEST(TokenizerErrors, TokenTypeLengthMismatch) {
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "llama").strs("tokenizer.ggml.tokens", {"a", "b"});
  b.i32s("tokenizer.ggml.token_type", {1});
  expect_error(b, "tokenizer.ggml.token_type");
}

TEST(TokenizerErrors, BosOutOfRange) {
  auto b = tiny_gpt2();
  b.u32("tokenizer.ggml.bos_token_id", 99);
  expect_error(b, "tokenizer.ggml.bos_token_id");
}

TEST(TokenizerErrors, AddBosNotBool) {
  auto b = tiny_gpt2();
  b.u32("tokenizer.ggml.add_bos_token", 1);
  expect_error(b, "tokenizer.ggml.add_bos_token");
}

}  // namespace
