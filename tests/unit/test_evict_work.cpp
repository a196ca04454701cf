// The GPU eviction kernel's host side: launches sized to the key scratch, task records
// packed as the kernel reads them, and bad tasks refused with the problem named.
#include <gtest/gtest.h>

#include <string>

#include "backend/evict_work.h"
#include "core/error.h"

namespace batchmax {
namespace {

EvictTask task(std::span<const int32_t> blocks, int32_t n, int32_t keep) {
  EvictTask t;
  t.blocks = blocks;
  t.n_entries = n;
  t.keep = keep;
  t.score = EvictScore::Recency;
  return t;
}

TEST(EvictWork, LaunchesHoldAtMostTheirKeys) {
  const std::vector<int32_t> b(8, 0);
  // Entries 100, (no shrink), 60, 50, 200 (alone above the limit), (no shrink), 10.
  const std::vector<EvictTask> tasks = {task(b, 100, 10), task(b, 30, 30), task(b, 60, 10),
                                        task(b, 50, 10),  task(b, 200, 5), task(b, 5, 9),
                                        task(b, 10, 1)};
  // A task that does not shrink stays with the launch before it; a launch ends at the
  // first shrinking task that would pass the limit.
  EXPECT_EQ(evict_launch_ends(tasks, 160), (std::vector<size_t>{3, 4, 6, 7}));
  EXPECT_EQ(evict_launch_ends(tasks, 1000), (std::vector<size_t>{7}));
  EXPECT_EQ(evict_launch_ends(tasks, 1), (std::vector<size_t>{2, 3, 4, 6, 7}));
  const std::vector<EvictTask> none = {task(b, 5, 5), task(b, 3, 9)};
  EXPECT_TRUE(evict_launch_ends(none, 1000).empty());
}

TEST(EvictWork, RecordsAsTheKernelReadsThem) {
  KVPoolView pool;
  pool.block_tokens = 16;
  pool.n_blocks = 40;
  const std::vector<int32_t> b0 = {3, 7, 39}, b1 = {0}, b2 = {12, 13};
  Tensor mass;
  mass.type = GgmlType::F32;
  mass.rows = 4;
  mass.cols = 64;
  mass.row_stride = 64 * 4;
  EvictTask snap = task(b0, 40, 20);
  snap.score = EvictScore::PooledMass;
  snap.pool_kernel = 7;
  snap.mass_row = 2;
  snap.sinks = 4;
  snap.window = 8;
  EvictTask keepall = task(b1, 10, 16);  // does not shrink: no record
  EvictTask rnd = task(b2, 30, 12);
  rnd.score = EvictScore::Random;
  rnd.seed = 0x123456789abcdef0ull;
  const std::vector<EvictTask> tasks = {snap, keepall, rnd};
  EvictWorkPacker packer;
  const EvictWork w = packer.pack(tasks, pool, &mass);
  EXPECT_EQ(w.n_tasks, 2);
  EXPECT_EQ(w.keys, 40 + 30);
  const std::span<const int32_t> m = packer.meta();
  ASSERT_EQ(m.size(), size_t(2 * kEvictTaskInts) + b0.size() + b2.size());
  const std::vector<int32_t> r0(m.begin(), m.begin() + kEvictTaskInts),
      r1(m.begin() + kEvictTaskInts, m.begin() + 2 * kEvictTaskInts);
  EXPECT_EQ(r0, (std::vector<int32_t>{24, 40, 20, 2, 1, 3, 4, 8, 0, 0, 0, 0}));
  EXPECT_EQ(r1, (std::vector<int32_t>{27, 30, 12, -1, 4, 0, 0, 0, int32_t(0x9abcdef0u),
                                      0x12345678, 40, 0}));
  EXPECT_EQ(std::vector<int32_t>(m.begin() + 24, m.end()), (std::vector<int32_t>{3, 7, 39, 12, 13}));
  EXPECT_EQ(packer.pack(std::span<const EvictTask>(tasks).subspan(1, 1), pool, &mass).n_tasks, 0);
  EXPECT_TRUE(packer.meta().empty());
}

std::string pack_error(EvictTask t, const KVPoolView& pool, const Tensor* mass) {
  EvictWorkPacker packer;
  try {
    packer.pack(std::span<const EvictTask>(&t, 1), pool, mass);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(EvictWork, BadTasksNameTheProblem) {
  KVPoolView pool;
  pool.block_tokens = 16;
  pool.n_blocks = 8;
  Tensor mass;
  mass.type = GgmlType::F32;
  mass.rows = 2;
  mass.cols = 32;
  mass.row_stride = 32 * 4;
  const std::vector<int32_t> b = {1, 2}, far = {1, 8};
  const EvictTask good = task(b, 32, 8);
  EXPECT_EQ(pack_error(good, pool, &mass), "");
  auto has = [](const std::string& s, const char* what) { return s.find(what) != std::string::npos; };

  EvictTask t = good;
  t.sinks = 4;
  t.window = 5;  // 9 > keep 8
  EXPECT_TRUE(has(pack_error(t, pool, &mass), "keep must cover sinks + window"));
  t = task(b, 33, 8);  // two blocks of 16 hold 32
  EXPECT_TRUE(has(pack_error(t, pool, &mass), "more entries than the blocks hold"));
  t = task(far, 32, 8);
  EXPECT_TRUE(has(pack_error(t, pool, &mass), "block 8 is out of range [0, 8)"));
  t = good;
  t.score = EvictScore(9);
  EXPECT_TRUE(has(pack_error(t, pool, &mass), "unknown score"));
  t = good;
  t.score = EvictScore::Accumulated;  // the pool has no slot mass
  EXPECT_TRUE(has(pack_error(t, pool, &mass), "h2o needs a pool with slot mass"));
  t = good;
  t.score = EvictScore::Mass;
  t.mass_row = 0;
  EXPECT_EQ(pack_error(t, pool, &mass), "");
  EXPECT_TRUE(has(pack_error(t, pool, nullptr), "needs a mass row"));
  t.mass_row = 2;  // the mass tensor has rows 0 and 1
  EXPECT_TRUE(has(pack_error(t, pool, &mass), "needs a mass row"));
  t = good;
  t.score = EvictScore::PooledMass;
  t.mass_row = 1;
  t.pool_kernel = 4;
  EXPECT_TRUE(has(pack_error(t, pool, &mass), "pool kernel must be odd"));
}

}  // namespace
}  // namespace batchmax
