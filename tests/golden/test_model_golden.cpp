// Golden test of the whole engine against the independent NumPy reference
// (scripts/reference/make_golden.py, float64): last-position logits of every prompt and
// 64 greedy tokens, all prompts run together in one batch of different lengths.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "batchmax/engine.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

struct Golden {
  nlohmann::json meta;
  std::vector<float> logits;  // prompts x vocab
};

Golden load_golden() {
  const std::string dir = test::source_dir() + "/tests/golden/data/";
  Golden g;
  std::ifstream js(dir + "smollm2_golden.json");
  g.meta = nlohmann::json::parse(js);
  std::ifstream bin(dir + g.meta["logits_file"].get<std::string>(), std::ios::binary);
  bin.seekg(0, std::ios::end);
  g.logits.resize(size_t(bin.tellg()) / sizeof(float));
  bin.seekg(0);
  bin.read(reinterpret_cast<char*>(g.logits.data()), std::streamsize(g.logits.size() * sizeof(float)));
  return g;
}

std::vector<int32_t> top_k(std::span<const float> v, int k) {
  std::vector<int32_t> idx(v.size());
  for (size_t i = 0; i < v.size(); ++i) idx[i] = int32_t(i);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b]; });
  idx.resize(k);
  return idx;
}

bool contains(const std::vector<int32_t>& v, int32_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// Tolerances against the float64 reference on the same dequantised weights (logits of
// this model span about -20..35): float32 on the CPU; bf16 weights and activations on
// CUDA, where greedy paths may part at near-ties (each side's token then in the other's
// top 5).
struct Tolerance {
  double max_abs, rel_l2;
  int allowed_divergent_prompts;
};
Tolerance tolerance() {
  if (test::engine_backend() == "cuda") return {1.5, 5e-2, 10};
  return {0.05, 2e-3, 2};
}

}  // namespace

class ModelGolden : public ::testing::TestWithParam<bool> {};

TEST_P(ModelGolden, LogitsAndGreedyTokensMatchReference) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const bool one_batch = GetParam();
  Golden g = load_golden();
  const auto& prompts = g.meta["prompts"];
  const int64_t V = g.meta["logits_per_prompt"].get<int64_t>();
  const int n_new = g.meta["n_new"].get<int>();

  EngineOptions eo;
  eo.model_path = test::smollm2_path();
  eo.max_batch = one_batch ? int(prompts.size()) : 1;
  eo.step_tokens = 384;  // long prompts run in several chunks, mixed with decode steps
  eo.keep_last_logits = true;
  eo.keep_step_logits = true;
  eo.backend = test::engine_backend();
  const Tolerance tol = tolerance();
  auto engine = Engine::create(eo);

  std::vector<Request> reqs;
  for (const auto& p : prompts) {
    Request r;
    r.id = p["name"].get<std::string>();
    r.prompt = p["tokens"].get<std::vector<int32_t>>();
    r.sampling.max_tokens = n_new;
    r.sampling.ignore_eos = true;
    reqs.push_back(r);
    // Our tokenizer gives the reference tokenizer's ids for the prompt text.
    const bool chat = r.id.rfind("chat", 0) == 0;
    EXPECT_EQ(engine->tokenizer().encode(p["text"].get<std::string>(), true, chat), r.prompt)
        << r.id;
  }
  std::vector<Output> outs = engine->generate(reqs);
  ASSERT_EQ(outs.size(), prompts.size());

  int exact_prompts = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const Output& o = outs[i];
    ASSERT_EQ(o.finish_reason, "length") << o.id << ": " << o.error;
    ASSERT_EQ(o.last_logits.size(), size_t(V));
    const float* ref = g.logits.data() + p["logits_offset"].get<int64_t>();
    double max_abs = 0, num = 0, den = 0;
    for (int64_t j = 0; j < V; ++j) {
      double d = double(o.last_logits[j]) - ref[j];
      max_abs = std::max(max_abs, std::abs(d));
      num += d * d;
      den += double(ref[j]) * ref[j];
    }
    const double rel = std::sqrt(num / den);
    EXPECT_LE(max_abs, tol.max_abs) << o.id;
    EXPECT_LE(rel, tol.rel_l2) << o.id;
    std::printf("[golden] %-14s prompt %5zu tok  max|dlogit| %.2e  rel-L2 %.2e", o.id.c_str(),
                reqs[i].prompt.size(), max_abs, rel);

    // Greedy tokens: equal up to the first divergence, which must be a near-tie: each
    // side's token in the other's top 5. After it the contexts differ.
    const auto ref_ids = p["greedy_ids"].get<std::vector<int32_t>>();
    const auto ref_top5 = p["greedy_top5_ids"].get<std::vector<std::vector<int32_t>>>();
    ASSERT_EQ(o.tokens.size(), size_t(n_new)) << o.id;
    size_t same = 0;
    while (same < ref_ids.size() && o.tokens[same] == ref_ids[same]) ++same;
    if (same < ref_ids.size()) {
      EXPECT_TRUE(contains(ref_top5[same], o.tokens[same]))
          << o.id << ": diverged at step " << same << " with token " << o.tokens[same]
          << " outside the reference's top 5";
      EXPECT_TRUE(contains(top_k(o.step_logits[same], 5), ref_ids[same]))
          << o.id << ": reference token " << ref_ids[same] << " outside our top 5 at step " << same;
    } else {
      ++exact_prompts;
    }
    std::printf("  greedy %zu/%zu equal\n", same, ref_ids.size());
  }
  // Most prompts have no near-tie at all: they must match all 64 tokens.
  EXPECT_GE(exact_prompts, int(prompts.size()) - tol.allowed_divergent_prompts);
  std::printf("[golden] backend %s: %d of %zu prompts with all %d greedy tokens equal\n",
              eo.backend.c_str(), exact_prompts, prompts.size(), n_new);
}

INSTANTIATE_TEST_SUITE_P(Batching, ModelGolden, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "OneBatch" : "OneByOne"; });
