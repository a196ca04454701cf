// Steps in flight (EngineOptions::overlap_steps): each step is launched before the last
// one's tokens are read, its decode rows fed by those tokens where they are. On the real
// model, with stops on EOS and stop strings (a row past the stop is dropped), sampling,
// admission waves, host-bound requests among the others, eviction and cancellation, the
// outputs are those of one step at a time. Runs on BATCHMAX_TEST_BACKEND (cpu or cuda).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "batchmax/engine.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

std::vector<int32_t> prose_ids(const Engine& e) {
  std::ifstream f(test::source_dir() + "/scripts/reference/texts/lighthouses.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  return e.tokenizer().encode(ss.str(), true, false);
}

EngineOptions options(int overlap) {
  EngineOptions eo;
  eo.model_path = test::smollm2_path();
  eo.backend = test::engine_backend();
  eo.max_batch = 4;
  eo.step_tokens = 64;  // prompts take several steps, decode rows share them
  eo.kv_mem_bytes = int64_t(256) << 20;
  eo.overlap_steps = overlap;
  return eo;
}

// Requests that stop every way: on EOS (greedy answers to short prompts end), on a stop
// string, at max_tokens; greedy and sampled; one asks for logprobs (its steps need the
// host, so the batch goes one step at a time while it runs).
std::vector<Request> mixed_requests(const Engine& e, bool with_logprobs) {
  const std::vector<int32_t> ids = prose_ids(e);
  std::vector<Request> rs;
  for (int i = 0; i < 10; ++i) {
    Request r;
    r.id = std::to_string(i);
    // BOS, then 20 + 37 i tokens of the text from token 1 + 13 i.
    const size_t start = 1 + size_t(13 * i), end = std::min(ids.size(), start + size_t(20 + 37 * i));
    r.prompt = {ids[0]};
    r.prompt.insert(r.prompt.end(), ids.begin() + ptrdiff_t(start), ids.begin() + ptrdiff_t(end));
    r.sampling.max_tokens = 4 + 7 * (i % 5);
    if (i % 3 == 1) r.sampling.stop = {".", ","};
    if (i % 4 == 2) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = uint64_t(100 + i);
    }
    if (i % 5 == 3) r.sampling.ignore_eos = true;
    rs.push_back(std::move(r));
  }
  if (with_logprobs) rs[7].logprobs = 2;
  return rs;
}

struct RunResult {
  std::vector<Output> outs;
  Progress last;
};

RunResult run(int overlap, const std::function<std::vector<Request>(const Engine&)>& make,
              int prefill_chunk = 0) {
  EngineOptions eo = options(overlap);
  if (prefill_chunk > 0) {
    eo.max_batch = 10;  // everyone at once
    // Every chunk whole in every step: where the chunks end (and so what is evicted)
    // then does not depend on which step a request is admitted in.
    eo.prefill_chunk = prefill_chunk;
    eo.step_tokens = eo.max_batch * prefill_chunk + eo.max_batch;
  }
  auto e = Engine::create(eo);
  RunResult r;
  r.outs = e->generate(make(*e), nullptr, [&](const Progress& p) { r.last = p; });
  return r;
}

void expect_same(const RunResult& a, const RunResult& b) {
  ASSERT_EQ(a.outs.size(), b.outs.size());
  for (size_t i = 0; i < a.outs.size(); ++i) {
    SCOPED_TRACE("request " + a.outs[i].id);
    EXPECT_EQ(a.outs[i].tokens, b.outs[i].tokens);
    EXPECT_EQ(a.outs[i].text, b.outs[i].text);
    EXPECT_EQ(a.outs[i].finish_reason, b.outs[i].finish_reason);
    EXPECT_EQ(a.outs[i].prompt_tokens, b.outs[i].prompt_tokens);
    EXPECT_EQ(a.outs[i].token_info.size(), b.outs[i].token_info.size());
  }
  EXPECT_EQ(a.last.generated_tokens, b.last.generated_tokens);
  EXPECT_EQ(a.last.prompt_tokens, b.last.prompt_tokens);
}

// Sets an environment variable for one scope.
struct ScopedEnv {
  std::string name;
  std::optional<std::string> old;
  ScopedEnv(const char* n, const char* v) : name(n) {
    if (const char* o = std::getenv(n)) old = o;
    setenv(n, v, 1);
  }
  ~ScopedEnv() { old ? setenv(name.c_str(), old->c_str(), 1) : unsetenv(name.c_str()); }
};

}  // namespace

TEST(OverlappedSteps, SameScheduleSameTokens) {
  BATCHMAX_REQUIRE_SMOLLM2();
  // Everyone admitted at once, no stop on a token: both ways run the same steps with the
  // same rows, so even the GPU (whose bf16 rounding follows a step's rows) gives the same
  // tokens; a pick fed to the wrong row or read from the wrong set would not.
  auto make = [](const Engine& e) {
    std::vector<Request> rs = mixed_requests(e, false);
    rs.resize(8);
    for (Request& r : rs) {
      r.sampling.ignore_eos = true;
      r.sampling.stop.clear();
    }
    return rs;
  };
  auto run8 = [&](int overlap) {
    EngineOptions eo = options(overlap);
    eo.max_batch = 8;
    auto e = Engine::create(eo);
    RunResult r;
    r.outs = e->generate(make(*e), nullptr, [&](const Progress& p) { r.last = p; });
    return r;
  };
  const RunResult one = run8(0), overlapped = run8(1);
  expect_same(one, overlapped);
  EXPECT_EQ(one.last.steps, overlapped.last.steps);
  EXPECT_GT(overlapped.last.overlapped_steps, 0);
}

TEST(OverlappedSteps, SameOutputsAsOneStepAtATime) {
  BATCHMAX_REQUIRE_SMOLLM2();
  auto make = [](const Engine& e) { return mixed_requests(e, true); };
  const RunResult one = run(0, make), overlapped = run(1, make);
  if (test::engine_backend() == "cpu") {
    expect_same(one, overlapped);
  } else {
    // Requests that stop on a token leave one step later and those waiting are admitted
    // one step later, so steps hold other rows than one step at a time, and the GPU's
    // bf16 rounding follows a step's rows: greedy tokens may part where two logits are
    // within rounding (the CPU's rows do not depend on their step, so it checks exactly).
    ASSERT_EQ(one.outs.size(), overlapped.outs.size());
    for (const Output& o : overlapped.outs) {
      EXPECT_FALSE(o.tokens.empty()) << o.id;
      EXPECT_TRUE(o.finish_reason == "stop" || o.finish_reason == "length") << o.id;
    }
  }
  EXPECT_EQ(one.last.overlapped_steps, 0);
  EXPECT_GT(overlapped.last.overlapped_steps, 0);
  // The stops this test is for did happen.
  std::map<std::string, int> reasons;
  for (const Output& o : one.outs) ++reasons[o.finish_reason];
  EXPECT_GT(reasons["stop"], 0);
  EXPECT_GT(reasons["length"], 0);
  EXPECT_FALSE(overlapped.outs[7].token_info.empty());  // the logprobs request
}

TEST(OverlappedSteps, EvictingRequestsOverlapWhereEvictionNeedsNoHost) {
  BATCHMAX_REQUIRE_SMOLLM2();
  const ScopedEnv device_eviction("BATCHMAX_EVICTION", "device");
  auto make = [](const Engine& e) {
    std::vector<Request> rs = mixed_requests(e, false);
    for (Request& r : rs) {  // the same steps both ways (see SameScheduleSameTokens)
      r.sampling.ignore_eos = true;
      r.sampling.stop.clear();
    }
    for (size_t i = 0; i < rs.size(); i += 2) {
      rs[i].kv = KVSettings{};
      rs[i].kv->mode = "batchmax";
      rs[i].kv->budget = 48;
      rs[i].kv->chunk = 32;
      rs[i].kv->slack = 4;
    }
    return rs;
  };
  const RunResult one = run(0, make, 32), overlapped = run(1, make, 32);
  expect_same(one, overlapped);
  EXPECT_GT(overlapped.last.overlapped_steps, 0);
  for (size_t i = 0; i < one.outs.size(); i += 2)
    if (one.outs[i].prompt_tokens > 80) EXPECT_GT(overlapped.outs[i].kv_evicted, 0) << i;
}

TEST(OverlappedSteps, CancelInFlightFinishesOnceWithItsTokensSoFar) {
  BATCHMAX_REQUIRE_SMOLLM2();
  auto make = [](const Engine& e) {
    std::vector<Request> rs = mixed_requests(e, false);
    rs.resize(3);
    for (Request& r : rs) {
      r.sampling.max_tokens = 24;
      r.sampling.ignore_eos = true;
      r.sampling.stop.clear();
    }
    return rs;
  };
  const RunResult one = run(0, make);
  auto e = Engine::create(options(1));
  auto batch = e->open_batch();
  std::map<std::string, std::vector<Output>> finished;
  std::vector<Engine::Batch::Handle> handles;
  for (Request& r : make(*e)) {
    Engine::Batch::Callbacks cb;
    cb.on_finish = [&finished](Output o) { finished[o.id].push_back(std::move(o)); };
    handles.push_back(batch->add(std::move(r), std::move(cb)));
  }
  int steps = 0;
  for (; steps < 12 && !batch->idle(); ++steps) batch->step();
  EXPECT_TRUE(batch->cancel(handles[1]));
  EXPECT_FALSE(batch->cancel(handles[1]));  // leaving already
  while (!batch->idle()) batch->step();
  ASSERT_EQ(finished.size(), 3u);
  for (const auto& [id, outs] : finished) {
    SCOPED_TRACE("request " + id);
    ASSERT_EQ(outs.size(), 1u);  // on_finish once
    const Output& ref = one.outs[size_t(std::stoi(id))];
    if (id == "1") {
      EXPECT_EQ(outs[0].finish_reason, "cancelled");
      ASSERT_LE(outs[0].tokens.size(), ref.tokens.size());
      EXPECT_TRUE(std::equal(outs[0].tokens.begin(), outs[0].tokens.end(), ref.tokens.begin()));
    } else {
      // After the cancel the steps hold fewer rows than in the reference run, which only
      // the CPU computes bit for bit the same (see SameOutputsAsOneStepAtATime).
      if (test::engine_backend() == "cpu") EXPECT_EQ(outs[0].tokens, ref.tokens);
      EXPECT_EQ(outs[0].tokens.size(), ref.tokens.size());
      EXPECT_EQ(outs[0].finish_reason, ref.finish_reason);
    }
  }
}
