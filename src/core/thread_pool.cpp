#include "core/thread_pool.h"

#include <algorithm>

namespace batchmax {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// ~100 us of spinning (pause is ~40-140 cycles): long enough to bridge the gap between
// the ops of one layer, short enough not to burn a shared core between steps.
constexpr int kSpinIters = 2000;

constexpr uint64_t kField = (uint64_t{1} << 20) - 1;
constexpr int64_t kMaxChunks = static_cast<int64_t>(kField);

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(n_threads - 1);
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  wake_.fetch_add(1);
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop() {
  // The value at construction, not a fresh load: a job (or the destructor) may have
  // bumped it before this thread got to run.
  uint32_t seen = 0;
  for (;;) {
    int spins = 0;
    while (wake_.load(std::memory_order_acquire) == seen) {
      if (++spins < kSpinIters) {
        cpu_relax();
      } else {
        sleepers_.fetch_add(1);
        wake_.wait(seen);  // returns at once if a job was published after our check
        sleepers_.fetch_sub(1);
      }
    }
    if (stop_.load()) return;
    seen = wake_.load(std::memory_order_acquire);
    run_chunks();
  }
}

void ThreadPool::run_chunks() {
  for (;;) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    const uint64_t count = (t >> 20) & kField, next = t & kField;
    if (next >= count) return;
    if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
    // The job cannot finish before this chunk does, so its fields are stable here.
    const int64_t b = static_cast<int64_t>(next) * chunk_;
    const int64_t e = std::min(n_, b + chunk_);
    try {
      (*fn_)(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
    }
    done_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::parallel_for(int64_t n, RangeFn fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  // About four chunks per thread so a descheduled thread (the cores are shared) does
  // not hold everyone up, never smaller than the grain.
  int64_t chunk = std::max(grain, (n + 4 * size() - 1) / (4 * size()));
  chunk = std::max(chunk, (n + kMaxChunks - 1) / kMaxChunks);
  const int64_t count = (n + chunk - 1) / chunk;
  if (workers_.empty() || count == 1) {
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> lock(submit_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) {  // nested call, or another thread's loop is running
    fn(0, n);
    return;
  }

  fn_ = &fn;
  n_ = n;
  chunk_ = chunk;
  error_ = nullptr;
  done_.store(0, std::memory_order_relaxed);
  // A new job id makes the ticket differ from any earlier one with the same counts.
  const uint64_t job = ((ticket_.load(std::memory_order_relaxed) >> 40) + 1) & 0xFFFFFF;
  ticket_.store((job << 40) | (static_cast<uint64_t>(count) << 20));
  wake_.fetch_add(1);
  if (sleepers_.load() > 0) wake_.notify_all();

  run_chunks();
  int spins = 0;
  while (done_.load(std::memory_order_acquire) < count) {
    if (++spins < kSpinIters) cpu_relax();
    else std::this_thread::yield();
  }
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace batchmax
