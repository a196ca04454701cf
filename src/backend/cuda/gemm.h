#pragma once
// out[n, m] = x[n, k] . w[m, k]^T through cuBLASLt: bf16 operands, fp32 accumulation,
// bf16 or f32 output. Plans (descriptors + the heuristic's algorithm) are cached per
// shape, strides, output type and pointer alignment.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <tuple>

#include "backend/backend.h"

namespace batchmax::cuda {

class Gemm {
 public:
  Gemm(size_t workspace_bytes);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void run(const Tensor& x, const Tensor& w, Tensor& out, cudaStream_t s);
  size_t n_plans() const { return plans_.size(); }

 private:
  // m, n, k, ldx, ldw, ldo, out type, alignment of x, w, out
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int>;
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  Plan& plan(const Key& key);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace batchmax::cuda
