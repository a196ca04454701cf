#include "engine/scheduler.h"

#include <gtest/gtest.h>

using namespace batchmax;

TEST(Scheduler, DecodeFirstThenPrefillChunks) {
  std::vector<SeqProgress> s(3);
  s[0] = {100, 100, true};   // decoding
  s[1] = {1000, 0, false};   // prefill
  s[2] = {50, 0, false};
  auto items = plan_step(s, 256, 128);
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].seq, 0u);
  EXPECT_EQ(items[0].n_tokens, 1);
  EXPECT_FALSE(items[0].prefill);
  EXPECT_EQ(items[1].seq, 1u);
  EXPECT_EQ(items[1].n_tokens, 128);  // limited by the chunk
  EXPECT_FALSE(items[1].last_chunk);
  EXPECT_EQ(items[2].seq, 2u);
  EXPECT_EQ(items[2].n_tokens, 50);
  EXPECT_TRUE(items[2].last_chunk);
  int64_t total = 0;
  for (auto& it : items) total += it.n_tokens;
  EXPECT_LE(total, 256);
}

TEST(Scheduler, BudgetSplitsAPrompt) {
  std::vector<SeqProgress> s(1);
  s[0] = {700, 300, false};
  auto items = plan_step(s, 256, 0);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].n_tokens, 256);
  s[0].computed = 600;
  items = plan_step(s, 256, 0);
  EXPECT_EQ(items[0].n_tokens, 100);
  EXPECT_TRUE(items[0].last_chunk);
}

TEST(Scheduler, PrefillNeverStarvesUnderManyDecoders) {
  std::vector<SeqProgress> s(10, SeqProgress{10, 10, true});
  s.push_back({100, 0, false});
  auto items = plan_step(s, 4, 0);  // more decoders than budget
  ASSERT_EQ(items.size(), 11u);
  EXPECT_TRUE(items.back().prefill);
  EXPECT_EQ(items.back().n_tokens, 1);
}

// A chunk that the KV cache cannot promise blocks for waits, and so does every sequence
// after it (no overtaking); decoders still run.
TEST(Scheduler, PrefillStopsWhereTheCacheHasNoRoom) {
  std::vector<SeqProgress> s(4);
  s[0] = {100, 100, true};  // decoding
  s[1] = {300, 0, false};
  s[2] = {300, 0, false};
  s[3] = {10, 0, false};
  std::vector<std::pair<size_t, int64_t>> asked;
  auto items = plan_step(s, 1024, 128, [&](size_t i, int64_t n) {
    asked.push_back({i, n});
    return i != 2;
  });
  ASSERT_EQ(items.size(), 2u);
  EXPECT_FALSE(items[0].prefill);
  EXPECT_EQ(items[1].seq, 1u);
  EXPECT_EQ(items[1].n_tokens, 128);
  ASSERT_EQ(asked.size(), 2u);  // sequence 3 is not asked: it may not overtake 2
  EXPECT_EQ(asked[1], (std::pair<size_t, int64_t>{2, 128}));
}

// Prefill first: chunks take the step, decoders wait for tokens left over (the oldest
// first), and all of them run once no chunk can.
TEST(Scheduler, PrefillFirstDefersDecodersToTheTokensLeft) {
  std::vector<SeqProgress> s(5);
  s[0] = {100, 100, true};
  s[1] = {1000, 0, false};
  s[2] = {100, 100, true};
  s[3] = {1000, 0, false};
  s[4] = {100, 100, true};
  auto items = plan_step(s, 256, 128, nullptr, StepOrder::PrefillFirst);
  ASSERT_EQ(items.size(), 2u);
  EXPECT_TRUE(items[0].prefill && items[1].prefill);
  EXPECT_EQ(items[0].seq, 1u);
  EXPECT_EQ(items[1].seq, 3u);

  items = plan_step(s, 258, 128, nullptr, StepOrder::PrefillFirst);
  ASSERT_EQ(items.size(), 4u);  // two tokens left: the two oldest decoders, listed first
  EXPECT_FALSE(items[0].prefill);
  EXPECT_EQ(items[0].seq, 0u);
  EXPECT_EQ(items[1].seq, 2u);
  EXPECT_TRUE(items[2].prefill && items[3].prefill);
  int64_t total = 0;
  for (auto& it : items) total += it.n_tokens;
  EXPECT_EQ(total, 258);
}

TEST(Scheduler, PrefillFirstRunsEveryDecoderWhenNoChunkCan) {
  std::vector<SeqProgress> s(6, SeqProgress{10, 10, true});
  auto items = plan_step(s, 4, 0, nullptr, StepOrder::PrefillFirst);
  EXPECT_EQ(items.size(), 6u);  // nothing to prefill: decoders are never held back

  s.push_back({300, 0, false});  // a prompt whose chunk the cache cannot promise yet
  items = plan_step(s, 4, 0, [](size_t, int64_t) { return false; }, StepOrder::PrefillFirst);
  ASSERT_EQ(items.size(), 6u);
  for (const auto& it : items) EXPECT_FALSE(it.prefill);
}

// The same progress planned both ways covers the same sequences once there is no
// prefill left: the order only matters while prompts wait.
TEST(Scheduler, OrdersAgreeWithoutPrefill) {
  std::vector<SeqProgress> s(3, SeqProgress{10, 10, true});
  s.push_back({20, 20, false});  // prompt done, first token not sampled yet: no row
  const auto a = plan_step(s, 64, 0, nullptr, StepOrder::DecodeFirst);
  const auto b = plan_step(s, 64, 0, nullptr, StepOrder::PrefillFirst);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].seq, b[i].seq);
}
