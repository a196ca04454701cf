// Incremental batching (Engine::Batch) and its thread (EngineLoop) on a tiny model with
// dummy weights: requests join and leave between steps, cancellation frees blocks at
// once, every submitted request finishes exactly once, and the outputs equal a plain
// generate() call.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "batchmax/engine.h"
#include "batchmax/engine_loop.h"
#include "core/error.h"

namespace batchmax {
namespace {

EngineOptions tiny_options(int overlap_steps = 0) {
  EngineOptions o;
  o.overlap_steps = overlap_steps;
  o.dummy_weights = "tiny";
  o.n_threads = 2;
  o.max_batch = 0;  // pool-limited
  o.kv_mem_bytes = int64_t(4) << 20;
  o.step_tokens = 64;
  return o;
}

Request request(int i, int prompt_len, int max_tokens) {
  Request r;
  r.id = "r" + std::to_string(i);
  for (int j = 0; j < prompt_len; ++j) r.prompt.push_back((j * 31 + i * 7) % 500);
  r.sampling.max_tokens = max_tokens;
  return r;
}

class EngineBatchBothWays : public ::testing::TestWithParam<int> {};  // overlap_steps 0, 1
INSTANTIATE_TEST_SUITE_P(OverlapSteps, EngineBatchBothWays, ::testing::Values(0, 1));

TEST_P(EngineBatchBothWays, RequestsJoiningLaterMatchOneGenerateCall) {
  auto engine = Engine::create(tiny_options(GetParam()));
  std::vector<Request> reqs;
  for (int i = 0; i < 6; ++i) reqs.push_back(request(i, 20 + 13 * i, 5 + i));
  reqs[3].kv = KVSettings{};
  reqs[3].kv->mode = "batchmax";
  reqs[3].kv->budget = 48;
  reqs[3].kv->chunk = 16;
  reqs[3].kv->window = 8;
  const std::vector<Output> expected = engine->generate(reqs);

  auto batch = engine->open_batch();
  EXPECT_THROW(engine->open_batch(), Error);  // one batch owns the KV cache
  std::map<std::string, Output> got;
  std::map<std::string, std::vector<int32_t>> streamed;
  for (size_t i = 0; i < reqs.size(); ++i) {
    Engine::Batch::Callbacks cb;
    cb.on_token = [&, id = reqs[i].id](const TokenInfo& t) { streamed[id].push_back(t.token); };
    cb.on_finish = [&](Output o) {
      EXPECT_EQ(got.count(o.id), 0u) << "finished twice";
      got[o.id] = std::move(o);
    };
    batch->add(reqs[i], cb);
    batch->step();  // each request joins a batch already running
  }
  while (!batch->idle()) batch->step();
  ASSERT_EQ(got.size(), reqs.size());
  for (const Output& e : expected) {
    EXPECT_EQ(got[e.id].tokens, e.tokens) << e.id;
    EXPECT_EQ(streamed[e.id], e.tokens) << e.id;
    EXPECT_EQ(got[e.id].finish_reason, "length") << got[e.id].error;
  }
  const BatchState st = batch->state();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
}

TEST(EngineBatch, CancelFreesBlocksAtOnce) {
  auto engine = Engine::create(tiny_options());
  auto batch = engine->open_batch();
  std::vector<std::string> reasons;
  Engine::Batch::Callbacks cb;
  cb.on_finish = [&](Output o) { reasons.push_back(o.finish_reason); };
  const auto a = batch->add(request(0, 100, 50), cb);
  const auto b = batch->add(request(1, 30, 50), cb);
  batch->step();
  batch->step();
  const BatchState before = batch->state();
  EXPECT_EQ(before.running, 2);
  EXPECT_LT(before.kv_blocks_free, before.kv_blocks_total);
  EXPECT_TRUE(batch->cancel(a));
  EXPECT_FALSE(batch->cancel(a));  // already gone
  EXPECT_EQ(batch->state().running, 1);
  EXPECT_GT(batch->state().kv_blocks_free, before.kv_blocks_free);
  EXPECT_TRUE(batch->cancel(b));
  EXPECT_TRUE(batch->idle());
  EXPECT_EQ(batch->state().kv_blocks_free, batch->state().kv_blocks_total);
  EXPECT_EQ(reasons, (std::vector<std::string>{"cancelled", "cancelled"}));
}

// With steps in flight a cancelled request finishes at once, and its blocks come back
// when the step holding a row of it is read.
TEST(EngineBatch, CancelInFlightFinishesAtOnceAndFreesAfterTheStep) {
  auto engine = Engine::create(tiny_options(1));
  auto batch = engine->open_batch();
  std::vector<std::string> reasons;
  Engine::Batch::Callbacks cb;
  cb.on_finish = [&](Output o) { reasons.push_back(o.finish_reason); };
  const auto a = batch->add(request(0, 100, 50), cb);
  batch->add(request(1, 30, 50), cb);
  for (int i = 0; i < 4; ++i) batch->step();
  const BatchState before = batch->state();
  EXPECT_TRUE(batch->cancel(a));
  EXPECT_EQ(reasons, std::vector<std::string>{"cancelled"});  // at once
  EXPECT_FALSE(batch->cancel(a));
  batch->step();  // reads the step that held a row of it
  EXPECT_EQ(batch->state().running, 1);
  EXPECT_GT(batch->state().kv_blocks_free, before.kv_blocks_free);
  while (!batch->idle()) batch->step();
  EXPECT_EQ(reasons, (std::vector<std::string>{"cancelled", "length"}));
  EXPECT_EQ(batch->state().kv_blocks_free, batch->state().kv_blocks_total);
}

TEST(EngineBatch, BadRequestFinishesInsideAdd) {
  EngineOptions o = tiny_options();
  o.kv_mem_bytes = 256 << 10;  // 128 blocks: 512 entries per layer and head
  auto engine = Engine::create(o);
  auto batch = engine->open_batch();
  Output got;
  Engine::Batch::Callbacks cb;
  cb.on_finish = [&](Output o) { got = std::move(o); };
  Request r = request(0, 10, 4);
  r.logprobs = kMaxTopLogprobs + 1;
  batch->add(r, cb);
  EXPECT_EQ(got.finish_reason, "error");
  EXPECT_NE(got.error.find("logprobs"), std::string::npos) << got.error;
  // More KV than the whole pool: rejected up front, not left waiting forever.
  Request huge = request(1, 1000, 20);
  batch->add(huge, cb);
  EXPECT_EQ(got.finish_reason, "error");
  EXPECT_NE(got.error.find("whole KV pool"), std::string::npos) << got.error;
  EXPECT_TRUE(batch->idle());
}

TEST(EngineBatch, LogprobsAreNormalisedAndRanked) {
  auto engine = Engine::create(tiny_options());
  Request r = request(0, 12, 4);
  r.logprobs = 5;
  const Output o = engine->generate({r})[0];
  ASSERT_EQ(o.token_info.size(), o.tokens.size());
  for (size_t i = 0; i < o.tokens.size(); ++i) {
    const TokenInfo& t = o.token_info[i];
    EXPECT_EQ(t.token, o.tokens[i]);
    ASSERT_EQ(t.top.size(), 5u);
    EXPECT_LE(t.logprob, 0.0f);
    EXPECT_EQ(t.top[0].token, t.token);  // greedy: the chosen token is the most likely
    EXPECT_FLOAT_EQ(t.top[0].logprob, t.logprob);
    for (size_t j = 1; j < t.top.size(); ++j) EXPECT_LE(t.top[j].logprob, t.top[j - 1].logprob);
  }
}

TEST_P(EngineBatchBothWays, LoopWithConcurrentSubmitAndCancelFinishesEachOnce) {
  auto engine = Engine::create(tiny_options(GetParam()));
  std::vector<Request> reqs;
  for (int i = 0; i < 40; ++i) reqs.push_back(request(i, 10 + (i * 17) % 90, 3 + i % 9));
  const std::vector<Output> expected = engine->generate(reqs);

  EngineLoop loop(*engine, {.max_waiting = 1000});
  std::mutex mu;
  std::map<std::string, Output> got;
  std::map<std::string, int> finishes;
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = c; i < int(reqs.size()); i += 4) {
        Engine::Batch::Callbacks cb;
        cb.on_finish = [&](Output o) {
          std::lock_guard<std::mutex> lock(mu);
          ++finishes[o.id];
          got[o.id] = std::move(o);
        };
        auto h = loop.submit(reqs[size_t(i)], cb);
        ASSERT_TRUE(h.has_value());
        if (i % 5 == 0) loop.cancel(*h);  // may land before, during or after it runs
        std::this_thread::sleep_for(std::chrono::microseconds(300 * (i % 3)));
      }
    });
  }
  for (auto& t : clients) t.join();
  ASSERT_TRUE(loop.wait_idle(120));
  const EngineLoopStats st = loop.stats();
  EXPECT_EQ(st.submitted, 40);
  EXPECT_EQ(st.finished, 40);
  EXPECT_EQ(st.batch.running, 0);
  EXPECT_EQ(st.batch.waiting, 0);
  EXPECT_EQ(st.batch.kv_blocks_free, st.batch.kv_blocks_total);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(got.size(), reqs.size());
  for (const Output& e : expected) {
    EXPECT_EQ(finishes[e.id], 1) << e.id;
    const Output& o = got[e.id];
    if (o.finish_reason == "cancelled") {
      // A cancelled request's tokens so far are a prefix of the full answer.
      ASSERT_LE(o.tokens.size(), e.tokens.size());
      EXPECT_TRUE(std::equal(o.tokens.begin(), o.tokens.end(), e.tokens.begin())) << e.id;
    } else {
      EXPECT_EQ(o.tokens, e.tokens) << e.id;
    }
  }
}

TEST(EngineLoop, BoundedQueueAndDraining) {
  EngineOptions o = tiny_options();
  auto engine = Engine::create(o);
  EngineLoop loop(*engine, {.max_waiting = 3});
  std::atomic<int> finished{0};
  Engine::Batch::Callbacks cb;
  cb.on_finish = [&](Output) { ++finished; };
  int accepted = 0, refused = 0;
  // Long requests: the pool (4 MiB) cannot run them all, so the queue fills.
  for (int i = 0; i < 40; ++i) {
    if (loop.submit(request(i, 400, 200), cb)) ++accepted; else ++refused;
  }
  EXPECT_GT(refused, 0);
  EXPECT_LE(loop.stats().batch.waiting, 3);
  loop.stop_admitting();
  EXPECT_FALSE(loop.submit(request(99, 10, 2), cb).has_value());
  ASSERT_TRUE(loop.wait_idle(300));
  EXPECT_EQ(finished.load(), accepted);
  EXPECT_TRUE(loop.stats().draining);
}

TEST_P(EngineBatchBothWays, LoopDestructorCancelsWhatIsLeft) {
  auto engine = Engine::create(tiny_options(GetParam()));
  std::atomic<int> cancelled{0}, finished{0};
  {
    EngineLoop loop(*engine, {});
    Engine::Batch::Callbacks cb;
    cb.on_finish = [&](Output o) {
      ++finished;
      if (o.finish_reason == "cancelled") ++cancelled;
    };
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(loop.submit(request(i, 200, 500), cb));
    // Running by now (with steps in flight: some in the step in flight).
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
  EXPECT_EQ(finished.load(), 8);
  EXPECT_GT(cancelled.load(), 0);
  // The engine is free for the next batch.
  EXPECT_NO_THROW(engine->open_batch());
}

}  // namespace
}  // namespace batchmax
