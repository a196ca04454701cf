// Batch-Max on the real model: eviction that evicts nothing is the identity, the cache
// stays bounded by budget + chunk during prefill, and admission reaches the planned batch.
#include <gtest/gtest.h>

#include <cstdlib>

#include <fstream>
#include <sstream>

#include "batchmax/engine.h"
#include "core/error.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

std::string prose() {
  std::ifstream f(test::source_dir() + "/scripts/reference/texts/lighthouses.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int32_t> prompt_of(const Engine& e, int n_tokens) {
  auto ids = e.tokenizer().encode(prose(), true, false);
  if (int(ids.size()) < n_tokens) ADD_FAILURE() << "text too short: " << ids.size();
  ids.resize(std::min<size_t>(ids.size(), size_t(n_tokens)));
  return ids;
}

EngineOptions options(int step_tokens) {
  EngineOptions eo;
  eo.model_path = test::smollm2_path();
  eo.max_batch = 4;
  eo.step_tokens = step_tokens;
  eo.keep_step_logits = true;
  eo.kv_mem_bytes = int64_t(256) << 20;
  eo.backend = test::engine_backend();
  return eo;
}

// Bytes of one KV block of SmolLM2 (16 entries, head_dim 64, + positions) on the
// backend under test: F32 entries on the CPU, BF16 on CUDA.
int64_t smollm2_block_bytes() {
  const bool cuda = test::engine_backend() == "cuda";
  const int64_t elem = cuda ? 2 : 4;
  // CUDA keeps block tables on the device: 2 ints of table space a block
  // (PagedKVCache::block_bytes), unless BATCHMAX_CUDA_BLOCK_TABLES=0.
  const char* t = std::getenv("BATCHMAX_CUDA_BLOCK_TABLES");
  const bool tables = cuda && !(t && *t == '0');
  return 16 * (2 * 64 * elem + 4) + (tables ? 8 : 0);
}

Request request(std::vector<int32_t> prompt, int max_tokens, const KVSettings& kv) {
  Request r;
  r.id = kv.mode + "/" + kv.policy;
  r.prompt = std::move(prompt);
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  r.kv = kv;
  return r;
}

}  // namespace

// budget >= prompt + output: every mode and policy gives exactly the full-cache tokens
// and logits. One request at a time, so every run has steps of the same rows and the
// kernels do the same arithmetic (batch composition changes summation order at 1e-6).
TEST(KVCompression, BudgetCoveringEverythingIsTheIdentity) {
  BATCHMAX_REQUIRE_SMOLLM2();
  EngineOptions eo = options(64);
  eo.max_batch = 1;
  auto engine = Engine::create(eo);
  auto prompt = prompt_of(*engine, 300);
  KVSettings full;
  full.mode = "full";
  std::vector<Request> reqs = {request(prompt, 12, full)};
  for (const char* mode : {"post-prefill", "batchmax"})
    for (const char* policy : {"window", "h2o", "tova", "snapkv", "knorm", "random"}) {
      KVSettings kv;
      kv.mode = mode;
      kv.policy = policy;
      kv.budget = 320;  // > 300 + 12
      kv.chunk = 64;
      reqs.push_back(request(prompt, 12, kv));
    }
  auto outs = engine->generate(reqs);
  const Output& ref = outs[0];
  ASSERT_EQ(ref.finish_reason, "length") << ref.error;
  for (size_t i = 1; i < outs.size(); ++i) {
    const Output& o = outs[i];
    ASSERT_EQ(o.finish_reason, "length") << reqs[i].id << ": " << o.error;
    EXPECT_EQ(o.tokens, ref.tokens) << reqs[i].id;
    EXPECT_EQ(o.kv_evicted, 0) << reqs[i].id;
    ASSERT_EQ(o.step_logits.size(), ref.step_logits.size());
    for (size_t s = 0; s < ref.step_logits.size(); ++s)
      ASSERT_EQ(o.step_logits[s], ref.step_logits[s]) << reqs[i].id << " step " << s;
  }
}

// The cache of a batchmax sequence never holds more than budget + chunk entries per
// head; post-prefill holds the whole prompt first; both end at the budget (+ slack).
TEST(KVCompression, PeakEntriesPerMode) {
  BATCHMAX_REQUIRE_SMOLLM2();
  auto engine = Engine::create(options(512));
  auto prompt = prompt_of(*engine, 900);
  KVSettings kv;
  kv.budget = 128;
  kv.chunk = 64;
  kv.slack = 8;
  kv.sinks = 4;
  kv.window = 16;
  std::vector<Request> reqs;
  for (const char* mode : {"full", "post-prefill", "batchmax"})
    for (const char* policy : {"snapkv", "h2o", "tova", "window", "knorm"}) {
      kv.mode = mode;
      kv.policy = policy;
      reqs.push_back(request(prompt, 20, kv));
      if (std::string(mode) == "full") break;
    }
  auto outs = engine->generate(reqs);
  for (size_t i = 0; i < outs.size(); ++i) {
    const Output& o = outs[i];
    ASSERT_EQ(o.finish_reason, "length") << reqs[i].id << ": " << o.error;
    const std::string mode = reqs[i].kv->mode;
    std::printf("[kv] %-20s peak entries/head %5lld  peak KV %8.2f MiB  evicted %lld\n",
                reqs[i].id.c_str(), static_cast<long long>(o.kv_peak_entries),
                o.kv_peak_bytes / 1048576.0, static_cast<long long>(o.kv_evicted));
    if (mode == "full") {
      EXPECT_EQ(o.kv_peak_entries, 900 + 20 - 1);
      EXPECT_EQ(o.kv_evicted, 0);
    } else if (mode == "post-prefill") {
      EXPECT_EQ(o.kv_peak_entries, 900);
      EXPECT_GT(o.kv_evicted, 0);
    } else {
      EXPECT_LE(o.kv_peak_entries, kv.budget + kv.chunk);
      EXPECT_GT(o.kv_evicted, 0);
      EXPECT_LT(o.kv_peak_bytes, outs[1].kv_peak_bytes / 3);  // vs post-prefill
    }
    // Text still comes out (a 135M model at budget 128 on prose stays fluent).
    EXPECT_FALSE(o.text.empty()) << reqs[i].id;
  }
}

// With a pool that holds exactly N full-cache requests, the scheduler runs N at once;
// batchmax requests of the same shape run many more.
TEST(KVCompression, AdmissionReachesThePlannedBatch) {
  BATCHMAX_REQUIRE_SMOLLM2();
  EngineOptions eo = options(512);
  eo.max_batch = 0;  // only the pool limits the batch
  eo.keep_step_logits = false;
  KVSettings full;
  full.mode = "full";
  KVSettings bm;
  bm.mode = "batchmax";
  bm.policy = "window";
  bm.budget = 64;
  bm.chunk = 64;
  bm.slack = 16;
  bm.window = 16;
  // Pool for 3 full requests of 400 + 8 tokens: 26 blocks per head, 90 heads.
  eo.kv_mem_bytes = 3 * 26 * 90 * smollm2_block_bytes();
  auto engine = Engine::create(eo);
  auto prompt = prompt_of(*engine, 400);
  ASSERT_EQ(engine->max_concurrent(full, 400, 8), 3);
  const int64_t bm_max = engine->max_concurrent(bm, 400, 8);
  // batchmax reserves budget + slack (80 entries: 5 blocks a head) per request, and the
  // budget + chunk of a prefill step (128: 8 blocks) comes from one shared headroom. The
  // headroom lends room for two chunks at once (a 512-token step holds 8 chunks of 64;
  // those past the first may take 1/16 of the 78 x 90 blocks: one): (78 - 2 x 3) / 5 = 14
  // requests, where reserving 128 each would admit 78 / 8 = 9.
  EXPECT_EQ(engine->blocks_per_request(bm, 400, 8), 5 * 90);
  EXPECT_EQ(engine->prefill_headroom_blocks(bm, 400, 8), 2 * 3 * 90);
  EXPECT_EQ(bm_max, 14);
  for (const KVSettings& kv : {full, bm}) {
    std::vector<Request> reqs;
    const int64_t n = kv.mode == "full" ? 12 : bm_max + 2;
    for (int64_t i = 0; i < n; ++i) reqs.push_back(request(prompt, 8, kv));
    int64_t max_running = 0, peak_kv = 0;
    auto outs = engine->generate(reqs, nullptr, [&](const Progress& p) {
      max_running = p.max_running;
      peak_kv = p.kv_peak_bytes;
      EXPECT_LE(p.kv_bytes, p.kv_pool_bytes);
    });
    for (const auto& o : outs) ASSERT_EQ(o.finish_reason, "length") << o.error;
    std::printf("[admission] %-9s max running %lld (planned %lld), peak KV %.1f MiB\n",
                kv.mode.c_str(), static_cast<long long>(max_running),
                static_cast<long long>(engine->max_concurrent(kv, 400, 8)), peak_kv / 1048576.0);
    EXPECT_EQ(max_running, std::min<int64_t>(n, engine->max_concurrent(kv, 400, 8)));
  }
}

TEST(KVCompression, RequestThatCanNeverFitIsRejectedWithWhatFits) {
  BATCHMAX_REQUIRE_SMOLLM2();
  EngineOptions eo = options(512);
  eo.kv_mem_bytes = 20 * 90 * smollm2_block_bytes();  // 20 blocks per head: 320 entries
  auto engine = Engine::create(eo);
  auto prompt = prompt_of(*engine, 400);
  KVSettings full;
  full.mode = "full";
  KVSettings bm;
  bm.mode = "batchmax";
  bm.budget = 128;
  bm.chunk = 64;
  auto outs = engine->generate({request(prompt, 8, full), request(prompt, 8, bm)});
  EXPECT_EQ(outs[0].finish_reason, "error");
  EXPECT_NE(outs[0].error.find("320"), std::string::npos) << outs[0].error;
  EXPECT_EQ(outs[1].finish_reason, "length") << outs[1].error;
}

TEST(KVCompression, BadSettingsFailTheRequestOnly) {
  BATCHMAX_REQUIRE_SMOLLM2();
  auto engine = Engine::create(options(512));
  auto prompt = prompt_of(*engine, 50);
  KVSettings bad;
  bad.mode = "batchmax";
  bad.policy = "lru";
  KVSettings ok;
  auto outs = engine->generate({request(prompt, 4, bad), request(prompt, 4, ok)});
  EXPECT_EQ(outs[0].finish_reason, "error");
  EXPECT_NE(outs[0].error.find("lru"), std::string::npos);
  EXPECT_EQ(outs[1].finish_reason, "length");
}
