// EngineOptions::schedule: which work a step takes first while prompts wait. On the real
// model, every order gives the same tokens (the CPU's rows do not depend on their step);
// "auto" holds decoders back only once every request has been admitted.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "batchmax/engine.h"
#include "core/error.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

constexpr int kRequests = 10;
constexpr int kChunk = 32;

// Ten prompts of prose; half evict (kv_mode `evicting`), one samples. In batchmax mode
// the prompts are whole chunks (64-160 tokens), otherwise 30-138 tokens.
std::vector<Request> requests(const Engine& e, const std::string& evicting) {
  std::ifstream f(test::source_dir() + "/scripts/reference/texts/lighthouses.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::vector<int32_t> ids = e.tokenizer().encode(ss.str(), true, false);
  std::vector<Request> rs;
  for (int i = 0; i < kRequests; ++i) {
    Request r;
    r.id = std::to_string(i);
    const size_t len = evicting == "batchmax" ? size_t(kChunk * (2 + i % 4) - 1) : size_t(29 + 12 * i);
    const size_t start = 1 + size_t(11 * i), end = start + len;
    r.prompt = {ids[0]};
    r.prompt.insert(r.prompt.end(), ids.begin() + ptrdiff_t(start), ids.begin() + ptrdiff_t(end));
    r.sampling.max_tokens = 6 + 3 * (i % 4);
    r.sampling.ignore_eos = true;
    if (i == 3) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = 7;
    }
    if (i % 2 == 0) {
      r.kv = KVSettings{};
      r.kv->mode = evicting;
      r.kv->budget = 40;
      r.kv->chunk = kChunk;
      r.kv->slack = 4;
    }
    rs.push_back(std::move(r));
  }
  return rs;
}

struct ScheduleRun {
  std::vector<Output> outs;
  std::vector<std::pair<int64_t, int64_t>> steps;  // each step's prefill and decode tokens
  int mixed_steps() const {
    int n = 0;
    for (const auto& [pt, dt] : steps) n += pt > 0 && dt > 0;
    return n;
  }
};

// step_tokens 0: every chunk whole in every step, whichever order; chunk ends (and so
// what is evicted) are then the same in every run.
ScheduleRun run_with(const std::string& schedule, int max_batch, int step_tokens = 0,
                     const std::string& evicting = "post-prefill") {
  EngineOptions eo;
  eo.model_path = test::smollm2_path();
  eo.backend = test::engine_backend();
  eo.max_batch = max_batch;
  eo.prefill_chunk = kChunk;
  eo.step_tokens = step_tokens > 0 ? step_tokens : max_batch * kChunk + max_batch;
  eo.kv_mem_bytes = int64_t(256) << 20;
  eo.overlap_steps = 0;
  eo.schedule = schedule;
  auto e = Engine::create(eo);
  ScheduleRun r;
  int64_t last_step = 0;
  r.outs = e->generate(requests(*e, evicting), nullptr, [&](const Progress& p) {
    if (p.steps == last_step) return;
    last_step = p.steps;
    r.steps.push_back({p.step_prefill_tokens, p.step_decode_tokens});
  });
  return r;
}

void expect_same_tokens(const ScheduleRun& a, const ScheduleRun& b) {
  ASSERT_EQ(a.outs.size(), b.outs.size());
  for (size_t i = 0; i < a.outs.size(); ++i) {
    SCOPED_TRACE("request " + a.outs[i].id);
    EXPECT_EQ(a.outs[i].finish_reason, "length");
    if (test::engine_backend() == "cpu") {
      EXPECT_EQ(a.outs[i].tokens, b.outs[i].tokens);
      EXPECT_EQ(a.outs[i].kv_evicted, b.outs[i].kv_evicted);
    } else {  // the GPU's bf16 rounding follows a step's rows: lengths only
      EXPECT_EQ(a.outs[i].tokens.size(), b.outs[i].tokens.size());
    }
  }
}

}  // namespace

// Two chunks a step, four requests at a time out of ten: prefill-first plans other steps
// than decode-first (auto, with requests waiting until the last prompts, hardly does).
// Half the requests evict once their prompt is in (post-prefill).
TEST(StepSchedule, EveryOrderGivesTheSameTokens) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const ScheduleRun decode_first = run_with("decode-first", 4, 2 * kChunk);
  for (const char* s : {"prefill-first", "auto"}) {
    SCOPED_TRACE(s);
    const ScheduleRun other = run_with(s, 4, 2 * kChunk);
    if (std::string(s) == "prefill-first") EXPECT_NE(other.steps, decode_first.steps);
    expect_same_tokens(decode_first, other);
  }
  EXPECT_GT(decode_first.outs[kRequests - 2].kv_evicted, 0);
}

// Batchmax evicts after every chunk, so the tokens depend on where chunks end. With
// whole-chunk prompts and a step of whole chunks, prefill first never cuts one; decode
// first is given room for every chunk of the batch.
TEST(StepSchedule, BatchmaxChunksStayWholeWithPrefillFirst) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const ScheduleRun roomy = run_with("decode-first", kRequests, 0, "batchmax");
  const ScheduleRun prefill_first = run_with("prefill-first", kRequests, 2 * kChunk, "batchmax");
  // Decoders were held back: decode first at the same step would have mixed them in.
  const ScheduleRun same_step = run_with("decode-first", kRequests, 2 * kChunk, "batchmax");
  EXPECT_GT(same_step.mixed_steps(), 8);
  EXPECT_LE(prefill_first.mixed_steps(), 3);
  expect_same_tokens(roomy, prefill_first);
  EXPECT_GT(roomy.outs[kRequests - 2].kv_evicted, 0);
}

TEST(StepSchedule, AutoHoldsDecodersOnceEveryRequestIsAdmitted) {
  BATCHMAX_REQUIRE_SMOLLM2();
  // All ten admitted at once, two chunks a step: with auto, decoders get only the tokens
  // prefill leaves (a prompt takes one chunk a step, so the last one alone leaves half).
  constexpr int kStep = 2 * kChunk;
  const ScheduleRun all_in = run_with("auto", kRequests, kStep);
  const ScheduleRun streaming = run_with("decode-first", kRequests, kStep);
  for (size_t i = 0; i < all_in.steps.size(); ++i) {
    const auto [pt, dt] = all_in.steps[i];
    if (pt > 0) EXPECT_LE(pt + dt, kStep) << "step " << i;
  }
  EXPECT_LE(all_in.mixed_steps(), 3);  // the last prompts' steps
  EXPECT_GT(streaming.mixed_steps(), 8);
  // Four at a time: while requests wait, auto decodes first, so steps mix.
  EXPECT_GT(run_with("auto", 4, kStep).mixed_steps(), 8);
}

TEST(StepSchedule, UnknownScheduleIsRejected) {
  EngineOptions eo;
  eo.dummy_weights = "tiny";
  eo.schedule = "fastest";
  try {
    Engine::create(eo);
    FAIL() << "an unknown schedule was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fastest"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("decode-first"), std::string::npos) << e.what();
  }
}
