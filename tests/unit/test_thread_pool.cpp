#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

using batchmax::ThreadPool;

namespace {

// Every index of [0, n) is visited exactly once, chunks are at least `grain` long.
void check_cover(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(n);
  std::atomic<bool> short_chunk{false};
  pool.parallel_for(n, [&](int64_t b, int64_t e) {
    if (e - b < grain && e != n) short_chunk = true;
    for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
  }, grain);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " grain=" << grain << " i=" << i;
  EXPECT_FALSE(short_chunk) << "n=" << n << " grain=" << grain;
}

}  // namespace

TEST(ThreadPool, CoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1000, 12345})
      for (int64_t grain : {1, 3, 16, 5000}) check_cover(pool, n, grain);
  }
}

TEST(ThreadPool, ZeroMeansHardwareThreads) {
  ThreadPool pool(0);
  EXPECT_GE(pool.size(), 1);
}

TEST(ThreadPool, ManySmallCallsBackToBack) {
  // The hot pattern: thousands of tiny loops in a row; a lost wake-up would hang here.
  ThreadPool pool(2);
  int64_t total = 0;
  for (int it = 0; it < 20000; ++it) {
    std::atomic<int64_t> sum{0};
    pool.parallel_for(8, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    total += sum;
  }
  EXPECT_EQ(total, 20000 * 28);
}

TEST(ThreadPool, CallsAfterWorkersFellAsleep) {
  ThreadPool pool(3);
  for (int it = 0; it < 3; ++it) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // past the spin phase
    check_cover(pool, 999, 1);
  }
}

TEST(ThreadPool, NestedCallsRunInline) {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> hits(64 * 64);
  pool.parallel_for(64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      pool.parallel_for(64, [&](int64_t b2, int64_t e2) {
        for (int64_t j = b2; j < e2; ++j) hits[i * 64 + j]++;
      });
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(ThreadPool, ExceptionsReachTheCaller) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(100, [&](int64_t b, int64_t e) {
    if (b <= 50 && 50 < e) throw std::runtime_error("boom");
  }), std::runtime_error);
  check_cover(pool, 100, 1);  // still usable
}

TEST(ThreadPool, ConcurrentCallersAreSafe) {
  ThreadPool pool(2);
  auto work = [&] {
    for (int it = 0; it < 500; ++it) check_cover(pool, 257, 1);
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
}
