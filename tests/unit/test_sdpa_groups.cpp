// sdpa_dense_groups: how the CUDA backend cuts a cuDNN prefill call so that each piece's
// dense K/V fit the reserved scratch (cuDNN's Hopper kernel reads dense K/V; pages get an
// older, slower one). Checked on random calls: groups cover every entry once, in order,
// each within the cap, each as large as the cap lets it (the next entry would not fit),
// and s_kv is the group's most entries padded to a power of two.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "backend/sdpa_groups.h"

namespace batchmax {
namespace {

TEST(SdpaGroups, RoundUpAndBytes) {
  EXPECT_EQ(round_up_pow2(1, 64), 64);
  EXPECT_EQ(round_up_pow2(64, 64), 64);
  EXPECT_EQ(round_up_pow2(65, 64), 128);
  EXPECT_EQ(round_up_pow2(4096, 64), 4096);
  EXPECT_EQ(round_up_pow2(4097, 16), 8192);
  // 32 entries of 4096 keys, head_dim 128: 64 MiB of K and V in bf16.
  EXPECT_EQ(dense_kv_bytes(32, 4096, 128), size_t(64) << 20);
}

TEST(SdpaGroups, FitsInOneGroupWhenUnderTheCap) {
  const std::vector<int32_t> e(8, 4096);  // one 4k prompt's 8 KV heads: 16 MiB
  const auto g = sdpa_dense_groups(e, 128, size_t(32) << 20, false);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].begin, 0);
  EXPECT_EQ(g[0].end, 8);
  EXPECT_EQ(g[0].s_kv, 4096);
}

TEST(SdpaGroups, SplitsA64MiBCallInTwo) {
  const std::vector<int32_t> e(32, 4000);  // four 4k prompts' chunks
  const auto g = sdpa_dense_groups(e, 128, size_t(32) << 20, false);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_EQ(g[0].end - g[0].begin, 16);
  EXPECT_EQ(g[1].begin, 16);
  EXPECT_EQ(g[1].end, 32);
  EXPECT_EQ(g[1].s_kv, 4096);
}

TEST(SdpaGroups, PagedWhenForcedOrOneEntryPassesTheCap) {
  const std::vector<int32_t> e = {100, 70000, 200};  // 70000 keys: 128k padded = 64 MiB alone
  auto g = sdpa_dense_groups(e, 128, size_t(32) << 20, false);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].begin, 0);
  EXPECT_EQ(g[0].end, 3);
  EXPECT_EQ(g[0].s_kv, 0);
  g = sdpa_dense_groups(std::vector<int32_t>(4, 100), 128, size_t(32) << 20, true);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].s_kv, 0);
  EXPECT_TRUE(sdpa_dense_groups({}, 128, 1 << 20, false).empty());
}

TEST(SdpaGroups, RandomCallsAreCoveredInOrderAndEachGroupIsMaximal) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 2000; ++trial) {
    const int n = std::uniform_int_distribution<int>(1, 80)(rng);
    const int hd = std::uniform_int_distribution<int>(0, 1)(rng) ? 64 : 128;
    const size_t cap = size_t(std::uniform_int_distribution<int>(1, 40)(rng)) << 20;
    std::vector<int32_t> e(n);
    for (int32_t& x : e) x = std::uniform_int_distribution<int32_t>(1, 9000)(rng);
    const auto g = sdpa_dense_groups(e, hd, cap, false);
    ASSERT_FALSE(g.empty());
    int32_t largest = 0;
    for (int32_t x : e) largest = std::max(largest, x);
    if (dense_kv_bytes(1, round_up_pow2(largest, 64), hd) > cap) {
      ASSERT_EQ(g.size(), 1u);
      EXPECT_EQ(g[0].s_kv, 0);
      continue;
    }
    int next = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      ASSERT_EQ(g[i].begin, next) << "trial " << trial;
      ASSERT_GT(g[i].end, g[i].begin);
      int32_t m = 0;
      for (int b = g[i].begin; b < g[i].end; ++b) m = std::max(m, e[b]);
      EXPECT_EQ(g[i].s_kv, round_up_pow2(m, 64));
      EXPECT_LE(dense_kv_bytes(g[i].end - g[i].begin, g[i].s_kv, hd), cap);
      if (g[i].end < n) {  // taking the next entry too would not have fit
        const int32_t m2 = std::max(m, e[g[i].end]);
        EXPECT_GT(dense_kv_bytes(g[i].end - g[i].begin + 1, round_up_pow2(m2, 64), hd), cap);
      }
      next = g[i].end;
    }
    EXPECT_EQ(next, n);
  }
}

}  // namespace
}  // namespace batchmax
