// TableArena: the places of the sequences' block tables in the backend's table space.
#include "kv/table_arena.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "core/error.h"

namespace batchmax {
namespace {

TEST(TableArena, FirstFitAndFreesThatMerge) {
  TableArena a(100);
  EXPECT_EQ(a.allocate(30), 0);
  EXPECT_EQ(a.allocate(30), 30);
  EXPECT_EQ(a.allocate(30), 60);
  EXPECT_EQ(a.allocate(11), -1) << "10 ints left";
  EXPECT_EQ(a.in_use(), 90);
  a.release(0, 30);
  a.release(60, 30);
  EXPECT_EQ(a.allocate(40), 60) << "the freed tail merged with the free end";
  a.release(30, 30);
  EXPECT_EQ(a.allocate(60), 0) << "the two freed ranges merged";
  EXPECT_EQ(a.in_use(), 100);
  a.release(0, 60);
  a.release(60, 40);
  EXPECT_EQ(a.in_use(), 0);
  EXPECT_EQ(a.allocate(100), 0) << "everything merged back into one range";
}

TEST(TableArena, BadCallsNameTheProblem) {
  TableArena a(10);
  EXPECT_THROW(a.allocate(0), Error);
  const int64_t at = a.allocate(4);
  EXPECT_THROW(a.release(at, 4 + 7), Error) << "past the space";
  EXPECT_THROW(a.release(6, 2), Error) << "a free range";
  a.release(at, 4);
  EXPECT_THROW(a.release(at, 4), Error) << "released twice";
  EXPECT_THROW(TableArena(-1), Error);
  EXPECT_EQ(TableArena(0).allocate(1), -1) << "no space: every sequence keeps its ids on the host";
}

TEST(TableArena, RandomUseNeverOverlapsAndAlwaysFindsRoomThatIsThere) {
  std::mt19937 rng(3);
  TableArena a(1000);
  std::map<int64_t, int64_t> held;  // at -> n
  for (int i = 0; i < 4000; ++i) {
    if (held.empty() || rng() % 2) {
      const int64_t n = 1 + rng() % 60;
      const int64_t at = a.allocate(n);
      if (at < 0) {
        // No free range of n: the free gaps between held ranges are all shorter.
        int64_t end = 0;
        for (auto [b, m] : held) {
          EXPECT_LT(b - end, n);
          end = b + m;
        }
        EXPECT_LT(1000 - end, n);
        continue;
      }
      auto next = held.lower_bound(at);
      if (next != held.end()) {
        EXPECT_LE(at + n, next->first);
      }
      if (next != held.begin()) {
        EXPECT_LE(std::prev(next)->first + std::prev(next)->second, at);
      }
      held[at] = n;
    } else {
      auto it = std::next(held.begin(), rng() % held.size());
      a.release(it->first, it->second);
      held.erase(it);
    }
    int64_t used = 0;
    for (auto [b, m] : held) used += m;
    ASSERT_EQ(a.in_use(), used);
  }
}

}  // namespace
}  // namespace batchmax
