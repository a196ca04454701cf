// Dummy weights: an engine from a preset shape runs without a file, its logits are
// finite, and two engines with the same seed agree exactly.
#include <gtest/gtest.h>

#include <cmath>

#include "batchmax/engine.h"
#include "core/error.h"
#include "model/presets.h"

namespace batchmax {
namespace {

EngineOptions tiny_options() {
  EngineOptions o;
  o.dummy_weights = "tiny";
  o.n_threads = 2;
  o.max_batch = 4;
  o.kv_mem_bytes = int64_t(8) << 20;
  o.keep_last_logits = true;
  return o;
}

std::vector<Request> requests() {
  std::vector<Request> r(3);
  for (size_t i = 0; i < r.size(); ++i) {
    r[i].id = std::to_string(i);
    for (int j = 0; j < 40 + 30 * int(i); ++j) r[i].prompt.push_back((j * 37 + int(i)) % 512);
    r[i].sampling.max_tokens = 6;
  }
  r[2].kv = KVSettings{};
  r[2].kv->mode = "batchmax";
  r[2].kv->budget = 48;
  r[2].kv->chunk = 16;
  return r;
}

TEST(DummyWeights, PresetsHaveConsistentShapes) {
  for (const std::string& n : preset_names()) {
    const HParams hp = preset_hparams(n);
    EXPECT_EQ(hp.n_head % hp.n_head_kv, 0) << n;
    EXPECT_EQ(hp.n_embd, hp.n_head * hp.head_dim) << n;
  }
  const HParams hp = preset_hparams("llama3-8b");
  EXPECT_EQ(hp.n_vocab, 128256);
  EXPECT_EQ(hp.n_ff, 14336);
  EXPECT_EQ(hp.n_head_kv, 8);
  EXPECT_FLOAT_EQ(hp.rope_scale_factor, 8);
  EXPECT_THROW(preset_hparams("llama9-1t"), Error);
}

TEST(DummyWeights, RunsFiniteAndDeterministic) {
  auto a = Engine::create(tiny_options());
  auto b = Engine::create(tiny_options());
  EXPECT_THROW(a->tokenizer(), Error);
  EXPECT_EQ(a->chat_template(), nullptr);
  const auto oa = a->generate(requests());
  const auto ob = b->generate(requests());
  ASSERT_EQ(oa.size(), 3u);
  for (size_t i = 0; i < oa.size(); ++i) {
    EXPECT_EQ(oa[i].finish_reason, "length") << oa[i].error;
    EXPECT_EQ(oa[i].tokens.size(), 6u);
    ASSERT_EQ(oa[i].last_logits.size(), 512u);
    for (float x : oa[i].last_logits) ASSERT_TRUE(std::isfinite(x));
    EXPECT_EQ(oa[i].last_logits, ob[i].last_logits);
    EXPECT_EQ(oa[i].tokens, ob[i].tokens);
  }
  // Random weights: logits are spread, not constant.
  float lo = oa[0].last_logits[0], hi = lo;
  for (float x : oa[0].last_logits) lo = std::min(lo, x), hi = std::max(hi, x);
  EXPECT_GT(hi - lo, 0.1f);
  EXPECT_GT(a->peak_backend_bytes(), 0);
}

TEST(DummyWeights, SeedChangesTheWeights) {
  EngineOptions o = tiny_options();
  auto a = Engine::create(o);
  o.dummy_seed = 2;
  auto b = Engine::create(o);
  EXPECT_NE(a->generate(requests())[0].last_logits, b->generate(requests())[0].last_logits);
}

TEST(DummyWeights, MemoryBudgetCountsGeneratedWeights) {
  EngineOptions o = tiny_options();
  o.mem_budget_bytes = int64_t(4) << 20;
  auto e = Engine::create(o);
  const MemoryPlan& m = e->memory_plan();
  EXPECT_GT(m.weight_bytes, 500 * 1024);  // tiny: ~0.55 MiB of F32
  EXPECT_LT(m.weight_bytes, 600 * 1024);
  EXPECT_LE(m.weight_bytes + m.workspace_bytes + m.kv_pool_bytes, o.mem_budget_bytes);
  e->generate(requests());
  EXPECT_LE(e->peak_backend_bytes(), o.mem_budget_bytes);
}

// step_tokens 0 takes the backend's size (the CPU's 512), and the plan's workspace is
// measured for that size; a size the user gives is kept; a negative one is an error.
TEST(DummyWeights, StepTokensDefaultToTheBackendsChoice) {
  EngineOptions o = tiny_options();
  ASSERT_EQ(o.step_tokens, 0);
  auto e = Engine::create(o);
  EXPECT_EQ(e->memory_plan().step_tokens, 512);
  o.step_tokens = 64;
  auto small = Engine::create(o);
  EXPECT_EQ(small->memory_plan().step_tokens, 64);
  EXPECT_LT(small->memory_plan().workspace_bytes, e->memory_plan().workspace_bytes);
  EXPECT_EQ(small->generate(requests()).size(), 3u);
  o.step_tokens = -1;
  EXPECT_THROW(Engine::create(o), Error);
}

// A sampled request's tokens do not depend on where the token is picked: with its logits
// sent to the host (keep_step_logits) or picked by the backend (Backend::sample_rows).
// Greedy, temperature alone and top-k requests in one batch, a batchmax one among them.
TEST(DummyWeights, SampledTokensAreTheSameWhereverPicked) {
  EngineOptions host_side = tiny_options(), backend_side = tiny_options();
  host_side.keep_last_logits = backend_side.keep_last_logits = false;
  host_side.keep_step_logits = true;
  auto reqs = [] {
    std::vector<Request> r = requests();
    for (size_t i = 0; i < r.size(); ++i) {
      r[i].sampling.max_tokens = 24;
      r[i].sampling.seed = 100 + i;
      r[i].sampling.temperature = i == 0 ? 0.0f : 1.3f;
    }
    r.push_back(r[1]);
    r.back().id = "top-k";
    r.back().sampling.top_k = 3;
    // More rows than one thread takes: the host side draws them in parallel
    // (EngineBatch's draw pool), each with its own sampler, in a fixed order per sampler.
    for (int j = 0; j < 8; ++j) {
      r.push_back(r[1 + j % 2]);
      r.back().id = "more-" + std::to_string(j);
      r.back().sampling.seed = 500 + uint64_t(j);
      if (j % 3 == 0) r.back().sampling.top_p = 0.9f;
      if (j % 4 == 1) r.back().logprobs = 2;
    }
    return r;
  };
  const auto a = Engine::create(host_side)->generate(reqs());
  const auto b = Engine::create(backend_side)->generate(reqs());
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].tokens.size(), 24u) << a[i].error;
    EXPECT_EQ(a[i].tokens, b[i].tokens) << a[i].id;
    EXPECT_FALSE(a[i].step_logits.empty());
    if (reqs()[i].logprobs < 0) EXPECT_TRUE(b[i].step_logits.empty());
    ASSERT_EQ(a[i].token_info.size(), b[i].token_info.size()) << a[i].id;
    for (size_t t = 0; t < a[i].token_info.size(); ++t) {
      // The two runs multiply the LM head over different sets of rows (rounding).
      EXPECT_NEAR(a[i].token_info[t].logprob, b[i].token_info[t].logprob, 1e-4) << a[i].id;
      EXPECT_EQ(a[i].token_info[t].top.size(), 2u) << a[i].id;
    }
  }
  EXPECT_NE(a[1].tokens, a[3].tokens);  // top-k 3 of the same seed: another draw
  // Different seeds give different samples at this temperature.
  auto other = reqs();
  other[1].sampling.seed = 999;
  EXPECT_NE(Engine::create(backend_side)->generate(other)[1].tokens, b[1].tokens);
}

// Top-p over a 49152-token vocabulary whose nuclei are far wider than the backend's 1024
// candidates (dummy weights give nearly flat logits): the backend sends those rows'
// first 4096 sorted entries (Backend::sorted_prefix), or draws from the whole sorted row
// with the request's uniform (Backend::draw_sorted_rows), and the tokens are the ones the
// host's Sampler draws from the whole row.
TEST(DummyWeights, WideTopPNucleiDrawWhatTheWholeRowDraws) {
  EngineOptions o;
  o.dummy_weights = "smollm2-135m-shape";
  o.n_threads = 2;
  o.max_batch = 4;
  o.kv_mem_bytes = int64_t(64) << 20;
  EngineOptions host_side = o;
  host_side.keep_step_logits = true;
  auto reqs = [] {
    std::vector<Request> r(3);
    for (size_t i = 0; i < r.size(); ++i) {
      r[i].id = std::to_string(i);
      for (int j = 0; j < 20 + 7 * int(i); ++j) r[i].prompt.push_back((j * 131 + int(i)) % 49152);
      r[i].sampling.max_tokens = 5;
      r[i].sampling.seed = 40 + i;
      // Hot enough that 1024 entries hold too little, and for two of them 4096 too.
      r[i].sampling.temperature = i == 0 ? 50.0f : 8.0f;
      r[i].sampling.top_p = i == 2 ? 0.6f : 0.95f;
    }
    return r;
  };
  const auto a = Engine::create(host_side)->generate(reqs());
  const auto b = Engine::create(o)->generate(reqs());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].tokens.size(), 5u) << a[i].error;
    EXPECT_EQ(a[i].tokens, b[i].tokens) << i;
  }
}

}  // namespace
}  // namespace batchmax
