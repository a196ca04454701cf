#include "kv/eviction_policy.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "kv/kv_compression.h"

using namespace batchmax;

namespace {
EvictionParams params(int64_t budget, int64_t sinks, int64_t window) {
  EvictionParams p;
  p.budget = budget;
  p.sinks = sinks;
  p.window = window;
  return p;
}
std::vector<int32_t> iota_pos(int n, int start = 0) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = start + i;
  return v;
}
std::vector<int32_t> keep_with(const std::string& policy, const EvictionParams& p,
                               HeadEntries e) {
  auto pol = make_policy(policy, p);
  std::vector<float> s(e.pos.size());
  pol->score(e, s);
  return select_keep(e.pos, s, p);
}
}  // namespace

TEST(SelectKeep, KeepsEverythingUnderBudget) {
  auto pos = iota_pos(5);
  std::vector<float> s = {1, 2, 3, 4, 5};
  EXPECT_EQ(select_keep(pos, s, params(8, 1, 1)), (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

TEST(SelectKeep, ProtectsSinksAndRecentThenBestScores) {
  auto pos = iota_pos(10);
  //                    0  1  2  3  4  5  6  7  8  9
  std::vector<float> s = {0, 0, 9, 1, 8, 0, 7, 0, 0, 0};
  // budget 5: sink 0, recent 9, then best scores 2 (9), 4 (8), 6 (7).
  EXPECT_EQ(select_keep(pos, s, params(5, 1, 1)), (std::vector<int32_t>{0, 2, 4, 6, 9}));
}

TEST(SelectKeep, SinksAreByTruePosition) {
  // After an earlier eviction positions have gaps; position 0..1 are sinks wherever.
  std::vector<int32_t> pos = {0, 1, 7, 20, 21, 22};
  std::vector<float> s = {0, 0, 5, 1, 0, 0};
  EXPECT_EQ(select_keep(pos, s, params(4, 2, 1)), (std::vector<int32_t>{0, 1, 2, 5}));
}

TEST(SelectKeep, TiesPreferRecentEntries) {
  auto pos = iota_pos(6);
  std::vector<float> s(6, 1.0f);
  EXPECT_EQ(select_keep(pos, s, params(3, 0, 0)), (std::vector<int32_t>{3, 4, 5}));
}

TEST(Policies, WindowKeepsSinksAndMostRecent) {
  auto pos = iota_pos(12);
  EXPECT_EQ(keep_with("window", params(5, 2, 0), {pos, {}, {}, {}}),
            (std::vector<int32_t>{0, 1, 9, 10, 11}));
}

TEST(Policies, TovaKeepsWhatTheLastQueryAttends) {
  auto pos = iota_pos(8);
  std::vector<float> attn = {0.1f, 0.0f, 0.3f, 0.0f, 0.05f, 0.4f, 0.0f, 0.15f};
  EXPECT_EQ(keep_with("tova", params(3, 0, 0), {pos, attn, {}, {}}),
            (std::vector<int32_t>{2, 5, 7}));
}

TEST(Policies, SnapKVMaxPoolsNeighbours) {
  auto pos = iota_pos(9);
  // One strong entry at 4; pooling (kernel 3) lifts 3 and 5 above the lone 0.2 at 8.
  std::vector<float> attn = {0, 0, 0, 0, 1.0f, 0, 0, 0, 0.2f};
  EvictionParams p = params(3, 0, 0);
  p.pool_kernel = 3;
  EXPECT_EQ(keep_with("snapkv", p, {pos, attn, {}, {}}), (std::vector<int32_t>{3, 4, 5}));
  p.pool_kernel = 1;  // no pooling: ties broken by recency
  EXPECT_EQ(keep_with("snapkv", p, {pos, attn, {}, {}}), (std::vector<int32_t>{4, 7, 8}));
}

TEST(Policies, KNormKeepsSmallestKeys) {
  auto pos = iota_pos(6);
  std::vector<float> norms = {5, 1, 4, 2, 6, 3};
  EXPECT_EQ(keep_with("knorm", params(3, 0, 0), {pos, {}, norms, {}}),
            (std::vector<int32_t>{1, 3, 5}));
}

TEST(Policies, H2OAccumulatesAcrossSteps) {
  auto pol = make_policy("h2o", params(2, 0, 0));
  auto pos = iota_pos(4);
  std::vector<float> acc(4, 0.0f);
  std::vector<float> a1 = {0.5f, 0.1f, 0.3f, 0.1f}, a2 = {0.0f, 0.6f, 0.3f, 0.1f};
  HeadEntries e1{pos, a1, {}, acc};
  pol->observe(e1);
  HeadEntries e2{pos, a2, {}, acc};
  pol->observe(e2);
  EXPECT_FLOAT_EQ(acc[0], 0.5f);
  EXPECT_FLOAT_EQ(acc[1], 0.7f);
  EXPECT_FLOAT_EQ(acc[2], 0.6f);
  std::vector<float> s(4);
  pol->score(e2, s);
  EXPECT_EQ(select_keep(pos, s, params(2, 0, 0)), (std::vector<int32_t>{1, 2}));
}

TEST(Policies, RandomIsReproducible) {
  auto pos = iota_pos(100);
  auto a = keep_with("random", params(10, 0, 0), {pos, {}, {}, {}});
  auto b = keep_with("random", params(10, 0, 0), {pos, {}, {}, {}});
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 10u);
}

TEST(Policies, BadSettingsAreErrors) {
  EXPECT_THROW(make_policy("lru", params(8, 1, 1)), Error);
  EXPECT_THROW(make_policy("h2o", params(0, 0, 0)), Error);
  EXPECT_THROW(make_policy("h2o", params(4, 2, 3)), Error);  // sinks + window > budget
  EXPECT_THROW(parse_kv_mode("sometimes"), Error);
}

TEST(KVCompression, WorstCaseEntriesPerMode) {
  KVCompression c;
  c.params.budget = 512;
  c.params.chunk = 256;
  c.params.slack = 64;
  c.mode = KVMode::Full;
  EXPECT_EQ(worst_case_entries(c, 4096, 512), 4096 + 511);
  c.mode = KVMode::PostPrefill;
  EXPECT_EQ(worst_case_entries(c, 4096, 512), 4096);
  c.mode = KVMode::BatchMax;
  EXPECT_EQ(worst_case_entries(c, 4096, 512), 512 + 256);
  EXPECT_EQ(worst_case_entries(c, 100, 10), 109);  // short request: never evicts
  c.params.slack = 300;
  EXPECT_EQ(worst_case_entries(c, 4096, 512), 512 + 300);
}

// What a request reserves for its life: the worst case, except in batchmax, where a
// prefill step's budget + chunk comes from the pool's shared headroom and only
// budget + slack (or less, for a short request) stays reserved.
TEST(KVCompression, HeldEntriesPerMode) {
  KVCompression c;
  c.params.budget = 512;
  c.params.chunk = 256;
  c.params.slack = 64;
  for (KVMode m : {KVMode::Full, KVMode::PostPrefill}) {
    c.mode = m;
    EXPECT_EQ(held_entries(c, 4096, 512), worst_case_entries(c, 4096, 512));
  }
  c.mode = KVMode::BatchMax;
  EXPECT_EQ(held_entries(c, 4096, 512), 512 + 64);
  EXPECT_EQ(held_entries(c, 100, 10), 109);  // short request: never evicts, holds it all
  EXPECT_EQ(held_entries(c, 540, 1), 540);   // prompt + output below budget + slack
  c.params.slack = 0;                        // decode evicts at budget + 1
  EXPECT_EQ(held_entries(c, 4096, 512), 513);
  c.params.slack = 300;  // slack past the chunk: decode is the larger, no headroom needed
  EXPECT_EQ(held_entries(c, 4096, 512), worst_case_entries(c, 4096, 512));
  c.policy = "full";  // a policy that never evicts: everything, as in full mode
  EXPECT_EQ(held_entries(c, 4096, 512), 4096 + 511);
}
