// Golden tests on tiny synthetic models (scripts/reference/make_tiny_models.py) for the
// paths the SmolLM2 golden test cannot reach: qwen2 (Q/K/V biases, NeoX rope, theta 1e6,
// untied output.weight), Llama-3 rope scaling from the rope_freqs.weight tensor and from
// llama.rope.scaling.* metadata, and F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q6_K weights in a real
// forward pass. Each model's prompts run in one batch, on the SIMD and the scalar kernels.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "batchmax/engine.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

const std::string kDataDir = test::source_dir() + "/tests/golden/data/";

const nlohmann::json& golden() {
  static const nlohmann::json g = [] {
    std::ifstream in(kDataDir + "tiny_models.json");
    return nlohmann::json::parse(in);
  }();
  return g;
}

const nlohmann::json& model_entry(const std::string& name) {
  for (const auto& m : golden()["models"])
    if (m["name"] == name) return m;
  throw std::runtime_error("no model '" + name + "' in tiny_models.json");
}

// float32 engine against the float64 reference on identical dequantised weights. Logits
// are of order 1..10; measured: at most 1e-5 absolute and 1.3e-6 rel-L2 (SIMD), half that
// on the scalar kernels. A wrong path (adjacent-pair instead of NeoX rope, no biases, no
// llama3 scaling) moves logits by 0.03..13 (recorded per prompt in the JSON as
// logit_change_if_wrong), far above these bounds.
constexpr double kMaxAbsLogitError = 1e-4;
constexpr double kRelL2LogitError = 1e-5;

}  // namespace

class TinyModelGolden : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(TinyModelGolden, LogitsAndGreedyTokensMatchReference) {
  const auto& [name, scalar] = GetParam();
  const nlohmann::json& m = model_entry(name);
  const auto& prompts = m["prompts"];
  const int n_new = golden()["n_new"].get<int>();

  EngineOptions eo;
  eo.model_path = kDataDir + m["file"].get<std::string>();
  eo.n_threads = 2;
  eo.max_batch = int(prompts.size());
  eo.force_scalar = scalar;
  eo.keep_last_logits = true;
  eo.kv_mem_bytes = int64_t(16) << 20;
  auto engine = Engine::create(eo);

  std::vector<Request> reqs;
  for (const auto& p : prompts) {
    Request r;
    r.id = p["name"].get<std::string>();
    r.prompt = p["tokens"].get<std::vector<int32_t>>();
    r.sampling.max_tokens = n_new;
    r.sampling.ignore_eos = true;
    // Same ids from our tokenizer as from the reference (HF tokenizers) for the text.
    EXPECT_EQ(engine->tokenizer().encode(p["text"].get<std::string>(), true, true), r.prompt)
        << r.id;
    reqs.push_back(std::move(r));
  }
  std::vector<Output> outs = engine->generate(reqs);
  ASSERT_EQ(outs.size(), reqs.size());

  for (size_t i = 0; i < outs.size(); ++i) {
    const Output& o = outs[i];
    const auto ref = prompts[i]["last_logits"].get<std::vector<double>>();
    ASSERT_EQ(o.finish_reason, "length") << o.id << ": " << o.error;
    ASSERT_EQ(o.last_logits.size(), ref.size()) << o.id;
    double max_abs = 0, num = 0, den = 0;
    for (size_t j = 0; j < ref.size(); ++j) {
      const double d = double(o.last_logits[j]) - ref[j];
      max_abs = std::max(max_abs, std::abs(d));
      num += d * d;
      den += ref[j] * ref[j];
    }
    const double rel = std::sqrt(num / den);
    EXPECT_LE(max_abs, kMaxAbsLogitError) << name << "/" << o.id;
    EXPECT_LE(rel, kRelL2LogitError) << name << "/" << o.id;
    // Every reference step has a top-1 margin > 1e-3 (the script checks), so the tokens
    // must match exactly.
    EXPECT_EQ(o.tokens, prompts[i]["greedy_ids"].get<std::vector<int32_t>>()) << name << "/" << o.id;
    std::printf("[tiny] %-13s %-6s %-9s %3zu tok  max|dlogit| %.2e  rel-L2 %.2e\n", name.c_str(),
                scalar ? "scalar" : "simd", o.id.c_str(), reqs[i].prompt.size(), max_abs, rel);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, TinyModelGolden,
    ::testing::Combine(::testing::Values("qwen2_f16", "llama3_quant", "llama3_meta"),
                       ::testing::Bool()),
    [](const auto& info) {
      return std::get<0>(info.param) + (std::get<1>(info.param) ? "_Scalar" : "_Simd");
    });

// `batchmax info` reads the qwen2 file's header as the engine does.
TEST(TinyModelInfo, ReportsQwen2) {
#ifndef BATCHMAX_BINARY
  GTEST_SKIP() << "the batchmax program is not part of this build";
#else
  const std::string cmd = std::string(BATCHMAX_BINARY) + " info --json --model '" + kDataDir +
                          "tiny/qwen2_f16.gguf' 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  ASSERT_TRUE(pipe);
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = std::fread(buf.data(), 1, buf.size(), pipe.get())) out.append(buf.data(), n);
  nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(j["architecture"], "qwen2");
  EXPECT_EQ(j["tied_embeddings"], false);
  EXPECT_EQ(j["rope_theta"], 1e6);
  for (const char* t : {"F32", "F16", "BF16"}) EXPECT_TRUE(j["tensor_types"].contains(t)) << t;
  EXPECT_EQ(j["tokenizer"]["model"], "gpt2");
#endif
}
