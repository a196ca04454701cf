#pragma once
// out[n, m] = x[n, k] . w[m, k]^T through cuBLASLt: bf16 operands, fp32 accumulation,
// bf16 or f32 output. Plans (descriptors + an algorithm) are cached per shape, strides,
// output type and pointer alignment; the algorithm is the heuristic's first pick.
//
// BATCHMAX_CUDA_SMALL_GEMM_ROWS=n (an experiment, off by default): products of <= n rows
// go to SmallMGemm (small_m_gemm.h). Measured slower than cuBLASLt on an H100 (see there).
//
// BATCHMAX_CUDA_GEMM_TUNE=1 (an experiment, off by default): products of few rows (decode)
// time the heuristic's best 16 candidates once on the real operands, each run after an L2
// flush, and keep the fastest. The small products (QKV 61%, output projection 54% of copy
// bandwidth at batch 48) looked like they would gain. Measured on an H100 (W-limited,
// batchmax 512, n=256): output tok/s fell 4% and decode bandwidth from 69% to 63% of copy,
// so the pick that is fastest alone is not the fastest inside a step.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <tuple>

#include "backend/backend.h"
#include "backend/cuda/small_m_gemm.h"

namespace batchmax::cuda {

class Gemm {
 public:
  // small_m_max_rows < 0: BATCHMAX_CUDA_SMALL_GEMM_ROWS, else none; 0: none.
  Gemm(size_t workspace_bytes, int small_m_max_rows = -1);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // out = x . w^T; accumulate: out += x . w^T (cuBLASLt's beta = 1, out read in place).
  void run(const Tensor& x, const Tensor& w, Tensor& out, cudaStream_t s, bool accumulate = false);
  size_t n_plans() const { return plans_.size(); }
  // A device buffer of >= 2x the L2 size that tuning may read to flush L2 (the KV
  // pool); null: no tuning (timings would be L2-resident).
  void set_l2_flush(const void* p, size_t bytes) {
    flush_ = p;
    flush_bytes_ = bytes;
  }
  // Products of at most this many rows are tuned.
  static constexpr int64_t kTuneMaxRows = 256;

 private:
  // m, n, k, ldx, ldw, ldo, out type, alignment of x, w, out, accumulate (beta = 1)
  using Key =
      std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, bool>;
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // x, w, out: the call's operands (tuning runs on them; out is overwritten).
  Plan& plan(const Key& key, const Tensor& x, const Tensor& w, Tensor& out, cudaStream_t s);
  void tune(Plan& p, const cublasLtMatmulHeuristicResult_t* cands, int n, const Tensor& x,
            const Tensor& w, Tensor& out, cudaStream_t s);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
  std::unique_ptr<SmallMGemm> small_;
  bool tune_;
  const void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  float* flush_sink_ = nullptr;
  cudaEvent_t t0_ = nullptr, t1_ = nullptr;
};

}  // namespace batchmax::cuda
