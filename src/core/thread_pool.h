#pragma once
// A persistent pool of worker threads for data-parallel loops. parallel_for is called
// about ten times per layer per decode step, so a call must cost microseconds: workers
// spin briefly before sleeping, work is handed out in chunks through one atomic word,
// and the calling thread works too.
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace batchmax {

// A non-owning reference to a callable void(int64_t begin, int64_t end): no allocation.
class RangeFn {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RangeFn>>>
  RangeFn(F&& f)  // NOLINT: implicit on purpose, like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, int64_t b, int64_t e) { (*static_cast<std::remove_reference_t<F>*>(o))(b, e); }) {}
  void operator()(int64_t b, int64_t e) const { call_(obj_, b, e); }

 private:
  void* obj_;
  void (*call_)(void*, int64_t, int64_t);
};

class ThreadPool {
 public:
  // n_threads counts the caller; 0 means all hardware threads. 1 runs everything inline.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(begin, end) over [0, n) split in chunks of at least `grain` items (the last
  // may be shorter); returns when all are done. Rethrows the first exception a chunk
  // threw. Calls from inside a chunk, or while another thread's loop runs, are safe:
  // nested ones run inline.
  void parallel_for(int64_t n, RangeFn fn, int64_t grain = 1);

 private:
  void worker_loop();
  void run_chunks();  // claims and runs chunks of the current job until none is left

  // ticket_ = job id (24 bits) | chunk count (20 bits) | next chunk (20 bits). Claiming a
  // chunk is one CAS that also checks the job is current and not exhausted, so a worker
  // that wakes late can never run a chunk of a finished job.
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int64_t> done_{0};      // chunks finished in the current job
  std::atomic<uint32_t> wake_{0};     // bumped for each job; sleepers wait on it
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  // The current job; written before the ticket is published, stable until all its chunks
  // are done.
  RangeFn* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 0;
  std::mutex error_mutex_;
  std::exception_ptr error_;

  std::mutex submit_mutex_;  // one loop at a time
  std::vector<std::thread> workers_;
};

}  // namespace batchmax
