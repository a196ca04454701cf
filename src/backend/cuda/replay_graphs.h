#pragma once
// Backend::run_replayable on CUDA: a CUDA graph per key. The first run of a key goes op
// by op (it also makes the GEMM plans, whose tuning needs the stream); the second is
// captured into a graph, instantiated and launched; later ones launch the graph. At
// most `max_graphs` instantiated graphs are kept, the least recently used go first.
//
// `tag` is the backend's own state a record depends on (it was the address of the rope
// table while the rope ran inside the layer's graph; the backend now passes 0): a record
// made under another tag is captured again.
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>

#include "backend/backend.h"

namespace batchmax::cuda {

// Thrown by an op that cannot be recorded (it would read host data): the capture is
// dropped and the run goes op by op, now and for this key from then on.
struct NotReplayable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ReplayGraphs {
 public:
  // An instantiated graph of a layer's dense ops holds ~75-130 KB of device memory
  // (H100: 140 MB for 1888 graphs, 33.5 MB for 256): kMaxGraphs bounds what the memory
  // plan keeps for them (kReserveBytes).
  static constexpr size_t kMaxGraphs = 256;
  static constexpr int64_t kReserveBytes = int64_t(40) << 20;
  explicit ReplayGraphs(bool enabled, size_t max_graphs = kMaxGraphs)
      : enabled_(enabled), max_graphs_(max_graphs) {}
  ~ReplayGraphs();
  ReplayGraphs(const ReplayGraphs&) = delete;
  ReplayGraphs& operator=(const ReplayGraphs&) = delete;

  void run(const ReplayKey& key, uintptr_t tag, const std::function<void()>& ops, cudaStream_t s);
  void drop(const void* owner);
  bool capturing() const { return capturing_; }
  bool enabled() const { return enabled_; }
  const ReplayCounts& counts() const { return counts_; }

 private:
  struct Entry {
    cudaGraphExec_t exec = nullptr;
    uintptr_t tag = 0;
    bool seen = false;      // ran once op by op
    bool refused = false;   // NotReplayable or a failed capture: always op by op
    uint64_t last_use = 0;
  };
  void eager(const std::function<void()>& ops);
  void make_room();

  bool enabled_;
  size_t max_graphs_;
  size_t n_graphs_ = 0;
  uint64_t clock_ = 0;
  bool capturing_ = false;
  std::map<ReplayKey, Entry> entries_;
  ReplayCounts counts_;
};

}  // namespace batchmax::cuda
