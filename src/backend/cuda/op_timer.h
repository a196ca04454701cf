#pragma once
// BATCHMAX_PROFILE=ops for the CUDA backend: CUDA events around every op, read back at the
// next synchronisation (profiles only: no host waits of their own).
#include <cuda_runtime.h>

#include <string>
#include <unordered_set>
#include <vector>

#include "backend/cuda/cuda_common.cuh"
#include "backend/step_profile.h"

namespace batchmax::cuda {

// BATCHMAX_PROFILE=ops: each op is bracketed by two events on the stream (no host
// wait); the pairs are read back when the stream is next synchronised anyway.
class OpTimer {
 public:
  ~OpTimer() {
    for (auto& p : pending_) free_.insert(free_.end(), {p.a, p.b});
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
  }
  struct Mark {
    OpTimer* t = nullptr;
    size_t i = 0;
    cudaStream_t s = nullptr;
    ~Mark() {
      if (t) cudaEventRecord(t->pending_[i].b, s);
    }
  };
  // Starts timing `name` (a string that lives as long as the process).
  void begin(Mark& m, const char* name, cudaStream_t s) {
    if (!prof::ops_enabled()) return;
    Pending p{event(), event(), name, prof::step_kind()};
    BMX_CUDA(cudaEventRecord(p.a, s));
    pending_.push_back(p);
    m = Mark{this, pending_.size() - 1, s};
  }
  // After a stream synchronisation: every pending pair has completed.
  void drain() {
    for (Pending& p : pending_) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, p.a, p.b) == cudaSuccess)
        prof::add_op(p.kind, p.name, ms * 1e-3);
      free_.insert(free_.end(), {p.a, p.b});
    }
    pending_.clear();
  }
  // "matmul 4096x14336": interned so the profile can keep the pointer.
  static const char* intern(const std::string& s) {
    static std::unordered_set<std::string> names;
    return names.insert(s).first->c_str();
  }

 private:
  struct Pending {
    cudaEvent_t a, b;
    const char* name;
    prof::StepKind kind;
  };
  cudaEvent_t event() {
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e;
    BMX_CUDA(cudaEventCreate(&e));
    return e;
  }
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> free_;
};

#define BMX_OP_TIME(name) \
  OpTimer::Mark op_mark_; \
  op_timer_.begin(op_mark_, name, stream_)

}  // namespace batchmax::cuda
