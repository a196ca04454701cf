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
