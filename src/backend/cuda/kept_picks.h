#pragma once
// The CUDA backend's two pick sets (Backend::sample_rows_kept, steps in flight): a step's
// picked tokens stay on the GPU for the next step's embedding, and a copy goes to pinned
// host memory behind them, so the host reads them later without stalling the stream.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace batchmax::cuda {

class KeptPicks {
 public:
  KeptPicks();
  ~KeptPicks();
  KeptPicks(const KeptPicks&) = delete;
  KeptPicks& operator=(const KeptPicks&) = delete;

  // Device room for picks [0, n) of `set`. Growing waits for the device first (a step in
  // flight may still read the old buffer) and keeps the picks made so far.
  int32_t* device(int set, int64_t n, cudaStream_t s);
  // Queues the copy of picks [first, first + n) of `set` to the host behind the work on s.
  void copy_back(int set, int64_t first, int64_t n, cudaStream_t s);
  // Waits for the set's copies, then out[0, n) = its picks.
  void fetch(int set, int64_t n, int32_t* out);
  // d_ids[r] = picks[d_index[r]] of `set` where d_index[r] >= 0 (device arrays of n).
  void resolve(int set, int32_t* d_ids, const int32_t* d_index, int64_t n, cudaStream_t s);

 private:
  struct Set {
    int32_t* dev = nullptr;
    int32_t* host = nullptr;  // pinned
    int64_t cap = 0;
    int64_t made = 0;         // picks written (copied back or queued to be)
    cudaEvent_t copied = nullptr;
  };
  Set& at(int set);
  Set sets_[2];
};

}  // namespace batchmax::cuda
