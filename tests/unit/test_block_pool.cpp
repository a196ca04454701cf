#include "kv/block_pool.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

#include "core/error.h"

using batchmax::BlockPool;

TEST(BlockPool, ReserveTakeRelease) {
  BlockPool p(10);
  EXPECT_EQ(p.n_free(), 10);
  EXPECT_TRUE(p.reserve(4));
  EXPECT_EQ(p.n_unreserved(), 6);
  EXPECT_FALSE(p.reserve(7));  // only 6 unpromised
  EXPECT_EQ(p.n_unreserved(), 6);
  int32_t a = p.take_reserved(), b = p.take_reserved();
  EXPECT_NE(a, b);
  EXPECT_EQ(p.n_used(), 2);
  EXPECT_EQ(p.n_unreserved(), 6);
  p.unreserve(2);
  EXPECT_EQ(p.n_unreserved(), 8);
  p.release(a);
  p.release(b);
  EXPECT_EQ(p.n_free(), 10);
  EXPECT_EQ(p.n_unreserved(), 10);
}

TEST(BlockPool, MisuseIsAnError) {
  BlockPool p(2);
  EXPECT_THROW(p.take_reserved(), batchmax::Error);
  EXPECT_THROW(p.release(0), batchmax::Error);   // not in use
  EXPECT_THROW(p.release(5), batchmax::Error);   // foreign id
  EXPECT_THROW(p.unreserve(1), batchmax::Error);
  ASSERT_TRUE(p.reserve(1));
  int32_t b = p.take_reserved();
  p.release(b);
  EXPECT_THROW(p.release(b), batchmax::Error);   // double free
}

// Property test: random owners reserve, take and free; no block is ever owned twice,
// nothing leaks, the pool never hands out more than it has, all free at the end.
TEST(BlockPool, RandomMixKeepsInvariants) {
  for (uint32_t seed : {1u, 2u, 3u, 42u}) {
    std::mt19937 rng(seed);
    const int64_t n = 200;
    BlockPool p(n);
    struct Owner { int64_t reserved = 0; std::vector<int32_t> blocks; };
    std::vector<Owner> owners;
    std::set<int32_t> owned;
    for (int step = 0; step < 5000; ++step) {
      int op = int(rng() % 4);
      if (op == 0) {
        int64_t want = 1 + rng() % 40;
        bool ok = p.reserve(want);
        ASSERT_EQ(ok, want <= p.n_unreserved() + (ok ? want : 0)) << "seed " << seed;
        if (ok) owners.push_back({want, {}});
      } else if (op == 1 && !owners.empty()) {
        Owner& o = owners[rng() % owners.size()];
        if (o.reserved > 0) {
          int32_t b = p.take_reserved();
          --o.reserved;
          ASSERT_TRUE(owned.insert(b).second) << "block " << b << " handed out twice, seed " << seed;
          ASSERT_GE(b, 0);
          ASSERT_LT(b, n);
          o.blocks.push_back(b);
        }
      } else if (op == 2 && !owners.empty()) {
        size_t k = rng() % owners.size();
        for (int32_t b : owners[k].blocks) { p.release(b); owned.erase(b); }
        p.unreserve(owners[k].reserved);
        owners.erase(owners.begin() + k);
      }
      int64_t promised = 0;
      for (const auto& o : owners) promised += o.reserved;
      ASSERT_EQ(p.n_used(), int64_t(owned.size()));
      ASSERT_EQ(p.n_unreserved(), n - int64_t(owned.size()) - promised);
      ASSERT_GE(p.n_unreserved(), 0);
    }
    for (auto& o : owners) {
      for (int32_t b : o.blocks) p.release(b);
      p.unreserve(o.reserved);
    }
    EXPECT_EQ(p.n_free(), n);
    EXPECT_EQ(p.n_unreserved(), n);
  }
}
